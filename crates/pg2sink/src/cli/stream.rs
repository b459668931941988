//! `pg2sink stream`: set up the publication and slot, then stream to the
//! sink until told to stop, reconnecting after transient failures.

use std::io::Write;
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::args::StreamArgs;
use crate::error::{Error, ExitStatus, Problem};
use crate::import::{self, watermark::Watermarks, worker::ImportOptions};
use crate::migrations;
use crate::model::Lsn;
use crate::pg::replication::ReplicationStream;
use crate::pg::settings::ConnectionConfig;
use crate::retry::Backoff;
use crate::sink::FlushPolicy;
use crate::source::catalog::{self, slot_name_for};
use crate::source::ha::{self, set_role, Role};
use crate::source::pgoutput::{self, PgTimestamp};
use crate::source::replication::{
    auto_silence, parse_pg_duration, start_replication_sql, Progress, Session, DEFAULT_SILENCE,
};
use crate::source::subscription::SubscriptionManager;
use crate::source::types::TypeRegistry;
use crate::source::walframe::{self, WalFrame};

/// Batches queued between the source and the sink: enough to keep both
/// busy, few enough to bound memory (at most this many times
/// `BATCH_EVENTS` events, as many as before batches).
const SINK_QUEUE: usize = 16;

pub async fn run(args: StreamArgs) -> Result<(), Error> {
    let mut connection = ConnectionConfig::from_env(args.source.url())
        .map_err(|e| Problem::new(e.to_string()).exit_status(crate::error::ExitStatus::Usage))?;
    connection.silence_timeout = Some(args.silence_timeout).filter(|d| !d.is_zero());
    let client = connection.connect().await?;
    let server = catalog::check_server(&client).await?;
    tracing::info!(server = %connection.describe(), version = server.version_num, "connected");
    let slot_name = slot_name_for(&args.source.subscription_name, &server.database);

    let (signal_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: finishing, flushing and confirming before exit");
        let _ = signal_tx.send(true);
    });

    // Serving before waiting as a standby, so the API and the metrics say
    // which instance is which.
    crate::ops::start(&args, &connection, &slot_name, shutdown.clone()).await?;

    let ha = args.ha && !args.decode_only;
    drop(client);
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let leadership = if ha {
            // The standby holds no other connection while it waits.
            let Some(leadership) = ha::acquire(&connection, &slot_name, shutdown.clone()).await?
            else {
                return Ok(());
            };
            leadership
        } else {
            // Nothing to lose: a channel whose sender is gone never turns true.
            let (_, lost) = watch::channel(false);
            ha::Leadership::without_lock(lost)
        };
        set_role(Role::Active);
        tracing::info!(slot = %slot_name, ha, "active: this process streams");
        // This term as the active process ends at a signal, or when the
        // lock's connection is lost (a standby may then take over).
        let (term_tx, term) = watch::channel(false);
        let (mut lost, mut signalled) = (leadership.lost.clone(), shutdown.clone());
        let watcher = tokio::spawn(async move {
            let lost = async {
                if lost.wait_for(|l| *l).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = lost => {}
                _ = signalled.wait_for(|s| *s) => {}
            }
            let _ = term_tx.send(true);
        });
        let result = run_active(&args, &connection, &server, &slot_name, ha, term).await;
        watcher.abort();
        let lost = *leadership.lost.borrow();
        drop(leadership);
        if *shutdown.borrow() {
            return result;
        }
        // A network blip should not end the process: after losing the lock
        // (the term stopped cleanly, everything durable confirmed) or a
        // transient failure while setting up (e.g. a connection cut during
        // the first queries), contend for the lock again, as a standby.
        match &result {
            _ if lost => {
                tracing::warn!("{}; waiting to become active again", ha::lost_problem());
            }
            Err(e) if e.is_transient() => {
                let delay = retry.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "the active term failed; starting over");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wait_true(shutdown.clone()) => return Ok(()),
                }
            }
            _ => return result,
        }
        set_role(Role::Standby);
    }
}

/// Everything the active process does: set-up, imports and streaming.
async fn run_active(
    args: &StreamArgs,
    connection: &ConnectionConfig,
    server: &catalog::ServerInfo,
    slot_name: &str,
    ha: bool,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut client = connection.connect().await?;
    migrations::run(&mut client, &args.source.schema).await?;
    catalog::ensure_publication(
        &client,
        &args.source.subscription_name,
        args.manager_enabled,
    )
    .await?;

    let mut manager = crate::ops::subscription_options(args).map(SubscriptionManager::new);
    if let Some(manager) = manager.as_mut() {
        manager.sync(&client).await?;
    }
    // What the publication publishes is honoured exactly; what cannot be
    // is refused here, before anything is sent.
    crate::source::publication::check(&client, &args.source.subscription_name, &args.source.schema)
        .await?;
    if ha {
        ha::wait_slot_released(&client, slot_name, &shutdown).await?;
        // Holding the lock proves no other pg2sink of this publication runs:
        // the jobs the previous active had claimed are free to take now,
        // not when their leases run out.
        let released =
            crate::import::jobs::Jobs::new(&args.source.schema, &args.source.subscription_name)
                .release_all(&client)
                .await?;
        if released > 0 {
            tracing::info!(
                jobs = released,
                "took over the imports the previous active was running"
            );
        }
    }
    // A slot pg2sink streamed from that is gone was dropped by someone:
    // creating a new one would skip what was committed meanwhile.
    if catalog::slot_recorded(
        &client,
        &args.source.schema,
        &args.source.subscription_name,
        slot_name,
    )
    .await?
    {
        if let Some(problem) = catalog::slot_problem(&client, slot_name).await {
            return Err(problem.into());
        }
    }
    let slot =
        catalog::ensure_slot(&client, connection, slot_name, server, args.slot_failover).await?;
    catalog::record_subscription(
        &client,
        &args.source.schema,
        &args.source.subscription_name,
        slot_name,
    )
    .await?;
    tracing::info!(slot = %slot.name, created = slot.created, failover = slot.failover, confirmed = %slot.confirmed_flush, "streaming from slot");

    if !args.decode_only {
        crate::source::heartbeat::spawn(
            connection,
            &slot.name,
            args.heartbeat_interval,
            shutdown.clone(),
        );
    }

    let manager_task = manager.map(|manager| {
        tokio::spawn(manage_subscription(
            manager,
            client,
            connection.clone(),
            args.manager_poll_interval,
            shutdown.clone(),
        ))
    });

    let result = if args.decode_only {
        decode_only(
            connection,
            &slot.name,
            &args.source.subscription_name,
            slot.confirmed_flush,
            args.replication_timeout.fixed(),
            shutdown,
        )
        .await
    } else {
        let mut start = slot.confirmed_flush;
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            match stream_to_sink(connection, args, &slot.name, start, ha, shutdown.clone()).await {
                // A full disk or an I/O error: nothing past the confirmed
                // position was confirmed, so starting the stream (and the
                // sink) over from it, as a restart would, loses nothing and
                // holds no changes in memory meanwhile.
                Err(Error::Sink(e)) if e.is_transient() && !*shutdown.borrow() => {
                    if slot_confirmed(connection, &slot.name)
                        .await
                        .is_ok_and(|c| c > start)
                    {
                        backoff.reset(); // the sink worked for a while
                    }
                    let delay = backoff.next_delay();
                    crate::ops::metrics::error(crate::ops::metrics::kind::SINK);
                    tracing::warn!(error = %e, retry_in = ?delay, "the sink failed; starting over from the confirmed position");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = wait_true(shutdown.clone()) => break Ok(()),
                    }
                    if let Ok(confirmed) = slot_confirmed(connection, &slot.name).await {
                        start = start.max(confirmed);
                    }
                }
                other => break other,
            }
        }
    };
    if let Some(task) = manager_task {
        task.abort();
    }
    result
}

async fn stream_to_sink(
    connection: &ConnectionConfig,
    args: &StreamArgs,
    slot: &str,
    start: Lsn,
    ha: bool,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let (events, events_rx) = mpsc::channel(SINK_QUEUE);
    let (durable_tx, durable) = watch::channel(start);
    let policy = FlushPolicy {
        max_unflushed_bytes: args.sink_batch_bytes,
        max_delay: args.sink_flush_interval,
        ..FlushPolicy::default()
    };
    let sink_task = super::sinks::spawn(args, events_rx, durable_tx, policy).await?;

    // Shared across reconnects and with imports: each type is read from the
    // catalog once.
    let types = TypeRegistry::new(connection.clone());
    let watermarks = Arc::new(Watermarks::default());
    let import_options = ImportOptions {
        schema: args.source.schema.clone(),
        publication: args.source.subscription_name.clone(),
        batch_limit: args.import_batch_limit as usize,
        batch_bytes: args.import_batch_bytes as usize,
        workers: args.import_workers,
        readers: args.import_readers as usize,
        render_json: matches!(args.sink, super::args::SinkKind::File),
        chunk_timeout: args.import_chunk_timeout,
    };
    let workers: Vec<_> = (0..args.import_workers)
        .map(|n| {
            tokio::spawn(import::worker::run(
                n,
                connection.clone(),
                import_options.clone(),
                watermarks.clone(),
                types.clone(),
                durable.clone(),
                shutdown.clone(),
            ))
        })
        .collect();

    // The replication loop runs on a thread of its own, so CPU-heavy work
    // elsewhere (rendering a huge imported row, serialising a huge change
    // for the sink) never keeps it from answering the server in time: a
    // walsender that hears nothing for wal_sender_timeout hangs up.
    let replication = {
        let connection = connection.clone();
        let slot = slot.to_string();
        let publication = args.source.subscription_name.clone();
        let status_interval = args.status_interval;
        let replication_timeout = args.replication_timeout.fixed();
        let durable = durable.clone();
        let watermarks = watermarks.clone();
        let types = types.clone();
        let shutdown = shutdown.clone();
        on_own_thread(async move {
            let mut progress = Progress::starting_at(start);
            let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
            let result = loop {
                let streamed_from = (progress.forwarded, progress.confirmed);
                let attempt = async {
                    // Connecting and starting is bounded too: a server that
                    // accepts the socket and then says nothing must not
                    // hold the stream up for ever.
                    let bound = replication_timeout.unwrap_or(DEFAULT_SILENCE);
                    let (stream, silence) = tokio::time::timeout(bound, async {
                        let mut conn = connection.connect_replication().await?;
                        if let Ok(rows) = conn.simple_query(ha::BACKEND_IDENTITY_SQL).await {
                            if let (Some(pid), Some(started)) = (
                                rows.first()
                                    .and_then(|r| r.get_index(0))
                                    .and_then(|p| p.parse().ok()),
                                rows.first().and_then(|r| r.get_index(1)),
                            ) {
                                ha::remember_own_backend(pid, started.to_owned());
                            }
                        }
                        let silence = match replication_timeout {
                            Some(limit) => limit,
                            None => auto_silence(server_wal_sender_timeout(&mut conn).await),
                        };
                        let sql = start_replication_sql(&slot, &publication, progress.confirmed);
                        let stream = conn.start_replication(&sql).await.map_err(Error::from)?;
                        Ok::<_, Error>((stream, silence))
                    })
                    .await
                    .map_err(|_| crate::source::replication::silent(bound))??;
                    Session::new(
                        stream,
                        &events,
                        durable.clone(),
                        &mut progress,
                        status_interval,
                    )
                    .with_imports(watermarks.clone())
                    .with_types(types.clone())
                    .with_silence_timeout(silence)
                    .run(shutdown.clone(), Duration::from_secs(60))
                    .await
                };
                match attempt.await {
                    Ok(()) => break Ok(()),
                    // The sink stopped: its own error says why.
                    Err(e) if events.is_closed() => break Err(e),
                    // This process's own walsender, left behind by a
                    // connection that went silent: end it and go on.
                    Err(e)
                        if e.sqlstate() == Some("55006")
                            && end_own_walsender(&connection, &slot).await =>
                    {
                        tracing::info!(error = %e, "the slot was held by this process's previous walsender; retrying");
                    }
                    Err(e) if e.sqlstate() == Some("55006") && ha => {
                        // This process holds the HA lock, so the slot's user is the
                        // previous active's walsender, about to exit (or a foreign
                        // consumer, which the warning names).
                        if *shutdown.borrow() {
                            break Ok(());
                        }
                        let delay = backoff.next_delay().min(Duration::from_secs(2));
                        tracing::warn!(error = %e, retry_in = ?delay, "the slot is still in use; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = wait_true(shutdown.clone()) => break Ok(()),
                        }
                    }
                    Err(e)
                        if e.sqlstate() == Some("55006")
                            && progress.forwarded == start
                            && progress.confirmed == start =>
                    {
                        // Still in use by another consumer: the slot check passed at
                        // start, so this is another process that started meanwhile.
                        break Err(catalog::slot_active(&slot, None).into());
                    }
                    Err(e) if e.is_transient() => {
                        if *shutdown.borrow() {
                            break Ok(());
                        }
                        // A session that got somewhere was a recovery: the
                        // next interruption starts the back-off from the
                        // beginning rather than where an old outage left it.
                        if (progress.forwarded, progress.confirmed) != streamed_from {
                            backoff.reset();
                        }
                        let delay = backoff.next_delay();
                        crate::ops::metrics::error(crate::ops::metrics::kind::REPLICATION);
                        tracing::warn!(error = %e, retry_in = ?delay, "replication interrupted; reconnecting");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = wait_true(shutdown.clone()) => break Ok(()),
                        }
                    }
                    Err(e) => {
                        // Dropped or invalidated while streaming: say so and
                        // how to recover, rather than the server's bare error.
                        let problem = match connection.connect().await {
                            Ok(client) => catalog::slot_problem(&client, &slot).await,
                            Err(_) => None,
                        };
                        break Err(problem.map_or(e, Error::from));
                    }
                }
            };
            result
        })
    };
    let result = replication.await;
    for worker in workers {
        // Workers notice the shutdown between statements and give their
        // jobs back; one stuck in a statement is abandoned (its lease ends).
        let abort = worker.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    match sink_task.await {
        Ok(Ok(())) => result,
        // The sink's own failure explains the source's.
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(Problem::new(format!("the sink task failed: {e}"))
            .exit_status(ExitStatus::Transient)
            .into()),
    }
}

/// Ends this process's own stale walsender on `slot`, if there is one.
async fn end_own_walsender(connection: &ConnectionConfig, slot: &str) -> bool {
    match connection.connect().await {
        Ok(client) => ha::end_own_stale_walsender(&client, slot).await,
        Err(_) => false,
    }
}

/// The server's `wal_sender_timeout`, or `None` if it cannot be read.
async fn server_wal_sender_timeout(
    conn: &mut crate::pg::replication::ReplicationConnection,
) -> Option<Duration> {
    let rows = conn.simple_query("SHOW wal_sender_timeout").await.ok()?;
    parse_pg_duration(rows.first()?.get_index(0)?)
}

/// Runs `future` on a new thread with a current-thread runtime of its own.
async fn on_own_thread<F>(future: F) -> Result<(), Error>
where
    F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pg2sink-replication".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(future),
                Err(e) => Err(Problem::new(format!(
                    "cannot start the replication thread's runtime: {e}"
                ))
                .exit_status(ExitStatus::Transient)
                .into()),
            };
            let _ = tx.send(result);
        })
        .map_err(|e| {
            Problem::new(format!("cannot start the replication thread: {e}"))
                .exit_status(ExitStatus::Transient)
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(
            Problem::new("the replication thread ended without a result")
                .exit_status(ExitStatus::Transient)
                .into(),
        )
    })
}

/// Prints every decoded message, one per line; confirms nothing.
async fn decode_only(
    connection: &ConnectionConfig,
    slot: &str,
    publication: &str,
    start: Lsn,
    silence: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut conn = connection.connect_replication().await?;
    let silence = match silence {
        Some(limit) => limit,
        None => auto_silence(server_wal_sender_timeout(&mut conn).await),
    };
    let mut stream: ReplicationStream = conn
        .start_replication(&start_replication_sql(slot, publication, start))
        .await?;
    let mut status = tokio::time::interval((silence / 3).min(Duration::from_secs(10)));
    let mut received = start;
    let mut heard = tokio::time::Instant::now();
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = status.tick() => {
                // As the streaming session: a quiet server is asked to
                // answer, and one silent for the whole bound is dead.
                if heard.elapsed() >= silence {
                    return Err(crate::source::replication::silent(silence));
                }
                let ask = heard.elapsed() >= silence / 3;
                // Keeps the connection alive; flush stays at the start.
                let s = walframe::encode_standby_status(received, start, start, PgTimestamp::now(), ask);
                tokio::time::timeout(silence, stream.send_payload(&s))
                    .await
                    .map_err(|_| crate::source::replication::silent(silence))??;
            }
            payload = stream.next_payload() => {
                heard = tokio::time::Instant::now();
                let Some(payload) = payload? else { return Err(Error::StreamEnded) };
                match walframe::decode_frame(payload)? {
                    WalFrame::Keepalive { wal_end, reply_requested, .. } => {
                        received = received.max(wal_end);
                        if reply_requested {
                            let s = walframe::encode_standby_status(received, start, start, PgTimestamp::now(), false);
                            stream.send_payload(&s).await?;
                        }
                    }
                    WalFrame::XLogData { wal_start, data, .. } => {
                        received = received.max(wal_start);
                        let line = match pgoutput::decode(data) {
                            Ok(message) => message.to_string(),
                            Err(e) => format!("UNDECODABLE {e}"),
                        };
                        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                            break; // stdout closed (e.g. piped to head)
                        }
                    }
                }
            }
        }
    }
    stream.finish(Duration::from_secs(5)).await?;
    Ok(())
}

async fn manage_subscription(
    mut manager: SubscriptionManager,
    mut client: tokio_postgres::Client,
    connection: ConnectionConfig,
    poll_interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wait_true(shutdown.clone()) => return,
        }
        if client.is_closed() {
            match connection.connect().await {
                Ok(c) => client = c,
                Err(e) => {
                    tracing::warn!(error = %e, "subscription manager cannot reconnect; retrying at the next poll");
                    continue;
                }
            }
        }
        if let Err(e) = manager.sync(&client).await {
            crate::ops::metrics::error(crate::ops::metrics::kind::SUBSCRIPTION_MANAGER);
            tracing::warn!(error = %e, "subscription manager pass failed; retrying at the next poll");
        }
    }
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The slot's confirmed position (where a new stream resumes).
async fn slot_confirmed(connection: &ConnectionConfig, slot: &str) -> Result<Lsn, Error> {
    let client = connection.connect().await?;
    let state = crate::ops::slot::SlotState::read(&client, slot).await?;
    Ok(state
        .confirmed_lsn
        .and_then(|lsn| lsn.parse().ok())
        .unwrap_or_default())
}
