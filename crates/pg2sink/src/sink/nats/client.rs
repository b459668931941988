//! The NATS side of the sink: connecting (URLs, credentials, TLS), the
//! start-up check (reachable, JetStream enabled, the stream present and
//! taking `<prefix>.>`), and what a failed publish means. Works with
//! nats-server 2.9 and later (docs/sinks.md says why 2.9); a hint names
//! only a cause its check established.
//!
//! Promises: connecting is tried once (start-up fails fast); afterwards the
//! client reconnects by itself and the sink re-sends what was not
//! acknowledged. A publish error is classified as [`Failure::Retry`]
//! (network, timeouts, no responders while JetStream restarts, a broken
//! order chain) or [`Failure::Stop`] (what retrying cannot fix: a message
//! over the server's size limit, JetStream disabled).

use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};

use super::config::{redact_url, NatsConfig};
use super::encoding;
use crate::sink::SinkError;

fn definite(context: impl Into<String>, source: impl Into<String>) -> SinkError {
    SinkError::definite(context, source.into())
}

/// A start-up failure a later start may not meet (the server down or slow).
fn transient(context: impl Into<String>, source: impl Into<String>) -> SinkError {
    SinkError::Transient {
        context: context.into(),
        source: source.into().into(),
    }
}

/// Checks the options that need no server.
pub fn check_config(config: &NatsConfig) -> Result<Vec<ServerAddr>, SinkError> {
    if let Err(why) = encoding::check_prefix(&config.subject_prefix) {
        return Err(definite(
            format!(
                "--sink.nats.subject-prefix {:?} is not usable",
                config.subject_prefix
            ),
            why,
        )
        .hint("use dot-separated tokens such as pg2sink or cdc.prod"));
    }
    if let Err(why) = encoding::check_stream_name(&config.stream) {
        return Err(definite(
            format!(
                "--sink.nats.stream {:?} is not a valid stream name",
                config.stream
            ),
            why,
        ));
    }
    if config.urls.is_empty() {
        return Err(definite("no NATS URL", "set --sink.nats.url"));
    }
    config
        .urls
        .iter()
        .map(|u| {
            u.trim().parse::<ServerAddr>().map_err(|e| {
                definite(
                    format!("--sink.nats.url {:?} is not a NATS URL", redact_url(u)),
                    format!("{e}\n  hint: nats://host:4222 or tls://host:4222"),
                )
            })
        })
        .collect()
}

/// Connects once (no retry: this runs at start-up).
pub async fn connect(
    config: &NatsConfig,
    servers: Vec<ServerAddr>,
) -> Result<async_nats::Client, SinkError> {
    let shown = config
        .urls
        .iter()
        .map(|u| redact_url(u))
        .collect::<Vec<_>>()
        .join(",");
    let mut options = ConnectOptions::new()
        .name("pg2sink")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(config.request_timeout))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connection (re)established"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting (unacknowledged messages will be sent again)")
                }
                other => tracing::warn!(event = %other, "NATS connection event"),
            }
        });
    if let Some(path) = &config.creds_file {
        options = options.credentials_file(path).await.map_err(|e| {
            definite(
                format!("reading the NATS credentials file {}", path.display()),
                e.to_string(),
            )
            .hint("check --sink.nats.creds-file")
        })?;
    }
    if let Some(user) = &config.user {
        options = options.user_and_password(
            user.clone(),
            config
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        );
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_string());
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(definite(
                "a NATS client certificate needs both files",
                "set both --sink.nats.client-cert and --sink.nats.client-key",
            ))
        }
    }
    options.connect(servers).await.map_err(|e| {
        let unreachable = !matches!(
            e.kind(),
            ConnectErrorKind::Authentication
                | ConnectErrorKind::AuthorizationViolation
                | ConnectErrorKind::Tls
        );
        let (what, hint) = match e.kind() {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => (
                format!("NATS at {shown} refused the credentials"),
                "check --sink.nats.user/password, --sink.nats.token or --sink.nats.creds-file",
            ),
            ConnectErrorKind::Tls => (
                format!("TLS with NATS at {shown} failed"),
                "check --sink.nats.ca-file (and --sink.nats.client-cert/-key if the server verifies clients)",
            ),
            _ => (
                format!("cannot reach NATS at {shown}"),
                "check --sink.nats.url and that nats-server runs (with JetStream: -js)",
            ),
        };
        if unreachable {
            transient(what, format!("{e}\n  hint: {hint}"))
        } else {
            definite(what, e.to_string()).hint(hint)
        }
    })
}

/// A JetStream context whose publishes wait for room when `max_in_flight`
/// acknowledgements are outstanding.
pub fn context(client: async_nats::Client, config: &NatsConfig) -> Context {
    jetstream::context::ContextBuilder::new()
        .timeout(config.request_timeout)
        .ack_timeout(config.request_timeout)
        // Room for one full re-send while the acknowledgements of the first
        // attempt are still awaited (or time out).
        .max_ack_inflight(2 * config.max_in_flight.max(1))
        .backpressure_on_inflight(true)
        .build(client)
}

/// Checks that JetStream answers for this account, telling apart the
/// causes a hint may name: nobody answering the JetStream API (JetStream
/// off on the server, or the account not allowed it) is the only one that
/// points at `-js`. The answer is read for its `error` alone, so that the
/// account info's fields, which differ between server versions (2.9 has
/// no `reserved_memory`), cannot fail the check.
pub async fn check_jetstream(js: &Context, version: &str) -> Result<(), SinkError> {
    use async_nats::jetstream::context::RequestErrorKind;
    let context = || format!("JetStream is not usable on NATS {version}");
    let reply: serde_json::Value = match js.request("INFO", &serde_json::json!({})).await {
        Ok(reply) => reply,
        Err(e) if matches!(e.kind(), RequestErrorKind::NoResponders) => {
            return Err(definite(
                format!("JetStream is not enabled on NATS {version}"),
                format!("nothing answers the JetStream API ({e})"),
            )
            .hint("start nats-server with JetStream (-js, or jetstream {} in its configuration), and check the account may use it"))
        }
        Err(e) if matches!(e.kind(), RequestErrorKind::TimedOut) => {
            return Err(transient(
                context(),
                format!(
                    "the JetStream API did not answer within --sink.nats.request-timeout ({e})\n  hint: check the server's log (JetStream may still be starting or have lost its quorum), or raise --sink.nats.request-timeout"
                ),
            ))
        }
        Err(e) => return Err(definite(context(), e.to_string())),
    };
    let Some(error) = reply.get("error") else {
        return Ok(());
    };
    let text = match serde_json::from_value::<jetstream::Error>(error.clone()) {
        Ok(j) if matches!(
            j.error_code(),
            ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
        ) =>
        {
            return Err(definite(
                format!("JetStream is not enabled on NATS {version}"),
                j.to_string(),
            )
            .hint("start nats-server with JetStream (-js), and allow it for the account pg2sink connects as"))
        }
        Ok(j) => j.to_string(),
        Err(_) => error.to_string(),
    };
    Err(definite(
        context(),
        format!("the JetStream API answered with an error: {text}"),
    ))
}

/// Checks JetStream answers, then that the stream exists (creating it) and
/// takes every subject under the prefix. Returns a line for the log.
pub async fn ensure_stream(js: &Context, config: &NatsConfig) -> Result<String, SinkError> {
    let wanted = format!("{}.>", config.subject_prefix);
    let stream = &config.stream;
    match js.get_stream(stream).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| {
                definite(format!("reading JetStream stream {stream}"), e.to_string())
            })?;
            let c = &info.config;
            if !c.subjects.iter().any(|s| encoding::covers(s, &wanted)) {
                return Err(definite(
                    format!("JetStream stream {stream} exists but does not take {wanted}"),
                    format!("its subjects are {:?}", c.subjects),
                )
                .hint(format!("add {wanted} to the stream, or choose another --sink.nats.stream or --sink.nats.subject-prefix")));
            }
            if c.no_ack {
                return Err(definite(
                    format!("JetStream stream {stream} does not acknowledge messages (no_ack)"),
                    "pg2sink confirms a change only once JetStream acknowledged it",
                )
                .hint("turn no_ack off or choose another --sink.nats.stream"));
            }
            if c.duplicate_window < config.duplicate_window {
                tracing::warn!(
                    stream,
                    duplicate_window = ?c.duplicate_window,
                    wanted = ?config.duplicate_window,
                    "the existing stream's duplicate window is shorter than --sink.nats.duplicate-window; a replay after a longer outage may repeat messages"
                );
            }
            Ok(format!(
                "stream {stream} ({} messages, duplicate window {:?})",
                info.state.messages, c.duplicate_window
            ))
        }
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            let created = js
                .create_stream(StreamConfig {
                    name: stream.clone(),
                    subjects: vec![wanted.clone()],
                    duplicate_window: config.duplicate_window,
                    storage: StorageType::File,
                    num_replicas: config.replicas.max(1),
                    description: Some("changes captured by pg2sink".into()),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => {
                    tracing::info!(stream, subjects = %wanted, duplicate_window = ?config.duplicate_window, "created JetStream stream");
                    Ok(format!("stream {stream} (created)"))
                }
                Err(e) if matches!(e.kind(), CreateStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP) => {
                    Err(definite(
                        format!("cannot create JetStream stream {stream} for {wanted}"),
                        e.to_string(),
                    )
                    .hint("another stream takes subjects under --sink.nats.subject-prefix; use that stream (--sink.nats.stream) or another prefix"))
                }
                Err(e) => Err(jetstream_unusable(format!("creating JetStream stream {stream}"), &e.to_string())),
            }
        }
        Err(e) => Err(jetstream_unusable(
            format!("reading JetStream stream {stream}"),
            &e.to_string(),
        )),
    }
}

/// JetStream answered the account check before this, so it is enabled:
/// the server's own answer is the cause, not a missing `-js`.
fn jetstream_unusable(context: String, error: &str) -> SinkError {
    definite(context, error).hint(
        "the server's answer above says why; check the account's JetStream limits and permissions for --sink.nats.stream (the nats-server log has more)",
    )
}

/// What to do about a publish that failed.
#[derive(Debug)]
pub enum Failure {
    /// Send again (from this message on, in order) after a back-off.
    Retry(String),
    /// Retrying cannot help.
    Stop { why: String, hint: &'static str },
}

pub fn classify(e: &PublishError) -> Failure {
    let text = e.to_string();
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Failure::Stop {
            why: text,
            hint: "raise max_payload in the nats-server configuration",
        },
        PublishErrorKind::Other => {
            let code = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|j| j.error_code());
            match code {
                Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
                | Some(ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM) => Failure::Stop {
                    why: text,
                    hint: "raise the stream's max_msg_size (or the server's max_payload)",
                },
                Some(ErrorCode::JETSTREAM_NOT_ENABLED)
                | Some(ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT) => Failure::Stop {
                    why: text,
                    hint: "enable JetStream (nats-server -js)",
                },
                Some(ErrorCode::STREAM_SEALED) => Failure::Stop {
                    why: text,
                    hint: "the stream is sealed; choose another --sink.nats.stream",
                },
                _ => Failure::Retry(text),
            }
        }
        _ => Failure::Retry(text),
    }
}
