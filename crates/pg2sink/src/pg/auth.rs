//! Logging in on a walsender connection: the SSLRequest and TLS
//! handshake per `sslmode`, then cleartext, MD5 or SCRAM-SHA-256 (with
//! channel binding, `-PLUS`, chosen as libpq chooses it) as the server asks.

use std::sync::Arc;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::*;
use crate::pg::channel_binding::{self, ChannelBindingMode};
use crate::pg::error::{BoxError, ConnectError, ServerError};
use crate::pg::settings::ConnectionConfig;

/// What the startup packet carries.
pub(super) struct Startup<'a> {
    pub(super) user: &'a str,
    pub(super) password: Option<&'a str>,
    pub(super) dbname: &'a str,
    pub(super) application_name: &'a str,
    /// The channel_binding setting.
    pub(super) channel_binding: ChannelBindingMode,
    /// What TLS gives channel binding on this connection.
    pub(super) tls: TlsBinding,
}

/// Whether the connection runs over TLS and, if so, the server
/// certificate's `tls-server-end-point` data (`None` when its signature
/// algorithm names no usable hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TlsBinding {
    Plaintext,
    Tls { server_end_point: Option<Vec<u8>> },
}

/// SSLRequest and the TLS handshake per sslmode, on a fresh TCP stream;
/// also what the TLS session gives channel binding.
pub(super) async fn negotiate_tls(
    mut tcp: TcpStream,
    config: &ConnectionConfig,
) -> Result<(Box<dyn Transport>, TlsBinding), ConnectError> {
    let Some(tls) = config.tls_config()? else {
        return Ok((Box::new(tcp), TlsBinding::Plaintext));
    };
    let server_name = config.tls_server_name()?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    // Exactly one byte: nothing the server sends before the handshake may be
    // taken as part of the encrypted stream.
    let mut answer = [0_u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
            let stream = connector.connect(server_name, tcp).await.map_err(|e| {
                // The rustls error inside the io::Error, if there is one.
                let source: BoxError = if e.get_ref().is_some() {
                    e.into_inner()
                        .unwrap_or_else(|| "TLS handshake failed".into())
                } else {
                    Box::new(e)
                };
                ConnectError::Tls {
                    target: config.target(),
                    source,
                }
            })?;
            let server_end_point = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|certificate| channel_binding::tls_server_end_point(certificate));
            Ok((Box::new(stream), TlsBinding::Tls { server_end_point }))
        }
        b'N' if config.ssl_mode.allows_plaintext() => Ok((Box::new(tcp), TlsBinding::Plaintext)),
        b'N' => Err(ConnectError::Tls {
            target: config.target(),
            source: format!(
                "the server does not accept TLS connections, but sslmode is {}",
                config.ssl_mode
            )
            .into(),
        }),
        other => Err(ConnectError::Protocol(format!(
            "unexpected answer {:?} to the TLS request",
            char::from(other)
        ))),
    }
}

pub(super) fn need_password<'a>(startup: &Startup<'a>) -> Result<&'a str, ConnectError> {
    startup.password.ok_or_else(|| ConnectError::Auth {
        user: startup.user.to_owned(),
        source: "the server asks for a password, but none was given".into(),
    })
}

/// Answers the server's authentication requests until AuthenticationOk.
pub(super) async fn authenticate(
    wire: &mut Wire,
    startup: &Startup<'_>,
) -> Result<(), ConnectError> {
    let auth_error = |reason: String| ConnectError::Auth {
        user: startup.user.to_owned(),
        source: reason.into(),
    };
    let require_binding = startup.channel_binding == ChannelBindingMode::Require;
    // As libpq with channel_binding=require: answer no request that is not
    // SCRAM (it could leak the password to whoever stands in the middle).
    let refuse_unbound = |what: &str| -> Result<(), ConnectError> {
        if require_binding {
            return Err(auth_error(format!(
                "channel_binding=require, but the server asks for {what}, which has no channel \
                 binding"
            )));
        }
        Ok(())
    };
    let mut scram: Option<ScramSha256> = None;
    let mut plus = false;
    let mut channel_bound = false;
    loop {
        let frame = wire.read_frame().await?;
        let message = match frame {
            Frame::Message(message) => message,
            other => return Err(unexpected(&other, "authentication")),
        };
        match message {
            Message::AuthenticationOk => {
                // A server that let us in without SCRAM-SHA-256-PLUS (trust,
                // cert, ...) was not authenticated by channel binding.
                if require_binding && !channel_bound {
                    return Err(auth_error(
                        "channel_binding=require, but the server logged pg2sink in without \
                         channel binding"
                            .into(),
                    ));
                }
                return Ok(());
            }
            Message::AuthenticationCleartextPassword => {
                refuse_unbound("a cleartext password")?;
                let password = need_password(startup)?;
                wire.queue(|buf| frontend::password_message(password.as_bytes(), buf))?;
                wire.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                refuse_unbound("an MD5 password")?;
                let password = need_password(startup)?;
                let hash = md5_hash(startup.user.as_bytes(), password.as_bytes(), body.salt());
                wire.queue(|buf| frontend::password_message(hash.as_bytes(), buf))?;
                wire.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let offered: Vec<String> = body
                    .mechanisms()
                    .map(|mechanism| Ok(mechanism.to_owned()))
                    .collect()
                    .map_err(|e| {
                        ConnectError::Protocol(format!("malformed AuthenticationSASL: {e}"))
                    })?;
                let (mechanism, binding) = choose_scram(&offered, startup)?;
                let password = need_password(startup)?;
                let exchange = ScramSha256::new(password.as_bytes(), binding);
                wire.queue(|buf| {
                    frontend::sasl_initial_response(mechanism, exchange.message(), buf)
                })?;
                wire.flush().await?;
                plus = mechanism == sasl::SCRAM_SHA_256_PLUS;
                scram = Some(exchange);
            }
            Message::AuthenticationSaslContinue(body) => {
                let exchange = scram.as_mut().ok_or_else(|| {
                    ConnectError::Protocol("SASL continuation without a SASL exchange".into())
                })?;
                exchange
                    .update(body.data())
                    .map_err(|e| auth_error(format!("SCRAM exchange failed: {e}")))?;
                wire.queue(|buf| frontend::sasl_response(exchange.message(), buf))?;
                wire.flush().await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let exchange = scram.as_mut().ok_or_else(|| {
                    ConnectError::Protocol("SASL final message without a SASL exchange".into())
                })?;
                exchange.finish(body.data()).map_err(|e| {
                    auth_error(format!("the server's SCRAM signature did not verify: {e}"))
                })?;
                channel_bound = plus;
            }
            Message::ErrorResponse(body) => {
                return Err(ConnectError::from_server(
                    ServerError::from_fields(body.fields())?,
                    startup.user,
                ));
            }
            Message::NoticeResponse(body) => log_notice(body.fields()),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(auth_error(
                    "the server asks for GSSAPI authentication, which pg2sink does not support"
                        .into(),
                ));
            }
            Message::AuthenticationSspi => {
                return Err(auth_error(
                    "the server asks for SSPI authentication, which pg2sink does not support"
                        .into(),
                ));
            }
            Message::AuthenticationKerberosV5 | Message::AuthenticationScmCredential => {
                return Err(auth_error("the server asks for an obsolete authentication method pg2sink does not support".into()));
            }
            other => return Err(unexpected(&Frame::Message(other), "authentication")),
        }
    }
}

/// The SASL mechanism and channel-binding flag, as libpq chooses them:
/// SCRAM-SHA-256-PLUS with the server certificate's hash when the server
/// offers it over TLS and channel_binding is not `disable`; else
/// SCRAM-SHA-256, telling the server (flag `y`) that pg2sink could have
/// bound the channel when it runs TLS with binding enabled, so a server
/// whose -PLUS offer was stripped in transit refuses the login.
pub(super) fn choose_scram(
    offered: &[String],
    startup: &Startup<'_>,
) -> Result<(&'static str, ChannelBinding), ConnectError> {
    let auth_error = |reason: String| ConnectError::Auth {
        user: startup.user.to_owned(),
        source: reason.into(),
    };
    let offers = |name: &str| offered.iter().any(|mechanism| mechanism == name);
    let wanted = startup.channel_binding != ChannelBindingMode::Disable;
    let require = startup.channel_binding == ChannelBindingMode::Require;
    if offers(sasl::SCRAM_SHA_256_PLUS) {
        match &startup.tls {
            // Postgres offers -PLUS only over TLS: seen in plaintext, TLS
            // was stripped by something in between (libpq refuses too).
            TlsBinding::Plaintext => {
                return Err(auth_error(
                    "the server offers SCRAM-SHA-256-PLUS over a connection without TLS; \
                     something between pg2sink and the server may have removed TLS"
                        .into(),
                ))
            }
            TlsBinding::Tls {
                server_end_point: Some(data),
            } if wanted => {
                return Ok((
                    sasl::SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(data.clone()),
                ));
            }
            TlsBinding::Tls {
                server_end_point: None,
            } if require => {
                return Err(auth_error(
                    "channel_binding=require, but the server's certificate has a signature \
                     algorithm without a hash for channel binding (tls-server-end-point)"
                        .into(),
                ))
            }
            TlsBinding::Tls { .. } => {}
        }
    }
    if require {
        return Err(auth_error(format!(
            "channel_binding=require, but the server does not offer channel binding \
             (SCRAM-SHA-256-PLUS){}; it offers: {}",
            if startup.tls == TlsBinding::Plaintext {
                " and the connection does not use TLS"
            } else {
                ""
            },
            offered.join(", ")
        )));
    }
    if !offers(sasl::SCRAM_SHA_256) {
        return Err(auth_error(format!(
            "the server offers only SASL mechanisms pg2sink does not support: {}",
            offered.join(", ")
        )));
    }
    let binding = match &startup.tls {
        TlsBinding::Tls { .. } if wanted && !offers(sasl::SCRAM_SHA_256_PLUS) => {
            ChannelBinding::unrequested()
        }
        _ => ChannelBinding::unsupported(),
    };
    Ok((sasl::SCRAM_SHA_256, binding))
}
