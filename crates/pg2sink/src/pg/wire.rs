//! The framing of the PostgreSQL wire protocol on one byte stream (TCP,
//! Unix socket, TLS, or an in-memory pipe in tests): whole messages read
//! into a buffer bounded by the largest message Postgres allows, writes
//! queued and flushed together, notices logged, and an unexpected message
//! named in the error. Never panics on what the server sends.

use std::io;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::pg::error::{ConnectError, ServerError};

/// The largest message accepted from the server: PostgreSQL's own limit for
/// one allocation (1 GiB) plus room for the framing.
pub(super) const MAX_MESSAGE_LEN: usize = (1 << 30) + 1024;
/// Tag of CopyBothResponse, which `postgres_protocol` does not parse.
pub(super) const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
/// Tag of NegotiateProtocolVersion, which `postgres_protocol` does not parse.
pub(super) const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';

/// Any byte stream the connection can run on (TCP, Unix socket, TLS, or an
/// in-memory pipe in tests).
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// A message from the server.
pub(super) enum Frame {
    Message(Message),
    CopyBothResponse,
}

/// The framing layer: buffered reads of whole messages and queued writes.
pub(super) struct Wire {
    pub(super) io: Box<dyn Transport>,
    pub(super) read_buf: BytesMut,
    pub(super) write_buf: BytesMut,
}

impl Wire {
    pub(super) fn new(io: Box<dyn Transport>) -> Self {
        Wire {
            io,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Appends one encoded message to the output queue.
    pub(super) fn queue(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> io::Result<()>,
    ) -> Result<(), ConnectError> {
        let before = self.write_buf.len();
        encode(&mut self.write_buf)
            .map_err(|e| {
                ConnectError::Protocol(format!("cannot encode a message for the server: {e}"))
            })
            .inspect_err(|_| self.write_buf.truncate(before))
    }

    /// Writes out everything queued. If this future is dropped midway, the
    /// unwritten rest stays queued and goes out with the next flush, so the
    /// stream never carries a torn message.
    pub(super) async fn flush(&mut self) -> Result<(), ConnectError> {
        while self.write_buf.has_remaining() {
            let written = self.io.write_buf(&mut self.write_buf).await?;
            if written == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    /// The next whole message. Cancel-safe: bytes read are kept in
    /// `read_buf` until a whole message is there.
    pub(super) async fn read_frame(&mut self) -> Result<Frame, ConnectError> {
        loop {
            if let Some(frame) = self.parse_frame()? {
                return Ok(frame);
            }
            if self.read_buf.capacity() - self.read_buf.len() < 8 * 1024 {
                self.read_buf.reserve(64 * 1024);
            }
            if self.io.read_buf(&mut self.read_buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )
                .into());
            }
        }
    }

    /// Whether a whole message is already read and waiting: reading it
    /// needs no wait on the network.
    pub(super) fn has_buffered_message(&self) -> bool {
        let b = &self.read_buf;
        b.len() >= 5 && {
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            b.len() > len
        }
    }

    pub(super) fn parse_frame(&mut self) -> Result<Option<Frame>, ConnectError> {
        if self.read_buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.read_buf[0];
        let len = u32::from_be_bytes([
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
            self.read_buf[4],
        ]) as usize;
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(ConnectError::Protocol(format!(
                "the server sent a message of type {:?} with an invalid length {len}",
                char::from(tag)
            )));
        }
        match tag {
            COPY_BOTH_RESPONSE_TAG => {
                if self.read_buf.len() < len + 1 {
                    self.read_buf.reserve(len + 1 - self.read_buf.len());
                    return Ok(None);
                }
                self.read_buf.advance(len + 1);
                Ok(Some(Frame::CopyBothResponse))
            }
            NEGOTIATE_PROTOCOL_VERSION_TAG => Err(ConnectError::Protocol(
                "the server does not support protocol version 3.0 (NegotiateProtocolVersion)"
                    .into(),
            )),
            _ => match Message::parse(&mut self.read_buf) {
                Ok(message) => Ok(message.map(Frame::Message)),
                Err(e) => Err(ConnectError::Protocol(format!(
                    "malformed message from the server: {e}"
                ))),
            },
        }
    }

    /// Best effort: Terminate, then close the stream.
    pub(super) async fn terminate(&mut self) {
        if self
            .queue(|buf| {
                frontend::terminate(buf);
                Ok(())
            })
            .is_ok()
            && self.flush().await.is_ok()
        {
            let _ = self.io.shutdown().await;
        }
    }
}

/// Logs a NoticeResponse.
pub(super) fn log_notice(fields: ErrorFields<'_>) {
    match ServerError::from_fields(fields) {
        Ok(notice) if notice.severity == "WARNING" => {
            tracing::warn!(code = %notice.code, "server warning: {notice}");
        }
        Ok(notice) => {
            tracing::info!(code = %notice.code, severity = %notice.severity, "server notice: {notice}")
        }
        Err(error) => tracing::warn!(%error, "unreadable notice from the server"),
    }
}

pub(super) fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationOk
        | Message::AuthenticationCleartextPassword
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_)
        | Message::AuthenticationGss
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential
        | Message::AuthenticationSspi => "Authentication",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "unknown",
    }
}

pub(super) fn unexpected(frame: &Frame, during: &str) -> ConnectError {
    let name = match frame {
        Frame::Message(message) => message_name(message),
        Frame::CopyBothResponse => "CopyBothResponse",
    };
    ConnectError::Protocol(format!(
        "unexpected {name} message from the server during {during}"
    ))
}
