//! The HTTP server: `/metrics` (Prometheus), `/api/...` (JSON, see
//! docs/api.md) and the web page at `/` (embedded, no external assets).
//! Every request passes `guard` first; no response grants cross-origin
//! access (no `Access-Control-Allow-*`), and the page refuses to be framed.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use super::metrics;
use super::tables::ActionError;
use super::Ops;

const INDEX_HTML: &str = include_str!("web/index.html");

/// Serves until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ops: Arc<Ops>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics_text))
        .route("/api/health", get(health))
        .route("/api/ready", get(ready))
        .route("/api/status", get(status))
        .route("/api/tables", get(tables))
        .route("/api/imports", get(imports))
        .route("/api/tables/{schema}/{name}/{action}", post(action))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            ops.clone(),
            super::guard::guard,
        ))
        .with_state(ops);
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let app = app.into_make_service_with_connect_info::<super::guard::Local>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "the http server stopped");
    }
}

/// A JSON error body: `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Framed in another site's page, its buttons could be clicked
            // by a user tricked into it (clickjacking): no framing at all.
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// OpenMetrics when the scraper asks for it, else the classic format.
async fn metrics_text(headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            metrics::render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics::render_text(),
        )
            .into_response()
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such page or API call; see docs/api.md (GET /api/health, /api/ready, /api/status, /api/tables, /api/imports; POST /api/tables/{schema}/{table}/add|stop|resync)",
    )
}

/// Liveness: the process answers.
async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: the replication stream is connected.
async fn ready() -> Response {
    if metrics::is_streaming() {
        Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": "the replication stream is not connected" })),
        )
            .into_response()
    }
}

async fn status(State(ops): State<Arc<Ops>>) -> Response {
    let snapshot = ops.snapshot();
    Json(json!({
        "publication": ops.scope.publication,
        "slot": snapshot.slot,
        "slot_name": ops.slot_name,
        "role": crate::source::ha::role().as_str(),
        "ha": ops.ha,
        "streaming": metrics::is_streaming(),
        "confirmed_lsn": metrics::confirmed_lsn().to_string(),
        "changes_emitted": metrics::changes_emitted_total(),
        "changes_per_second": snapshot.changes_per_second,
        "seconds_since_last_commit": metrics::since_last_commit().map(|d| d.as_secs_f64()),
        "heartbeats": metrics::heartbeats(),
    }))
    .into_response()
}

fn failed(e: crate::error::Error) -> Response {
    let status = if e.is_transient() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error(status, e.to_string())
}

async fn tables(State(ops): State<Arc<Ops>>) -> Response {
    let client = match ops.client().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    match ops.scope.tables(&client).await {
        Ok(tables) => Json(tables).into_response(),
        Err(e) => failed(e),
    }
}

async fn imports(State(ops): State<Arc<Ops>>) -> Response {
    let client = match ops.client().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let jobs = crate::import::jobs::Jobs::new(&ops.scope.schema, &ops.scope.publication);
    match jobs.status(&client).await {
        Ok(jobs) => Json(
            jobs.into_iter()
                .map(super::tables::ImportInfo::new)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => failed(e),
    }
}

async fn action(
    State(ops): State<Arc<Ops>>,
    Path((schema, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !ops.authorized(auth) {
        return error(
            StatusCode::UNAUTHORIZED,
            "this call changes what pg2sink captures and needs the API token: send the header Authorization: Bearer <token> (the token set with --api.token)",
        );
    }
    if !matches!(action.as_str(), "add" | "stop" | "resync") {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?}: use add, stop or resync"),
        );
    }
    let client = match ops.client().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let result = match action.as_str() {
        "add" => ops.scope.add(&client, &schema, &name).await,
        "stop" => ops.scope.stop(&client, &schema, &name).await,
        _ => ops.scope.resync(&client, &schema, &name).await,
    };
    match result {
        Ok(done) => Json(done).into_response(),
        Err(ActionError::BadRequest(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(ActionError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(ActionError::Conflict(m)) => error(StatusCode::CONFLICT, m),
        Err(ActionError::Failed(e)) => failed(e),
    }
}
