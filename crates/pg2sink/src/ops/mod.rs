//! Operating pg2sink while it runs: Prometheus metrics, a JSON API and a
//! small web page, all on one HTTP server (`--metrics-address`), plus the
//! poller that reads the slot's lag and the imports' progress into them.
//!
//! Promises: bound to localhost unless told otherwise; the calls that
//! change anything (add, stop, resync) require `--api.token` when one is
//! set, and are refused when they come from another site (see `guard`) or,
//! without a token, on a non-loopback address; nothing served holds a
//! secret (no connection string, no token).

pub mod guard;
pub mod metrics;
pub mod overrides;
pub mod server;
pub mod slot;
pub mod tables;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};

use crate::cli::args::StreamArgs;
use crate::error::{Error, Problem};
use crate::pg::settings::ConnectionConfig;
use crate::source::subscription::SubscriptionOptions;
use slot::SlotState;
use tables::Scope;

/// How often the slot and the import jobs are read.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What the HTTP handlers and the poller share.
pub struct Ops {
    pub scope: Scope,
    pub slot_name: String,
    /// Whether instances coordinate through the HA lock (`--ha`).
    pub ha: bool,
    connection: ConnectionConfig,
    /// The API's bearer token, when the changing calls are guarded.
    token: Option<crate::secret::Secret>,
    client: Mutex<Option<tokio_postgres::Client>>,
    snapshot: RwLock<Snapshot>,
    /// What a request must show before it is served.
    pub policy: guard::Policy,
}

/// The poller's latest reading.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub slot: Option<SlotState>,
    pub changes_per_second: f64,
    pub read_at: Option<Instant>,
}

/// The subscription manager's options, as `stream` builds them.
pub fn subscription_options(args: &StreamArgs) -> Option<SubscriptionOptions> {
    args.manager_enabled.then(|| SubscriptionOptions {
        publication: args.source.subscription_name.clone(),
        schemas: args.manager_schemas.clone(),
        include: args.manager_include.clone(),
        exclude: args.manager_exclude.clone(),
        internal_schema: args.source.schema.clone(),
        replica_identity_full: args.manager_replica_identity_full,
    })
}

/// Starts the HTTP server and the poller, unless `--metrics-address=off`.
/// Fails if the address cannot be bound.
pub async fn start(
    args: &StreamArgs,
    connection: &ConnectionConfig,
    slot_name: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let address = args.metrics_address.trim();
    if address.eq_ignore_ascii_case("off") || address.is_empty() {
        tracing::info!("metrics, API and web page are off (--metrics-address=off)");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| {
            Problem::new(format!(
                "cannot serve metrics and the API on {address}: {e}"
            ))
            .hint("choose another address with --metrics-address (host:port; port 0 picks a free one), or turn the server off with --metrics-address=off")
        })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Problem::new(format!("reading the bound address: {e}")))?;
    let token = args.api_token.clone().filter(|t| !t.is_empty());
    let policy = guard::Policy::new(bound, token.is_some(), &args.api_allowed_hosts)?;
    let ops = Arc::new(Ops {
        scope: Scope {
            schema: args.source.schema.clone(),
            publication: args.source.subscription_name.clone(),
            manager: subscription_options(args),
        },
        slot_name: slot_name.to_string(),
        ha: args.ha && !args.decode_only,
        connection: connection.clone(),
        token,
        client: Mutex::new(None),
        snapshot: RwLock::new(Snapshot::default()),
        policy,
    });
    tracing::info!(address = %bound, guarded = ops.token.is_some(), read_only = ops.policy.read_only, "http server listening (/metrics, /api/, web page at /)");
    if ops.policy.read_only {
        // Open changing calls on an address other machines reach would let
        // anyone on the network stop capturing; the metrics stay served.
        tracing::warn!(address = %bound, "the API is read-only: bound to a non-loopback address without --api.token, it refuses add, stop and resync (403); set --api.token (PG2SINK_API_TOKEN) to allow them, or bind a loopback address");
    }
    tokio::spawn(server::serve(listener, ops.clone(), shutdown.clone()));
    tokio::spawn(poll(ops, shutdown));
    Ok(())
}

impl Ops {
    /// A client for the API's queries, reconnecting when the last broke.
    async fn client(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, tokio_postgres::Client>, Error> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connection.connect().await?);
        }
        Ok(tokio::sync::MutexGuard::map(guard, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `header` (an `Authorization` value) carries the token, if
    /// one is required.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let token = token.expose();
        let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        // Compares every byte, so timing does not tell how much matched.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Reads the slot and the import jobs into the metrics and the snapshot.
async fn poll(ops: Arc<Ops>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), metrics::changes_emitted_total());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
            }
        }
        if let Err(e) = poll_once(&ops, &mut last).await {
            metrics::error(metrics::kind::POLLER);
            tracing::debug!(error = %e, "reading the slot and imports failed; retrying");
            *ops.client.lock().await = None;
        }
    }
}

async fn poll_once(ops: &Ops, last: &mut (Instant, u64)) -> Result<(), Error> {
    let client = ops.client().await?;
    let slot = SlotState::read(&client, &ops.slot_name).await?;
    metrics::slot(
        slot.lag_bytes.unwrap_or(0),
        slot.retained_wal_bytes.unwrap_or(0),
        slot.active,
    );
    let jobs = crate::import::jobs::Jobs::new(&ops.scope.schema, &ops.scope.publication)
        .status(&client)
        .await?;
    drop(client);
    for job in &jobs {
        metrics::import_progress(
            &job.table,
            job.rows_processed,
            job.rows_estimated,
            job.completed_at.is_some(),
        );
    }
    let now = (Instant::now(), metrics::changes_emitted_total());
    let elapsed = now.0.duration_since(last.0).as_secs_f64();
    let rate = if elapsed > 0.0 {
        (now.1 - last.1) as f64 / elapsed
    } else {
        0.0
    };
    *last = now;
    *ops.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Snapshot {
        slot: Some(slot),
        changes_per_second: rate,
        read_at: Some(now.0),
    };
    Ok(())
}
