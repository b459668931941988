.PHONY: demo test test-matrix bench build clean-test dev recreatedb dev-down fuzz

# Boots a throwaway Postgres, streams changes to files, prints them.
demo:
	scripts/demo.sh

# The whole test suite (installs and starts what it needs): everything on
# Postgres 15, the version-dependent suites on 14, 16, 17 and 18.
test:
	scripts/test.sh

# The whole test suite on every supported Postgres (14-18).
test-matrix:
	scripts/test.sh --all-versions

# Benchmarks side by side with pg_recvlogical, wal2json and COPY; writes
# docs/benchmarks.md. `make bench ARGS=--quick` runs a tenth of each workload.
bench:
	scripts/bench.sh $(ARGS)

build:
	cargo build --release

# Fuzzes every parser of outside bytes for FUZZ_SECONDS (default 300) per
# target: libFuzzer when it builds here, else the stable driver
# (scripts/fuzz.sh). `make test` runs the stable driver for 3s per target.
fuzz:
	scripts/fuzz.sh

# Stops the Postgres servers the test harness left running.
clean-test:
	scripts/stop-test-postgres.sh

# The development environment without Docker (see scripts/dev.sh).
dev:
	scripts/dev.sh up

recreatedb:
	scripts/dev.sh recreatedb

dev-down:
	scripts/dev.sh down
