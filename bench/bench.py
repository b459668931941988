#!/usr/bin/env python3
"""pg2sink benchmarks, side by side with the server's own limit.

For each streaming workload, three logical slots are created at the same
WAL position before the workload runs; then each consumer reads the same
WAL range from its own slot, one after the other:
  - pg2sink, file sink, fsync on (as in production);
  - pg_recvlogical + pgoutput to /dev/null (the walsender's limit);
  - pg_recvlogical + wal2json (format 2) to a file (what users reach for).
Imports compare pg2sink's import of a table with COPY ... TO STDOUT into
/dev/null. Latency runs pgbench at a fixed rate and measures commit time
to the moment a line is in the file (written and fsynced by pg2sink).

Beside wall time, every streaming run measures the CPU time of the
walsender serving its slot (the server's own cost of decoding the same
WAL) next to pg2sink's: the ratio of the two is what a machine's speed
cancels out of, so it can be compared from one machine to another.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PORT = 55610

# Every workload's table: an import drops all but its own, so that only it
# is in the publication.
ALL_TABLES = ["a", "b1", "b2", "b3", "c", "big", "f", "lat", "wide_g", "wide_h", "wide_i"]

# The realistic wide table of (g)-(i): 20 columns of the types applications
# use, with NULLs, quotes to escape, arrays and JSON documents.
WIDE_COLUMNS = ("id bigint primary key, account int, seq bigint, amount numeric, price numeric(12,2), "
                "created_at timestamptz, updated_at timestamptz, day date, active bool, verified bool, "
                "name text, note text, code varchar(16), email varchar(255), tags text[], roles text[], "
                "uid uuid, attrs jsonb, meta jsonb, blob bytea")


def wide_rows(first, last):
    """A SELECT of the wide table's rows `first`..`last` (g is the id)."""
    return ("select g, (g % 100000)::int, g::bigint * 7919, round((g % 100000) / 7.0, 4), (g % 10000) / 100.0, "
            "timestamptz '2026-01-01 00:00+00' + g * interval '1 second', clock_timestamp(), "
            "date '2020-01-01' + (g % 3650)::int, g % 2 = 0, g % 3 = 0, "
            "'customer ' || md5(g::text), "
            "case when g % 5 = 0 then null else 'order ' || g || ' left at the \"front door\", ring twice' end, "
            "upper(substr(md5(g::text), 1, 8)), 'user' || g || '@example.com', "
            "array['tag' || g % 10, 'tag' || g % 7, 'tag' || g % 3], "
            "array['reader', case when g % 4 = 0 then 'admin' else 'writer' end], "
            "md5(g::text)::uuid, "
            "jsonb_build_object('sku', 'SKU-' || g % 1000, 'qty', g % 13, 'price', (g % 10000) / 100.0, "
            "'gift', g % 9 = 0, 'note', case when g % 2 = 0 then null else 'fragile' end), "
            "jsonb_build_object('source', 'web', 'tags', jsonb_build_array('a', g % 3), 'v', 1), "
            f"decode(md5(g::text), 'hex') from generate_series({first}, {last}) g")


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout.strip()


class Postgres:
    def __init__(self, bin_dir, work):
        self.bin_dir, self.work = bin_dir, work
        self.data = os.path.join(work, "data")
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.url = f"postgres://postgres@127.0.0.1:{PORT}/bench?sslmode=disable"

    def start(self):
        if os.geteuid() == 0:
            shutil.chown(self.work, "postgres")
        subprocess.run(self.as_pg + [f"{self.bin_dir}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)
        # Load generation settings: the benchmark measures decoding and
        # delivery, not the server's commit path. synchronous_commit=off
        # speeds up loading (the WAL writer still flushes it). fsync stays
        # on: with fsync=off the server's WAL and pages pile up unflushed in
        # the page cache, and the kernel's writeback of them stalled
        # pg2sink's own fsyncs (the latency tail of (e)), which a production
        # server does not do. pg2sink's fsync of its output is always on.
        opts = (f"-p {PORT} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.work} "
                "-c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 "
                "-c synchronous_commit=off -c full_page_writes=off "
                "-c max_wal_size=20GB -c checkpoint_timeout=1h -c shared_buffers=1GB "
                "-c logical_decoding_work_mem=256MB -c wal_sender_timeout=60s")
        self.settings = " ".join(o for o in opts.split() if o != "-c" and not o.isdigit() and not o.startswith(("-p", "listen_addresses",
                                                                                      "unix_socket")))
        subprocess.run(self.as_pg + [f"{self.bin_dir}/pg_ctl", "-D", self.data, "-l", f"{self.work}/pg.log",
                                     "-w", "-o", opts, "start"], check=True, capture_output=True)
        self.psql("create database bench", db="postgres")
        self.version = self.psql("show server_version")

    def stop(self):
        subprocess.run(self.as_pg + [f"{self.bin_dir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
                       capture_output=True)

    def psql(self, sql, db="bench"):
        # The version's own psql: Debian's /usr/bin/psql is a Perl wrapper.
        return sh(f"{self.bin_dir}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                  f"postgres://postgres@127.0.0.1:{PORT}/{db}?sslmode=disable", "-c", sql)


class Poller:
    """One psql session kept open for the polling done while a tool runs.

    Starting a psql for every poll (every 20 ms) took about a quarter of
    this 2-core machine's CPU during the import: the benchmark competed
    with what it measured. A query on an open session costs next to
    nothing."""

    def __init__(self, pg):
        self.p = subprocess.Popen([f"{pg.bin_dir}/psql", "-X", "-q", "-At", pg.url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def query(self, sql):
        """The query's output; empty if it failed."""
        self.p.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo __end__\n")
        self.p.stdin.flush()
        lines = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise SystemExit("the polling psql session ended")
            if line.rstrip("\n") == "__end__":
                return "\n".join(lines)
            lines.append(line.rstrip("\n"))

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def proc_stats(pid):
    """Peak RSS (MiB) and CPU seconds of a running process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return rss, cpu


def cpu_seconds(pid):
    """user + system CPU seconds of a process (fields 14 and 15 of
    /proc/<pid>/stat); OSError once it is gone."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WalsenderWatch:
    """The CPU time of the walsender serving a slot, sampled from /proc.

    The slot's `active_pid` is the walsender once a tool has started
    streaming from it. The walsender exits when its client disconnects
    (pg_recvlogical at its end position), so a thread reads its CPU every
    few milliseconds and the last reading counts; `stop` reads it once
    more, which is exact for a client still connected (pg2sink)."""

    def __init__(self, pg, slot):
        self.pid, self.cpu = None, 0.0
        self.stopping = threading.Event()
        self.poll = Poller(pg)
        self.slot = slot
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            if self.pid is None:
                pid = self.poll.query(f"select active_pid from pg_replication_slots where slot_name = '{self.slot}'")
                if pid.strip():
                    self.pid = int(pid)
                else:
                    time.sleep(0.002)
                    continue
            try:
                self.cpu = cpu_seconds(self.pid)
            except OSError:
                return
            # Reading /proc costs microseconds: a fine grain bounds what a
            # walsender can spend after the last reading.
            time.sleep(0.005)

    def stop(self):
        """The walsender's CPU seconds (None if it was never seen)."""
        self.stopping.set()
        self.thread.join()
        if self.pid is not None:
            try:
                self.cpu = cpu_seconds(self.pid)
            except OSError:
                pass
        self.poll.close()
        return self.cpu if self.pid is not None else None


def cpu_model():
    """The CPU's `model name` from /proc/cpuinfo and the cores this
    process can use: what every figure depends on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model, os.cpu_count()


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="pg2sink-bench.")
        os.chmod(self.work, 0o755)
        self.pg = Postgres(args.bin_dir, self.work)
        self.results = []
        self.loads = []

    def names(self):
        """pg2sink's subscription names, one per repetition: each has its
        own publication, slot (`<name>_bench`) and import jobs; with
        `--allocs`, one more for the counting build's run (last)."""
        return [f"pg2sink{r or ''}" for r in range(self.args.repeat)] + (["pg2sinkallocs"] if self.args.allocs else [])

    def slots(self, prefix):
        """The comparison slots, one per tool and repetition, created before
        the workload writes anything (pg2sink's are made by its set-up)."""
        for r in range(self.args.repeat):
            for plugin in ("pgoutput", "wal2json"):
                self.pg.psql(f"select pg_create_logical_replication_slot('{prefix}_{plugin}{r}', '{plugin}')")

    def drop_slots(self, prefix):
        for r in range(self.args.repeat):
            for plugin in ("pgoutput", "wal2json"):
                self.pg.psql(f"select pg_drop_replication_slot('{prefix}_{plugin}{r}')")

    def advance_pg2sink_slots(self):
        # Twice, around a checkpoint: a logical slot's restart point moves
        # only past a running-transactions record decoded before a later
        # confirmation, and without it the next pg2sink would decode (and
        # skip) all the WAL in between again.
        names = ", ".join(f"'{n}_bench'" for n in self.names())
        for _ in range(2):
            self.pg.psql("select count(pg_replication_slot_advance(slot_name, pg_current_wal_lsn())) "
                         f"from pg_replication_slots where slot_name in ({names})")
            self.pg.psql("checkpoint")

    def pg2sink_setup(self):
        """Each pg2sink's schema, publication (with the workload's tables)
        and slot, before the workload."""
        out = os.path.join(self.work, "setup.jsonl")
        for name in self.names():
            p = subprocess.Popen([self.args.pg2sink, "--url", self.pg.url, "--subscription-name", name,
                                  "--sink.file.modifications-path", out, "--sink.file.schemas-path", out,
                                  "--import-worker-count=0"],
                                 stderr=subprocess.DEVNULL)
            deadline = time.time() + 30
            while time.time() < deadline:
                if self.pg.psql(f"select count(*) from pg_replication_slots where slot_name = '{name}_bench' "
                                "and active") == "1":
                    break
                time.sleep(0.1)
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)

    def run_pg2sink(self, name, end, extra=(), until=None, watch=False):
        """Runs a pg2sink until its slot confirms `end` (or `until` holds);
        wall seconds, peak RSS, CPU seconds, its output file and, with
        `watch`, its walsender's CPU seconds (else None)."""
        out = os.path.join(self.work, "modifications.jsonl")
        if os.path.exists(out):
            os.remove(out)
        start = time.time()
        # PG2SINK_BENCH_WRAP: a command prefix for profiling, e.g.
        # "perf record -g -o /tmp/perf.data --".
        wrap = os.environ.get("PG2SINK_BENCH_WRAP", "").split()
        p = subprocess.Popen([*wrap, self.args.pg2sink, "--url", self.pg.url, "--subscription-name", name,
                              "--sink.file.modifications-path", out,
                              "--sink.file.schemas-path", os.path.join(self.work, "schemas.jsonl"),
                              "--status-interval=1s", *extra],
                             stderr=open(os.path.join(self.work, "pg2sink.log"), "a"))
        rss = cpu = 0.0
        walsender = WalsenderWatch(self.pg, f"{name}_bench") if watch else None
        poll = Poller(self.pg)
        while True:
            done = until(poll) if until else lsn(poll.query(
                f"select confirmed_flush_lsn from pg_replication_slots where slot_name = '{name}_bench'")) >= end
            try:
                rss, cpu = proc_stats(p.pid)
            except OSError:
                pass
            if done:
                break
            if p.poll() is not None:
                raise SystemExit(f"pg2sink exited early; see {self.work}/pg2sink.log")
            time.sleep(0.02)
        wall = time.time() - start
        # Read while the walsender still serves pg2sink: exact.
        walsender_cpu = walsender.stop() if walsender else None
        poll.close()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        return wall, rss, cpu, out, walsender_cpu

    def recvlogical(self, slot, plugin_opts, end, out):
        """pg_recvlogical from `slot` to `end`: wall seconds and the CPU
        seconds of the walsender that served it."""
        walsender = WalsenderWatch(self.pg, slot)
        start = time.time()
        subprocess.run([f"{self.args.bin_dir}/pg_recvlogical", "-d", self.pg.url, "--slot", slot, "--start", "-E", end,
                        "--no-loop", "-f", out, *plugin_opts], check=True, capture_output=True)
        wall = time.time() - start
        return wall, walsender.stop()

    def streaming(self, name, rows, setup_sql, workload_sql, wal2json=True, repeat=None):
        # Start with the page cache's dirty data on disk: the previous
        # workload's output being written back would slow this one's fsyncs.
        os.sync()
        prefix = name.split()[0].strip("()").lower()
        self.pg.psql(setup_sql)
        self.pg2sink_setup()
        # Same WAL range for all: pg2sink's slots (left behind by an earlier
        # workload, or by the set-up's own writes when its short run stopped
        # early) start where the comparison slots are created.
        self.advance_pg2sink_slots()
        self.slots(prefix)
        # With --allocs, the counting build streams the workload live (it
        # must be idle before the rows come to give the baseline count).
        counting = self.start_counting() if self.args.allocs else None
        t0 = time.time()
        for sql in workload_sql:
            self.pg.psql(sql)
        gen = time.time() - t0
        # The insert position: with synchronous_commit=off the write
        # position can still be short of the last commit record.
        end = self.pg.psql("select pg_current_wal_insert_lsn()")
        allocs = self.finish_counting(counting, lsn(end)) if counting else None
        # Each tool reads the range `repeat` times, from its own slots, in
        # turns (pg2sink, pgoutput, wal2json, pg2sink, ...); the faster of
        # its runs counts. A noisy neighbour on this VM slows whichever tool
        # runs at that moment by up to a third; the best run of each is what
        # the machine can do.
        runs = {"pg2sink": [], "pgoutput": [], "wal2json": []}
        # CPU seconds per run: pg2sink's own, and of the walsender serving
        # each tool.
        cpus = {"pg2sink": [], "pg2sink_walsender": [], "pgoutput_walsender": [], "wal2json_walsender": []}
        lines = rss = 0
        for r, pg2sink_name in enumerate(self.names()[:repeat or self.args.repeat]):
            self.load_sample()
            wall, rss_r, cpu_r, out, ws_cpu = self.run_pg2sink(pg2sink_name, lsn(end),
                                                               extra=["--import-worker-count=0",
                                                                      "--subscription-manager.poll-interval=1h"],
                                                               watch=True)
            runs["pg2sink"].append(wall)
            cpus["pg2sink"].append(cpu_r)
            cpus["pg2sink_walsender"].append(ws_cpu)
            lines = sum(1 for _ in open(out))
            rss = max(rss, rss_r)
            wall, ws_cpu = self.recvlogical(
                f"{prefix}_pgoutput{r}", ["-o", "proto_version=1", "-o", "publication_names=pg2sink"], end,
                "/dev/null")
            runs["pgoutput"].append(wall)
            cpus["pgoutput_walsender"].append(ws_cpu)
            if wal2json:
                w2j_out = os.path.join(self.work, "wal2json.json")
                wall, ws_cpu = self.recvlogical(f"{prefix}_wal2json{r}", ["-o", "format-version=2"], end, w2j_out)
                runs["wal2json"].append(wall)
                cpus["wal2json_walsender"].append(ws_cpu)
                os.remove(w2j_out)
        self.drop_slots(prefix)
        # The CPU figures are those of pg2sink's fastest run, and the ratio
        # pairs them with the walsender that served that very run: both were
        # measured at the same moment, under the same neighbours.
        best = runs["pg2sink"].index(min(runs["pg2sink"]))
        self.results.append({
            "workload": name, "rows": lines, "lines": lines, "generate_s": gen,
            "pg2sink_s": min(runs["pg2sink"]), "pgoutput_devnull_s": min(runs["pgoutput"]),
            "wal2json_s": min(runs["wal2json"]) if runs["wal2json"] else None,
            "pg2sink_rss_mib": rss, "pg2sink_cpu_s": cpus["pg2sink"][best],
            "walsender_cpu_s": cpus["pg2sink_walsender"][best],
            "pgoutput_walsender_cpu_s": min_known(cpus["pgoutput_walsender"]),
            "wal2json_walsender_cpu_s": min_known(cpus["wal2json_walsender"]),
            "cpu_ratios": [ratio(c, w) for c, w in zip(cpus["pg2sink"], cpus["pg2sink_walsender"])],
            "runs_s": runs, "cpus_s": cpus,
            **({"allocations": allocs[0], "allocs_rows": allocs[1], "allocs_per_row": allocs[0] / max(allocs[1], 1)}
               if allocs else {}),
        })
        self.report_line(self.results[-1])

    def import_(self, label, table, create_sql, rows):
        """pg2sink's import of `table` (made by `create_sql`, `rows` rows)
        against COPY of it."""
        # Start with the page cache's dirty data on disk: the previous
        # workload's output being written back would slow this one's fsyncs.
        os.sync()
        # Only this table is imported: every other workload's table leaves
        # the publication.
        others = ", ".join(t for t in ALL_TABLES if t != table)
        self.pg.psql(f"drop table if exists {others}")
        self.pg.psql(create_sql)
        self.pg.psql(f"vacuum analyze {table}")
        # The import alone: the slots left by earlier workloads skip the WAL
        # of generating the table (decoding a backlog is what (a)-(c)
        # measure), so the watermarks are reached at once.
        self.advance_pg2sink_slots()
        # In turns, `repeat` times each (see `streaming`): COPY, then a
        # pg2sink of its own subscription (its own import job).
        runs = {"pg2sink": [], "copy": []}
        imported = rss = cpu = 0
        for name in self.names()[:self.args.repeat]:
            self.load_sample()
            t0 = time.time()
            subprocess.run([f"{self.args.bin_dir}/psql", "-X", "-q", self.pg.url, "-c", f"copy {table} to stdout"],
                           check=True, stdout=subprocess.DEVNULL)
            runs["copy"].append(time.time() - t0)

            def done(poll, name=name):
                if poll.query("select to_regclass('pg2sink.import_jobs') is null") == "t":
                    return False  # pg2sink has not set up its schema yet
                return poll.query(f"select count(*) from pg2sink.import_jobs where table_name = '{table}' "
                                  f"and publication = '{name}' and completed_at is not null") == "1"
            wall, rss_r, cpu_r, out, _ = self.run_pg2sink(name, 0,
                                                          extra=["--subscription-manager.poll-interval=1s",
                                                                 "--import-worker-count=1",
                                                                 f"--import-worker.batch-limit={self.args.batch}"],
                                                          until=done)
            runs["pg2sink"].append(wall)
            rss, cpu = max(rss, rss_r), cpu_r if wall == min(runs["pg2sink"]) else cpu
            imported = sum(1 for line in open(out) if '"op":"import"' in line)
            # Its slot goes on; the next pg2sink's must not decode this one's
            # import first.
            self.advance_pg2sink_slots()
        # The import's own time, from its log line, without process start-up.
        for line in open(os.path.join(self.work, "pg2sink.log")):
            if "import complete" in line and f"public.{table}" in line:
                print("  " + line.strip(), file=sys.stderr)
        self.results.append({"workload": label, "rows": rows, "lines": imported,
                             "pg2sink_s": min(runs["pg2sink"]), "copy_s": min(runs["copy"]), "pg2sink_rss_mib": rss,
                             "pg2sink_cpu_s": cpu, "runs_s": runs})
        self.report_line(self.results[-1])

    def start_counting(self):
        """Starts the `alloc-count` build on its own slot (set up and
        advanced with the others) and waits until it streams and has been
        idle a second: its allocation count then is the baseline."""
        out = os.path.join(self.work, "allocs.jsonl")
        p = subprocess.Popen([self.args.pg2sink_allocs, "--url", self.pg.url, "--subscription-name", "pg2sinkallocs",
                              "--sink.file.modifications-path", out,
                              "--sink.file.schemas-path", os.path.join(self.work, "schemas.jsonl"),
                              "--status-interval=1s", "--import-worker-count=0",
                              "--subscription-manager.poll-interval=1h"],
                             stderr=open(os.path.join(self.work, "pg2sink.log"), "a"))
        deadline = time.time() + 60
        while time.time() < deadline:
            if p.poll() is not None:
                raise SystemExit(f"the alloc-count pg2sink exited early; see {self.work}/pg2sink.log")
            try:
                if "pg2sink_streaming 1" in scrape():
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the alloc-count pg2sink did not start streaming within 60 s")
        time.sleep(1)
        return p, out, allocations(scrape())

    def finish_counting(self, counting, end):
        """Waits until the counting build's slot confirms `end`; the
        allocations it made since the baseline and the lines it wrote."""
        p, out, idle = counting
        poll = Poller(self.pg)
        deadline = time.time() + 600
        while lsn(poll.query("select confirmed_flush_lsn from pg_replication_slots "
                             "where slot_name = 'pg2sinkallocs_bench'")) < end:
            if p.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the alloc-count pg2sink did not reach the end; see {self.work}/pg2sink.log")
            time.sleep(0.05)
        poll.close()
        total = allocations(scrape())
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        lines = sum(1 for _ in open(out))
        os.remove(out)
        print(f"  alloc-count: {total - idle:,} allocations for {lines:,} lines "
              f"({(total - idle) / max(lines, 1):.2f} per row; {idle:,} at idle before)", file=sys.stderr)
        return total - idle, lines

    def latency(self, rate, seconds):
        # Start with the page cache's dirty data on disk: the previous
        # workload's output being written back would slow this one's fsyncs.
        os.sync()
        self.load_sample()
        self.pg.psql("create table if not exists lat (id bigserial primary key, at timestamptz default clock_timestamp())")
        # A file per rate: the tailer reads its file from the start.
        out = os.path.join(self.work, f"latency-{rate}.jsonl")
        # PG2SINK_BENCH_WRAP: a command prefix for profiling, e.g.
        # "perf record -g -o /tmp/perf.data --".
        wrap = os.environ.get("PG2SINK_BENCH_WRAP", "").split()
        p = subprocess.Popen([*wrap, self.args.pg2sink, "--url", self.pg.url, "--sink.file.modifications-path", out,
                              "--sink.file.schemas-path", os.path.join(self.work, "schemas.jsonl"),
                              "--subscription-manager.poll-interval=200ms", "--import-worker-count=0"],
                             stderr=open(os.path.join(self.work, "pg2sink.log"), "a"))
        time.sleep(2)
        delays, commits = [], []
        stop = threading.Event()

        def tail():
            while not os.path.exists(out):
                time.sleep(0.01)
            with open(out) as f:
                buf = ""
                while not stop.is_set():
                    chunk = f.read()
                    now = time.time()
                    if not chunk:
                        time.sleep(0.001)
                        continue
                    buf += chunk
                    *lines, buf = buf.split("\n")
                    for line in lines:
                        m = json.loads(line)
                        if m.get("name") == "lat" and m.get("op") == "insert":
                            ts = m["timestamp"]
                            from datetime import datetime
                            committed = datetime.fromisoformat(ts).timestamp()
                            delays.append((now - committed) * 1000)
                            commits.append(committed)
        t = threading.Thread(target=tail)
        t.start()
        script = os.path.join(self.work, "lat.sql")
        with open(script, "w") as f:
            f.write("insert into lat default values;\n")
        # Latency is measured with durable commits, as in production: with
        # synchronous_commit=off the walsender would wait for the WAL writer.
        # Enough clients that each commits at most ~500 times a second
        # (every commit waits for its WAL flush).
        clients = max(4, rate // 500)
        subprocess.run([f"{self.args.bin_dir}/pgbench", "-n", "-f", script, "-R", str(rate), "-T", str(seconds),
                        "-c", str(clients), "-j", "2", self.pg.url], check=True, capture_output=True,
                       env={**os.environ, "PGOPTIONS": "-c synchronous_commit=on"})
        time.sleep(2)
        stop.set()
        t.join()
        rss, cpu = proc_stats(p.pid)
        # The sink's flushes (write + fsync) that took over 50 ms, from
        # pg2sink's own histogram: whether a slow line waited on the disk.
        try:
            import urllib.request
            metrics = urllib.request.urlopen("http://127.0.0.1:9525/metrics", timeout=5).read().decode()
            buckets = [l for l in metrics.splitlines() if l.startswith("pg2sink_sink_flush_seconds_")]
            print("  sink flushes: " + "; ".join(l.split("{", 1)[-1] for l in buckets), file=sys.stderr)
        except OSError as e:
            print(f"  no metrics: {e}", file=sys.stderr)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        # Where the slowest lines were committed, in seconds from the first
        # commit: a burst at the start would be catching up, not steady state.
        slowest = sorted(zip(delays, commits), reverse=True)[:5]
        first = min(commits) if commits else 0
        print("  slowest lines (ms, s after the first commit): " +
              ", ".join(f"{d:.0f} @ {c - first:.1f}" for d, c in slowest), file=sys.stderr)
        delays.sort()
        q = lambda f: delays[min(len(delays) - 1, int(f * len(delays)))] if delays else float("nan")
        self.results.append({"workload": f"(e) latency at {rate} tx/s for {seconds}s", "rows": len(delays),
                             "rate": rate, "achieved_tx_s": len(delays) / seconds,
                             "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": delays[-1] if delays else float("nan"),
                             "pg2sink_rss_mib": rss, "pg2sink_cpu_s": cpu})
        self.report_line(self.results[-1])

    def report_line(self, r):
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)

    def load_sample(self):
        """Notes the 1-minute load average before a run: how busy the
        machine was with other work, printed with the figures."""
        self.loads.append(os.getloadavg()[0])

    def targets(self):
        """The issue's targets, one row each: (what, workload, measured,
        target, met)."""
        rows = []
        streaming = [r for r in self.results if "pgoutput_devnull_s" in r]
        for r in streaming:
            c = ratio(r["pg2sink_cpu_s"], r["walsender_cpu_s"])
            rows.append(("pg2sink CPU ÷ its walsender's CPU", r["workload"],
                         "–" if c is None else f"{c:.2f} ({r['pg2sink_cpu_s']:.2f} s ÷ {r['walsender_cpu_s']:.2f} s)",
                         "≤ 0.30", None if c is None else c <= 0.30))
        for r in streaming:
            w = r["pg2sink_s"] / r["pgoutput_devnull_s"]
            rows.append(("wall time ÷ pg_recvlogical's", r["workload"],
                         f"{w:.2f} ({r['pg2sink_s']:.2f} s ÷ {r['pgoutput_devnull_s']:.2f} s)", "≤ 1.05", w <= 1.05))
        for r in self.results:
            if "copy_s" in r:
                i = r["copy_s"] / r["pg2sink_s"]
                rows.append(("import rows/s ÷ COPY's", r["workload"],
                             f"{i:.2f} ({r['copy_s']:.2f} s ÷ {r['pg2sink_s']:.2f} s)", "≥ 0.60", i >= 0.60))
        for r in self.results:
            if "p99_ms" in r:
                achieved = f", {r['achieved_tx_s']:,.0f} tx/s reached"
                if r.get("rate") == 2000:
                    rows.append(("latency p99", r["workload"], f"{r['p99_ms']:.1f} ms{achieved}", "< 10 ms",
                                 r["p99_ms"] < 10))
                else:
                    rows.append(("latency p99", r["workload"], f"{r['p99_ms']:.1f} ms{achieved}",
                                 "(reported, no target)", None))
        for r in self.results:
            if "allocs_per_row" in r:
                a = r["allocs_per_row"]
                rows.append(("allocations per streamed row (alloc-count build)", r["workload"],
                             f"{a:.2f} ({r['allocations']:,} ÷ {r['allocs_rows']:,} rows)", "≤ 2", a <= 2))
        if self.results:
            top = max(self.results, key=lambda r: r["pg2sink_rss_mib"])
            mb = top["pg2sink_rss_mib"] * 1.048576
            rows.append(("peak RSS (largest of every workload)", top["workload"], f"{mb:.0f} MB", "< 100 MB",
                         mb < 100))
        return rows

    def markdown(self, command):
        model, cores = cpu_model()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        loads = f"{min(self.loads):.1f}–{max(self.loads):.1f}" if self.loads else "not sampled"
        busy = bool(self.loads) and max(self.loads) > 0.5 * cores
        lines = [
            "# Benchmarks", "",
            f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} on **one machine**: CPU `{model}`, "
            f"{cores} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, PostgreSQL "
            f"{self.pg.version}, pg2sink's global allocator: {ALLOCATORS[self.args.allocator]}. Every figure below comes from that one machine and that one run of the command; "
            "on another machine the seconds will differ. The ratios are what should carry over: wall-time "
            "ratios compare tools on the same WAL range in the same run, and the CPU ratio divides pg2sink's "
            "CPU time by that of the walsender serving it (the server's own cost of decoding the same WAL, "
            "measured from `/proc/<pid>/stat` of the slot's `active_pid`), which a faster or slower CPU "
            "changes for both alike."
            + (" This was a `--quick` run: a tenth of each workload, so start-up weighs more in every "
               "figure." if self.args.quick else ""), "",
            f"Load average (1 min) before each run: {loads} on {cores} cores."
            + (" **The machine was busy with other work during this run**: other processes competed for the "
               "CPUs, so the timings are noisy and the figures are indicative, not what the machine can do "
               "when quiet." if busy else "")
            + (f" {self.args.note}" if self.args.note else ""), "",
            f"Each tool reads each of (a)–(d) and (g)–(i) {times(self.args.repeat)}, in turns, from its own "
            "slots created at the same position (for imports: COPY, then an import by a pg2sink of its own "
            "subscription), and its fastest run is shown, with pg2sink's CPU and its walsender's from that "
            "same run; the last column lists every run. (e) and (f) run once.", "",
            f"The server is started by the benchmark with `{self.pg.settings}` (loading uses "
            "`synchronous_commit=off`; the latency workload commits with `synchronous_commit=on`; see the "
            "comment in `bench/bench.py`).", "",
            "## Targets", "",
            "The targets of issue 14, as ratios where they can be (so that they mean the same on any "
            "machine).", "",
            "| target | workload | measured | target | met |", "|---|---|---|---|---|",
        ]
        for what, workload, measured, target, met in self.targets():
            verdict = "–" if met is None else ("met" if met else "**not met**")
            lines.append(f"| {what} | {workload} | {measured} | {target} | {verdict} |")
        lines += [
            "", "## Streaming", "",
            "Wall time to consume the same WAL range from a slot each (created at the same position before the "
            "workload). pg2sink: file sink with fsync, until the slot's confirmed position reaches the end. "
            "Wall ratio = pg2sink / pg_recvlogical+pgoutput to /dev/null (the walsender's limit). CPU: "
            "pg2sink's user+system seconds, the walsender's serving it, their ratio, and the walsenders' "
            "serving pg_recvlogical (pgoutput; wal2json).", "",
            "| workload | rows | pg2sink s | pgoutput→/dev/null s | wal2json→file s | wall ratio vs limit | "
            "pg2sink vs wal2json | rows/s pg2sink | peak RSS MiB | pg2sink CPU s | its walsender CPU s | "
            "CPU ratio | walsender CPU s (pgoutput; wal2json) | runs s (pg2sink; pgoutput; wal2json); CPU ratio of each pg2sink run |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in self.results:
            if "pgoutput_devnull_s" in r:
                w2j = r['wal2json_s']
                w2j_s = "not run" if w2j is None else f"{w2j:.2f}"
                vs_w2j = "–" if w2j is None else f"{r['pg2sink_s'] / w2j:.2f}"
                c = ratio(r["pg2sink_cpu_s"], r["walsender_cpu_s"])
                lines.append(f"| {r['workload']} | {r['rows']:,} | {r['pg2sink_s']:.2f} | {r['pgoutput_devnull_s']:.2f} | "
                             f"{w2j_s} | {r['pg2sink_s'] / r['pgoutput_devnull_s']:.2f} | "
                             f"{vs_w2j} | {r['rows'] / r['pg2sink_s']:,.0f} | "
                             f"{r['pg2sink_rss_mib']:.0f} | {r['pg2sink_cpu_s']:.2f} | {fmt(r['walsender_cpu_s'])} | "
                             f"{fmt(c)} | {fmt(r['pgoutput_walsender_cpu_s'])}; "
                             f"{fmt(r['wal2json_walsender_cpu_s'])} | {runs_text(r)}; CPU ratios "
                             f"{', '.join(fmt(c) for c in r['cpu_ratios'])} |")
        if any("allocs_per_row" in r for r in self.results):
            lines += ["", "Allocations per streamed row (`--allocs`): a pg2sink built with `--features alloc-count` "
                      "streams the workload live from a slot of its own; its `pg2sink_allocations_total` (heap "
                      "allocations and reallocations) once it has reached the end, minus the count when it was idle "
                      "before the workload began, divided by the lines it wrote.", "",
                      "| workload | allocations | rows | per row |", "|---|---:|---:|---:|"]
            for r in self.results:
                if "allocs_per_row" in r:
                    lines.append(f"| {r['workload']} | {r['allocations']:,} | {r['allocs_rows']:,} | "
                                 f"{r['allocs_per_row']:.2f} |")
        lines += ["", "## Import", "",
                  "pg2sink's import (chunks of the batch limit, each between watermarks, fsynced) against "
                  "`COPY table TO STDOUT` into /dev/null through psql. Ratio = pg2sink's rows/s ÷ COPY's "
                  "(target ≥ 0.6).", "",
                  "| workload | rows | pg2sink s | COPY s | pg2sink rows/s | COPY rows/s | ratio (rows/s) | peak RSS MiB | CPU s | runs s (pg2sink; COPY) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in self.results:
            if "copy_s" in r:
                lines.append(f"| {r['workload']} | {r['rows']:,} | {r['pg2sink_s']:.2f} | {r['copy_s']:.2f} | "
                             f"{r['rows'] / r['pg2sink_s']:,.0f} | {r['rows'] / r['copy_s']:,.0f} | "
                             f"{r['copy_s'] / r['pg2sink_s']:.2f} | {r['pg2sink_rss_mib']:.0f} | {r['pg2sink_cpu_s']:.1f} | "
                             f"{runs_text(r)} |")
        lines += ["", "## Latency", "",
                  "pgbench commits one-row transactions at a fixed rate; a tailer notes when each line appears in "
                  "pg2sink's output file (written after the previous fsync; the file is fsynced before the slot "
                  "is confirmed) and subtracts the commit timestamp carried by the message. Target: p99 < 10 ms "
                  "at 2,000 tx/s. \"tx/s reached\" is the lines seen per second: below the rate asked, pgbench "
                  "could not commit that fast on this machine.", "",
                  "| workload | rows | tx/s reached | p50 ms | p99 ms | max ms | peak RSS MiB | CPU s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.results:
            if "p99_ms" in r:
                lines.append(f"| {r['workload']} | {r['rows']:,} | {r['achieved_tx_s']:,.0f} | {r['p50_ms']:.1f} | "
                             f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['pg2sink_rss_mib']:.0f} | "
                             f"{r['pg2sink_cpu_s']:.1f} |")
        return "\n".join(lines) + "\n"


ALLOCATORS = {"system": "the system's (glibc malloc)", "mimalloc": "mimalloc (`--features mimalloc`)"}


def scrape():
    """pg2sink's /metrics (its default listen address); OSError if down."""
    import urllib.request
    return urllib.request.urlopen("http://127.0.0.1:9525/metrics", timeout=5).read().decode()


def allocations(metrics):
    """`pg2sink_allocations_total` from a /metrics text."""
    for line in metrics.splitlines():
        if line.startswith("pg2sink_allocations_total "):
            return int(float(line.split()[1]))
    raise SystemExit("no pg2sink_allocations_total in /metrics: is the binary built with --features alloc-count?")


def ratio(a, b):
    """a ÷ b, or None when either is unknown or b is zero."""
    return a / b if a is not None and b else None


def min_known(values):
    known = [v for v in values if v is not None]
    return min(known) if known else None


def times(n):
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def fmt(v):
    return "–" if v is None else f"{v:.2f}"


def runs_text(r):
    """Every run's time, per tool: `6.50, 6.81; 6.77, 7.02; ...`."""
    return "; ".join(", ".join(f"{t:.2f}" for t in times) for times in r.get("runs_s", {}).values() if times)


ALL = "abcdefghi"


def given_args():
    """The arguments that shape the figures, as given to `make bench`:
    without the paths bench.sh adds, the output file and the note."""
    skip = ("--bin-dir", "--pg2sink", "--pg2sink-allocs", "--out", "--note")
    given, argv = [], iter(sys.argv[1:])
    for a in argv:
        if a in skip:
            next(argv, None)
        elif not a.startswith(tuple(f"{k}=" for k in skip)):
            given.append(a)
    return given


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--pg2sink", required=True)
    ap.add_argument("--quick", action="store_true", help="a tenth of each workload")
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--out", help="default: docs/benchmarks.md for a full run, else only printed")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each tool per workload (the best counts; (e) and (f) run once)")
    ap.add_argument("--only", default=ALL, help="the workloads to run, e.g. --only=d (default: all)")
    ap.add_argument("--note", default="", help="a sentence added to the report's header, e.g. about the machine")
    ap.add_argument("--allocs", action="store_true",
                    help="also count allocations per streamed row of (a)-(c), (f)-(h) with --pg2sink-allocs")
    ap.add_argument("--pg2sink-allocs", help="a pg2sink built with --features alloc-count (bench.sh builds it)")
    ap.add_argument("--allocator", choices=sorted(ALLOCATORS), default="system",
                    help="the global allocator --pg2sink was built with, for the report (bench.sh builds it)")
    args = ap.parse_args()
    if args.allocs and not args.pg2sink_allocs:
        ap.error("--allocs needs --pg2sink-allocs, a binary built with --features alloc-count (make bench builds it)")
    scale = 10 if args.quick else 1
    b = Bench(args)
    model, cores = cpu_model()
    print(json.dumps({"cpu_model": model, "cores": cores, "load_average_1m": os.getloadavg()[0]}), flush=True)
    b.pg.start()
    try:
        n = 1_000_000 // scale
        if "a" in args.only:
            b.streaming(f"(a) one transaction inserting {n:,} rows", n,
                        "create table a (id bigint primary key, k int, name text, at timestamptz, amount numeric)",
                        [f"insert into a select g, g % 1000, md5(g::text), now(), g / 3.0 from generate_series(1, {n}) g"])
        if "b" in args.only:
            txs = 200_000 // scale
            b.pg.psql("create table b1 (id int primary key, v int, t text); create table b2 (id int primary key, v int, t text);"
                      "create table b3 (id int primary key, v int, t text);")
            b.pg.psql("""create procedure mixed(n int) language plpgsql as $$
                declare i int; r int;
                begin
                  for i in 1..n loop
                    r := 1 + (i % 5);
                    insert into b1 select i * 10 + g, g, md5(i::text) from generate_series(1, r) g;
                    if i % 3 = 0 then update b2 set v = v + 1 where id = i - 1; end if;
                    insert into b2 values (i, i, 'x') ;
                    if i % 4 = 0 then delete from b3 where id = i - 4; end if;
                    insert into b3 values (i, i, 'y');
                    commit;
                  end loop;
                end $$""")
            b.streaming(f"(b) {txs:,} small mixed transactions over three tables", txs * 5, "select 1",
                        [f"call mixed({txs})"])
        if "c" in args.only:
            ups = 100_000 // scale
            b.streaming(f"(c) {ups:,} updates of rows with a 20 kB TOASTed value", ups,
                        "create table c (id int primary key, n int, big text); alter table c alter column big set storage external;"
                        "insert into c select g, 0, repeat(md5(g::text), 640) from generate_series(1, 1000) g",
                        [f"do $$ begin for i in 1..{ups} loop update c set n = n + 1 where id = (i % 1000) + 1; "
                         "if i % 100 = 0 then commit; end if; end loop; end $$"])
        if "d" in args.only:
            n = 5_000_000 // scale
            b.import_(f"(d) import of a {n:,}-row table", "big",
                      "create table big (id bigint primary key, a int, b text, c timestamptz, d numeric);"
                      "insert into big select g, g % 1000, md5(g::text), now(), g / 7.0 "
                      f"from generate_series(1, {n}) g", n)
        if "e" in args.only:
            b.latency(2000, 20 if not args.quick else 5)
            b.latency(10000, 10 if not args.quick else 5)
        if "f" in args.only:
            # Memory only: wal2json would hold the whole transaction.
            n = 5_000_000 // scale
            b.streaming(f"(f) one transaction inserting {n:,} rows (memory)", n,
                        "drop table if exists a, b1, b2, b3, c, big;"
                        "create table f (id bigint primary key, k int, name text, at timestamptz, amount numeric)",
                        [f"insert into f select g, g % 1000, md5(g::text), now(), g / 3.0 from generate_series(1, {n}) g"],
                        wal2json=False, repeat=1)
        n = 1_000_000 // scale
        if "g" in args.only:
            b.streaming(f"(g) one transaction inserting {n:,} rows of a 20-column table", n,
                        f"create table wide_g ({WIDE_COLUMNS})", [f"insert into wide_g {wide_rows(1, n)}"])
        if "h" in args.only:
            # The same rows as (g), five to a transaction: what changes is
            # only the shape of the transactions.
            txs = n // 5
            b.pg.psql(f"create table wide_h ({WIDE_COLUMNS})")
            b.pg.psql(f"""create procedure wide_small(n int) language plpgsql as $$
                declare i int;
                begin
                  for i in 0..n - 1 loop
                    insert into wide_h {wide_rows("i * 5 + 1", "i * 5 + 5")};
                    commit;
                  end loop;
                end $$""")
            b.streaming(f"(h) {txs:,} transactions of 5 rows of the 20-column table", n, "select 1",
                        [f"call wide_small({txs})"])
        if "i" in args.only:
            b.import_(f"(i) import of a {n:,}-row 20-column table", "wide_i",
                      f"create table wide_i ({WIDE_COLUMNS}); insert into wide_i {wide_rows(1, n)}", n)
    finally:
        b.pg.stop()
    command = "make bench" + (f' ARGS="{" ".join(given_args())}"' if given_args() else "")
    analysis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")
    out = args.out or ("docs/benchmarks.md" if set(ALL) <= set(args.only) else os.path.join(b.work, "benchmarks.md"))
    with open(out, "w") as f:
        f.write(b.markdown(command))
        if os.path.exists(analysis):
            f.write("\n" + open(analysis).read())
    print(f"wrote {out}", file=sys.stderr)
    if out.startswith(b.work):
        print(open(out).read())
    shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
