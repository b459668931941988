//! A walsender connection: the PostgreSQL wire protocol spoken directly (via
//! `postgres_protocol`'s message codecs), in logical replication mode
//! (`replication=database`), for the replication commands and the CopyBoth
//! stream that tokio-postgres does not support. The framing is in `wire`,
//! logging in (TLS, SCRAM) in `auth`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::auth::{authenticate, negotiate_tls, Startup, TlsBinding};
use super::wire::{log_notice, unexpected, Frame, Transport, Wire};
use crate::pg::error::{ConnectError, ServerError};
use crate::pg::settings::ConnectionConfig;
use crate::pg::socket::Socket;

/// How long `finish` waits to hand the server its Terminate message.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(1);

/// One row of a simple-query result, every column as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The column names, shared by the rows of one result set.
    pub columns: Arc<[String]>,
    /// The values, `None` for NULL.
    pub values: Vec<Option<String>>,
}

impl Row {
    /// The value of the (first) column with this name; `None` if it is NULL
    /// or there is no such column.
    pub fn get(&self, name: &str) -> Option<&str> {
        let index = self.columns.iter().position(|column| column == name)?;
        self.get_index(index)
    }

    /// The value of the column at `index`; `None` if NULL or out of range.
    pub fn get_index(&self, index: usize) -> Option<&str> {
        self.values.get(index)?.as_deref()
    }
}

/// A walsender connection in logical replication mode, ready for commands.
pub struct ReplicationConnection {
    wire: Wire,
    parameters: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
    user: String,
    /// A command's response was not read to the end (its future was
    /// dropped), so the connection is out of step with the server.
    desynchronized: bool,
}

impl fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("server_version", &self.server_version())
            .field("backend_pid", &self.backend_pid())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects per `config` (see [`ConnectionConfig::connect_replication`]):
    /// TCP with TLS per sslmode, or the Unix socket; then authentication.
    pub async fn connect(config: &ConnectionConfig) -> Result<Self, ConnectError> {
        let attempt = Self::connect_unbounded(config);
        match config.connect_timeout {
            None => attempt.await,
            Some(limit) => tokio::time::timeout(limit, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectError::Unreachable {
                        target: config.target(),
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no connection within {limit:?} (connect_timeout)"),
                        ),
                    })
                }),
        }
    }

    async fn connect_unbounded(config: &ConnectionConfig) -> Result<Self, ConnectError> {
        let socket = config.open_socket().await?;
        let (io, tls): (Box<dyn Transport>, TlsBinding) = match socket {
            Socket::Unix(unix) => (Box::new(unix), TlsBinding::Plaintext),
            Socket::Tcp(tcp) => negotiate_tls(tcp, config).await?,
        };
        let password = config.password_for_connect();
        let startup = Startup {
            user: &config.user,
            password: password.as_ref().map(|p| p.expose()),
            dbname: &config.dbname,
            application_name: &config.application_name,
            channel_binding: config.channel_binding,
            tls,
        };
        Self::handshake(io, &startup).await
    }

    /// Startup packet, authentication, and the server's parameters up to
    /// the first ReadyForQuery.
    async fn handshake(
        io: Box<dyn Transport>,
        startup: &Startup<'_>,
    ) -> Result<Self, ConnectError> {
        let mut wire = Wire::new(io);
        let parameters = [
            ("user", startup.user),
            ("database", startup.dbname),
            ("replication", "database"),
            ("application_name", startup.application_name),
            ("client_encoding", "UTF8"),
            // pgoutput renders values with the walsender's settings: fix
            // them so the text form (and so the JSON) never depends on the
            // server's or the role's defaults.
            ("DateStyle", "ISO, YMD"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "1"),
            ("bytea_output", "hex"),
        ];
        wire.queue(|buf| frontend::startup_message(parameters, buf))?;
        wire.flush().await?;
        authenticate(&mut wire, startup).await?;

        let mut connection = ReplicationConnection {
            wire,
            parameters: HashMap::new(),
            backend_key: None,
            user: startup.user.to_owned(),
            desynchronized: false,
        };
        loop {
            let frame = connection.wire.read_frame().await?;
            match frame {
                Frame::Message(Message::ParameterStatus(body)) => {
                    connection.note_parameter(&body)?
                }
                Frame::Message(Message::BackendKeyData(body)) => {
                    connection.backend_key = Some((body.process_id(), body.secret_key()));
                }
                Frame::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                Frame::Message(Message::ErrorResponse(body)) => {
                    return Err(ConnectError::from_server(
                        ServerError::from_fields(body.fields())?,
                        startup.user,
                    ));
                }
                Frame::Message(Message::ReadyForQuery(_)) => return Ok(connection),
                other => return Err(unexpected(&other, "startup")),
            }
        }
    }

    fn note_parameter(
        &mut self,
        body: &postgres_protocol::message::backend::ParameterStatusBody,
    ) -> Result<(), ConnectError> {
        let malformed =
            |e: io::Error| ConnectError::Protocol(format!("malformed ParameterStatus: {e}"));
        let name = body.name().map_err(malformed)?;
        let value = body.value().map_err(malformed)?;
        self.parameters.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    fn check_synchronized(&self) -> Result<(), ConnectError> {
        if self.desynchronized {
            return Err(ConnectError::Protocol(
                "the connection is unusable: an earlier command was interrupted before its response was read".into(),
            ));
        }
        Ok(())
    }

    /// Runs `sql` with the simple-query protocol: walsender commands
    /// (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT ... LOGICAL pgoutput, ...)
    /// or plain SQL, which walsenders accept in database mode. Returns the
    /// rows of all result sets, each column as text (`None` for NULL).
    ///
    /// Not cancel-safe: if the future is dropped before it completes, the
    /// connection is unusable (later calls fail with a protocol error).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ConnectError> {
        self.check_synchronized()?;
        self.wire.queue(|buf| frontend::query(sql, buf))?;
        self.desynchronized = true;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut columns: Option<Arc<[String]>> = None;
        let mut error = None;
        loop {
            let frame = self.wire.read_frame().await?;
            let message = match frame {
                Frame::Message(message) => message,
                Frame::CopyBothResponse => {
                    return Err(ConnectError::Protocol(
                        "the server started streaming in response to simple_query; use start_replication".into(),
                    ));
                }
            };
            match message {
                Message::RowDescription(body) => {
                    let names: Vec<String> = body
                        .fields()
                        .map(|field| Ok(field.name().to_owned()))
                        .collect()
                        .map_err(|e| {
                            ConnectError::Protocol(format!("malformed RowDescription: {e}"))
                        })?;
                    columns = Some(names.into());
                }
                Message::DataRow(body) => {
                    let columns = columns.clone().ok_or_else(|| {
                        ConnectError::Protocol("DataRow without RowDescription".into())
                    })?;
                    let buffer = body.buffer();
                    let values: Vec<Option<String>> = body
                        .ranges()
                        .map(|range| {
                            range
                                .map(|range| {
                                    std::str::from_utf8(&buffer[range])
                                        .map(str::to_owned)
                                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                                })
                                .transpose()
                        })
                        .collect()
                        .map_err(|e| ConnectError::Protocol(format!("malformed DataRow: {e}")))?;
                    if values.len() != columns.len() {
                        return Err(ConnectError::Protocol(format!(
                            "DataRow with {} values for {} columns",
                            values.len(),
                            columns.len()
                        )));
                    }
                    rows.push(Row { columns, values });
                }
                Message::CommandComplete(_) | Message::EmptyQueryResponse => columns = None,
                Message::ErrorResponse(body) => {
                    error = Some(ServerError::from_fields(body.fields())?)
                }
                Message::NoticeResponse(body) => log_notice(body.fields()),
                Message::ParameterStatus(body) => self.note_parameter(&body)?,
                Message::CopyInResponse(_) => {
                    self.wire
                        .queue(|buf| frontend::copy_fail("pg2sink does not send COPY data", buf))?;
                    self.wire.flush().await?;
                }
                // COPY TO STDOUT output is not collected.
                Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {}
                Message::ReadyForQuery(_) => break,
                other => return Err(unexpected(&Frame::Message(other), "a simple query")),
            }
        }
        self.desynchronized = false;
        match error {
            Some(error) => Err(ConnectError::Server(error)),
            None => Ok(rows),
        }
    }

    /// Sends `sql` (a complete START_REPLICATION command) and expects the
    /// server to start streaming (CopyBothResponse).
    pub async fn start_replication(mut self, sql: &str) -> Result<ReplicationStream, ConnectError> {
        self.check_synchronized()?;
        self.wire.queue(|buf| frontend::query(sql, buf))?;
        self.wire.flush().await?;
        let mut error = None;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame {
                Frame::CopyBothResponse => {
                    return Ok(ReplicationStream {
                        connection: self,
                        state: StreamState::Streaming,
                    });
                }
                Frame::Message(Message::ErrorResponse(body)) => {
                    error = Some(ServerError::from_fields(body.fields())?)
                }
                Frame::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                Frame::Message(Message::ParameterStatus(body)) => self.note_parameter(&body)?,
                Frame::Message(
                    Message::RowDescription(_) | Message::DataRow(_) | Message::CommandComplete(_),
                ) => {}
                Frame::Message(Message::ReadyForQuery(_)) => {
                    return Err(match error {
                        Some(error) => ConnectError::Server(error),
                        None => ConnectError::Protocol(format!(
                            "the server completed {sql:?} without starting to stream"
                        )),
                    });
                }
                other => return Err(unexpected(&other, "START_REPLICATION")),
            }
        }
    }

    /// The server's version as a number (`150018` for 15.18, `170000` for
    /// 17devel, `90624` for 9.6.24), from its `server_version` parameter.
    pub fn server_version_num(&self) -> Option<u32> {
        self.server_version().and_then(parse_server_version)
    }

    /// The `server_version` text the server reported.
    pub fn server_version(&self) -> Option<&str> {
        self.parameter("server_version")
    }

    /// A parameter the server reported with ParameterStatus.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The walsender's process ID (for `pg_stat_replication`, logs).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_key.map(|(pid, _)| pid)
    }

    /// Ends the session politely (Terminate), best effort.
    pub async fn close(mut self) {
        self.wire.terminate().await;
    }
}

/// Where the server is in ending the CopyBoth stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Streaming,
    /// The server sent CopyDone; it waits for ours.
    ServerCopyDone,
    /// The server sent CommandComplete (for instance while shutting down).
    Completed,
    /// The server sent ReadyForQuery.
    Ready,
}

/// The CopyBoth stream after START_REPLICATION.
pub struct ReplicationStream {
    connection: ReplicationConnection,
    state: StreamState,
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("connection", &self.connection)
            .field("state", &self.state)
            .finish()
    }
}

impl ReplicationStream {
    /// The next CopyData payload from the server (raw bytes, starting with
    /// `w` for XLogData or `k` for a keepalive). `Ok(None)` once the server
    /// ends the copy (CopyDone, CommandComplete or ReadyForQuery), and on
    /// every call after that. NoticeResponse and ParameterStatus are
    /// skipped (notices are logged); an ErrorResponse is returned as
    /// `ConnectError::Server`.
    ///
    /// Cancel-safe: bytes already read stay buffered until their message is
    /// complete, so the future can be dropped (e.g. in `tokio::select!`).
    pub async fn next_payload(&mut self) -> Result<Option<Bytes>, ConnectError> {
        while self.state == StreamState::Streaming {
            let frame = self.connection.wire.read_frame().await?;
            match frame {
                Frame::Message(Message::CopyData(body)) => return Ok(Some(body.into_bytes())),
                Frame::Message(Message::CopyDone) => self.state = StreamState::ServerCopyDone,
                Frame::Message(Message::CommandComplete(_)) => self.state = StreamState::Completed,
                Frame::Message(Message::ReadyForQuery(_)) => self.state = StreamState::Ready,
                Frame::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                Frame::Message(Message::ParameterStatus(body)) => {
                    self.connection.note_parameter(&body)?
                }
                Frame::Message(Message::ErrorResponse(body)) => {
                    return Err(ConnectError::Server(ServerError::from_fields(
                        body.fields(),
                    )?));
                }
                other => return Err(unexpected(&other, "streaming")),
            }
        }
        Ok(None)
    }

    /// Whether the next payload is already received, so reading it will not
    /// wait: the session hands its batch to the sink before it waits.
    pub fn has_buffered_payload(&self) -> bool {
        self.connection.wire.has_buffered_message()
    }

    /// Sends one CopyData message (e.g. a standby status update) and flushes.
    ///
    /// If the future is dropped before it completes, the message is still
    /// queued whole and goes out (completed) with the next `send_payload` or
    /// `finish`; the stream never carries a torn message.
    pub async fn send_payload(&mut self, payload: &[u8]) -> Result<(), ConnectError> {
        self.connection.wire.queue(|buf| {
            frontend::CopyData::new(payload)?.write(buf);
            Ok(())
        })?;
        self.connection.wire.flush().await
    }

    /// The server's version, as [`ReplicationConnection::server_version_num`].
    pub fn server_version_num(&self) -> Option<u32> {
        self.connection.server_version_num()
    }

    /// The walsender's process ID.
    pub fn backend_pid(&self) -> Option<i32> {
        self.connection.backend_pid()
    }

    /// Clean shutdown: sends CopyDone, waits (at most `timeout`) for the
    /// server to end the stream (data it still sends is discarded), then
    /// sends Terminate. A server that just closes the connection counts as
    /// ended (PostgreSQL does so while shutting down). Fails with an `Io`
    /// error of kind `TimedOut` if the server took longer, or with the
    /// server's error if it reported one.
    pub async fn finish(mut self, timeout: Duration) -> Result<(), ConnectError> {
        let outcome = tokio::time::timeout(timeout, self.wind_down()).await;
        let _ = tokio::time::timeout(TERMINATE_TIMEOUT, self.connection.wire.terminate()).await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the server did not end replication within {timeout:?}"),
            ))),
        }
    }

    async fn wind_down(&mut self) -> Result<(), ConnectError> {
        if matches!(
            self.state,
            StreamState::Streaming | StreamState::ServerCopyDone
        ) {
            self.connection.wire.queue(|buf| {
                frontend::copy_done(buf);
                Ok(())
            })?;
            self.connection.wire.flush().await?;
        }
        let mut error = None;
        let mut discarded = 0_u64;
        while self.state != StreamState::Ready {
            let frame = match self.connection.wire.read_frame().await {
                Ok(frame) => frame,
                // The server may just exit: after its final CommandComplete, after
                // a FATAL error, or (seen while it shuts down) right after our
                // CopyDone. Either way the stream has ended.
                Err(ConnectError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(state = ?self.state, "the server closed the connection while replication was ending");
                    break;
                }
                Err(e) => return Err(e),
            };
            match frame {
                Frame::Message(Message::CopyData(_)) => discarded += 1,
                Frame::Message(Message::CopyDone) => {
                    if self.state == StreamState::Streaming {
                        self.state = StreamState::ServerCopyDone;
                    }
                }
                Frame::Message(Message::CommandComplete(_)) => self.state = StreamState::Completed,
                Frame::Message(Message::ReadyForQuery(_)) => self.state = StreamState::Ready,
                Frame::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                Frame::Message(Message::ParameterStatus(body)) => {
                    self.connection.note_parameter(&body)?
                }
                Frame::Message(Message::ErrorResponse(body)) => {
                    error = Some(ServerError::from_fields(body.fields())?)
                }
                Frame::Message(Message::RowDescription(_) | Message::DataRow(_)) => {}
                other => return Err(unexpected(&other, "the end of streaming")),
            }
        }
        if discarded > 0 {
            tracing::debug!(
                discarded,
                "discarded messages the server sent after we asked it to stop streaming"
            );
        }
        match error {
            Some(error) => Err(ConnectError::Server(error)),
            None => Ok(()),
        }
    }
}

/// Opening a walsender connection lives beside the session rather than in
/// `settings`, so the settings know nothing of the walsender protocol.
impl ConnectionConfig {
    /// A walsender connection in logical replication mode (startup
    /// parameter `replication=database`), to the first of `hosts` that
    /// accepts it and matches `target_session_attrs`.
    pub async fn connect_replication(&self) -> Result<ReplicationConnection, ConnectError> {
        let mut last = None;
        for endpoint in self.endpoints() {
            match ReplicationConnection::connect(&endpoint).await {
                Ok(mut connection) => {
                    match endpoint.check_replication_session(&mut connection).await {
                        Ok(()) => return Ok(connection),
                        Err(e) => {
                            connection.close().await;
                            last = Some(e);
                        }
                    }
                }
                Err(e) if e.tries_next_host() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::Protocol("no host to connect to".into())))
    }

    async fn check_replication_session(
        &self,
        connection: &mut ReplicationConnection,
    ) -> Result<(), ConnectError> {
        let Some(sql) = self.target_session_attrs.check_sql() else {
            return Ok(());
        };
        let rows = connection.simple_query(sql).await?;
        match rows.first().and_then(|row| row.get_index(0)) {
            Some("t") => Ok(()),
            _ => Err(self.wrong_session_kind()),
        }
    }
}

/// `15.18 (Debian 15.18-1.pgdg120+1)` → 150018, `17devel` → 170000,
/// `16beta2` → 160000, `9.6.24` → 90624.
fn parse_server_version(text: &str) -> Option<u32> {
    let word = text.split_whitespace().next()?;
    let mut parts = Vec::new();
    for part in word.split('.') {
        let digits = part.len() - part.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            break;
        }
        parts.push(part[..digits].parse::<u32>().ok()?);
        if digits != part.len() {
            break;
        }
    }
    let major = *parts.first()?;
    let minor = parts.get(1).copied().unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + minor)
    } else {
        Some(major * 10_000 + minor * 100 + parts.get(2).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::channel_binding::ChannelBindingMode;
    use postgres_protocol::authentication::{md5_hash, sasl};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    // ---- a scripted fake server over an in-memory pipe ----

    fn backend(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut message = vec![tag];
        message.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        message.extend_from_slice(body);
        message
    }

    fn cstr(text: &str) -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        bytes
    }

    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(extra);
        backend(b'R', &body)
    }

    fn parameter_status(name: &str, value: &str) -> Vec<u8> {
        backend(b'S', &[cstr(name), cstr(value)].concat())
    }

    fn ready() -> Vec<u8> {
        backend(b'Z', b"I")
    }

    fn error_response(severity: &str, code: &str, message: &str, hint: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        for (tag, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ] {
            body.push(tag);
            body.extend(cstr(value));
        }
        if let Some(hint) = hint {
            body.push(b'H');
            body.extend(cstr(hint));
        }
        body.push(0);
        backend(b'E', &body)
    }

    fn notice(message: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (tag, value) in [(b'S', "NOTICE"), (b'C', "00000"), (b'M', message)] {
            body.push(tag);
            body.extend(cstr(value));
        }
        body.push(0);
        backend(b'N', &body)
    }

    fn row_description(names: &[&str]) -> Vec<u8> {
        let mut body = u16::try_from(names.len()).unwrap().to_be_bytes().to_vec();
        for name in names {
            body.extend(cstr(name));
            body.extend_from_slice(&0_i32.to_be_bytes()); // table oid
            body.extend_from_slice(&0_i16.to_be_bytes()); // column number
            body.extend_from_slice(&25_i32.to_be_bytes()); // type oid (text)
            body.extend_from_slice(&(-1_i16).to_be_bytes()); // type size
            body.extend_from_slice(&(-1_i32).to_be_bytes()); // type modifier
            body.extend_from_slice(&0_i16.to_be_bytes()); // format
        }
        backend(b'T', &body)
    }

    fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut body = u16::try_from(values.len()).unwrap().to_be_bytes().to_vec();
        for value in values {
            match value {
                Some(value) => {
                    body.extend_from_slice(&i32::try_from(value.len()).unwrap().to_be_bytes());
                    body.extend_from_slice(value.as_bytes());
                }
                None => body.extend_from_slice(&(-1_i32).to_be_bytes()),
            }
        }
        backend(b'D', &body)
    }

    fn command_complete(tag: &str) -> Vec<u8> {
        backend(b'C', &cstr(tag))
    }

    fn copy_both() -> Vec<u8> {
        backend(b'W', &[0, 0, 0])
    }

    fn copy_data(payload: &[u8]) -> Vec<u8> {
        backend(b'd', payload)
    }

    /// Reads the startup packet and returns its parameters.
    async fn read_startup(server: &mut DuplexStream) -> HashMap<String, String> {
        let len = server.read_u32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        server.read_exact(&mut body).await.unwrap();
        assert_eq!(&body[..4], &196_608_u32.to_be_bytes(), "protocol 3.0");
        let fields: Vec<String> = body[4..]
            .split(|b| *b == 0)
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect();
        fields
            .chunks(2)
            .filter(|pair| pair.len() == 2 && !pair[0].is_empty())
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect()
    }

    /// Reads one frontend message: (tag, body).
    async fn read_message(server: &mut DuplexStream) -> (u8, Vec<u8>) {
        let tag = server.read_u8().await.unwrap();
        let len = server.read_u32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        server.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    fn startup(password: Option<&'static str>) -> Startup<'static> {
        Startup {
            user: "bob",
            password,
            dbname: "shop",
            application_name: "pg2sink",
            channel_binding: ChannelBindingMode::Prefer,
            tls: TlsBinding::Plaintext,
        }
    }

    async fn greet(server: &mut DuplexStream) {
        let params = read_startup(server).await;
        assert_eq!(params["user"], "bob");
        assert_eq!(params["database"], "shop");
        assert_eq!(params["replication"], "database");
        assert_eq!(params["application_name"], "pg2sink");
        assert_eq!(params["client_encoding"], "UTF8");
        let mut reply = auth(0, &[]);
        reply.extend(parameter_status(
            "server_version",
            "15.18 (Debian 15.18-1.pgdg120+1)",
        ));
        reply.extend(backend(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
        reply.extend(notice("hello"));
        reply.extend(ready());
        server.write_all(&reply).await.unwrap();
    }

    #[tokio::test]
    async fn handshake_query_stream_and_finish() {
        let (client, mut server) = tokio::io::duplex(4096);
        let big: Vec<u8> = (0..3_000_000_u32).map(|i| (i % 251) as u8).collect();
        let big_for_server = big.clone();
        let server_task = tokio::spawn(async move {
            greet(&mut server).await;

            let (tag, body) = read_message(&mut server).await;
            assert_eq!(tag, b'Q');
            assert_eq!(body, cstr("IDENTIFY_SYSTEM"));
            let mut reply = row_description(&["systemid", "timeline", "xlogpos", "dbname"]);
            reply.extend(data_row(&[Some("7312"), Some("1"), Some("0/1A2B3C"), None]));
            reply.extend(command_complete("IDENTIFY_SYSTEM"));
            reply.extend(ready());
            server.write_all(&reply).await.unwrap();

            let (tag, _) = read_message(&mut server).await;
            assert_eq!(tag, b'Q');
            let mut reply = error_response(
                "ERROR",
                "42704",
                "replication slot \"x\" does not exist",
                Some("create it"),
            );
            reply.extend(ready());
            server.write_all(&reply).await.unwrap();

            let (tag, body) = read_message(&mut server).await;
            assert_eq!(tag, b'Q');
            assert!(body.starts_with(b"START_REPLICATION"));
            server.write_all(&copy_both()).await.unwrap();

            // Dribble the stream out in small pieces so frames straddle reads.
            let mut stream = copy_data(b"k-first");
            stream.extend(notice("in the middle"));
            stream.extend(parameter_status("is_superuser", "on"));
            stream.extend(copy_data(&[b"w".as_slice(), &big_for_server].concat()));
            stream.extend(copy_data(b"k-last"));
            for chunk in stream.chunks(1000) {
                server.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }

            let (tag, body) = read_message(&mut server).await;
            assert_eq!((tag, body.as_slice()), (b'd', b"r-status".as_slice()));

            // finish(): our CopyDone; the server may still send data, then ends.
            let (tag, _) = read_message(&mut server).await;
            assert_eq!(tag, b'c');
            let mut reply = copy_data(b"w-late");
            reply.extend(backend(b'c', &[]));
            reply.extend(command_complete("START_STREAMING"));
            reply.extend(ready());
            server.write_all(&reply).await.unwrap();
            let (tag, _) = read_message(&mut server).await;
            assert_eq!(tag, b'X');
        });

        let mut connection = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap();
        assert_eq!(connection.server_version_num(), Some(150_018));
        assert_eq!(connection.backend_pid(), Some(42));

        let rows = connection.simple_query("IDENTIFY_SYSTEM").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get("systemid"), Some("7312"));
        assert_eq!(rows[0].get("xlogpos"), Some("0/1A2B3C"));
        assert_eq!(rows[0].get("dbname"), None);
        assert_eq!(rows[0].get("nope"), None);
        assert_eq!(rows[0].get_index(1), Some("1"));

        let err = connection
            .simple_query("DROP_REPLICATION_SLOT x")
            .await
            .unwrap_err();
        let ConnectError::Server(server_error) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(server_error.code, "42704");
        assert_eq!(server_error.severity, "ERROR");
        assert_eq!(
            err.to_string(),
            "replication slot \"x\" does not exist (SQLSTATE 42704)\nHINT: create it"
        );
        assert!(!err.is_transient());

        let mut stream = connection
            .start_replication("START_REPLICATION SLOT s LOGICAL 0/0")
            .await
            .unwrap();
        // Poll with a timer that fires constantly, dropping next_payload
        // futures midway: nothing may be lost.
        let mut payloads = Vec::new();
        let mut cancelled = 0;
        while payloads.len() < 3 {
            tokio::select! {
                payload = stream.next_payload() => payloads.push(payload.unwrap().unwrap()),
                () = tokio::task::yield_now() => cancelled += 1,
            }
        }
        assert!(cancelled > 0);
        assert_eq!(&payloads[0][..], b"k-first");
        assert_eq!(payloads[1][0], b'w');
        assert_eq!(&payloads[1][1..], &big[..]);
        assert_eq!(&payloads[2][..], b"k-last");
        assert_eq!(stream.connection.parameter("is_superuser"), Some("on"));

        stream.send_payload(b"r-status").await.unwrap();
        stream.finish(Duration::from_secs(5)).await.unwrap();
        server_task.await.unwrap();
    }

    #[tokio::test]
    async fn server_ending_the_stream_and_errors_mid_stream() {
        let (client, mut server) = tokio::io::duplex(4096);
        let server_task = tokio::spawn(async move {
            greet(&mut server).await;
            read_message(&mut server).await;
            let mut reply = copy_both();
            reply.extend(copy_data(b"k1"));
            // As a walsender at shutdown: CommandComplete without CopyDone, then exit.
            reply.extend(command_complete("COPY 0"));
            server.write_all(&reply).await.unwrap();
            // The walsender exits: the client sees EOF.
            server.shutdown().await.unwrap();
            // finish() must not send CopyDone now; only Terminate may follow.
            let (tag, _) = read_message(&mut server).await;
            assert_eq!(tag, b'X');
        });
        let connection = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap();
        let mut stream = connection
            .start_replication("START_REPLICATION")
            .await
            .unwrap();
        assert_eq!(&stream.next_payload().await.unwrap().unwrap()[..], b"k1");
        assert!(stream.next_payload().await.unwrap().is_none());
        assert!(stream.next_payload().await.unwrap().is_none());
        let finish = stream.finish(Duration::from_secs(5));
        let (result, ()) = tokio::join!(finish, async { server_task.await.unwrap() });
        // The server closed without ReadyForQuery: still a clean end.
        result.unwrap();

        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            greet(&mut server).await;
            read_message(&mut server).await;
            let mut reply = copy_both();
            reply.extend(error_response(
                "FATAL",
                "57P01",
                "terminating connection due to administrator command",
                None,
            ));
            server.write_all(&reply).await.unwrap();
        });
        let connection = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap();
        let mut stream = connection
            .start_replication("START_REPLICATION")
            .await
            .unwrap();
        let err = stream.next_payload().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(err.sqlstate(), Some("57P01"));
    }

    #[tokio::test]
    async fn start_replication_failure_returns_the_server_error() {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            greet(&mut server).await;
            read_message(&mut server).await;
            let mut reply = error_response(
                "ERROR",
                "55006",
                "replication slot \"s\" is active for PID 9",
                None,
            );
            reply.extend(ready());
            server.write_all(&reply).await.unwrap();
        });
        let connection = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap();
        let err = connection
            .start_replication("START_REPLICATION")
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate(), Some("55006"), "{err}");
    }

    #[tokio::test]
    async fn finish_times_out_when_the_server_does_not_answer() {
        let (client, mut server) = tokio::io::duplex(4096);
        let server_task = tokio::spawn(async move {
            greet(&mut server).await;
            read_message(&mut server).await;
            server.write_all(&copy_both()).await.unwrap();
            // Swallow whatever comes, never answer.
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        });
        let connection = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap();
        let stream = connection
            .start_replication("START_REPLICATION")
            .await
            .unwrap();
        let err = stream.finish(Duration::from_millis(100)).await.unwrap_err();
        let ConnectError::Io(io_error) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(io_error.kind(), io::ErrorKind::TimedOut);
        server_task.await.unwrap();
    }

    #[tokio::test]
    async fn md5_and_cleartext_passwords() {
        for (method, salt) in [(5, Some([1_u8, 2, 3, 4])), (3, None)] {
            let (client, mut server) = tokio::io::duplex(4096);
            let server_task = tokio::spawn(async move {
                read_startup(&mut server).await;
                server
                    .write_all(&auth(method, salt.as_ref().map_or(&[][..], |s| &s[..])))
                    .await
                    .unwrap();
                let (tag, body) = read_message(&mut server).await;
                assert_eq!(tag, b'p');
                let expected = match salt {
                    Some(salt) => md5_hash(b"bob", b"pw", salt),
                    None => "pw".to_owned(),
                };
                assert_eq!(body, cstr(&expected));
                let mut reply = auth(0, &[]);
                reply.extend(ready());
                server.write_all(&reply).await.unwrap();
            });
            ReplicationConnection::handshake(Box::new(client), &startup(Some("pw")))
                .await
                .unwrap();
            server_task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn authentication_failures_are_auth_errors() {
        // No password to give.
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            read_startup(&mut server).await;
            server.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        });
        let err = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Auth { .. }), "{err:?}");
        assert!(err.to_string().contains("none was given"), "{err}");

        // Wrong password.
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            read_startup(&mut server).await;
            server.write_all(&auth(3, &[])).await.unwrap();
            read_message(&mut server).await;
            server
                .write_all(&error_response(
                    "FATAL",
                    "28P01",
                    "password authentication failed for user \"bob\"",
                    None,
                ))
                .await
                .unwrap();
        });
        let err = ReplicationConnection::handshake(Box::new(client), &startup(Some("wrong")))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Auth { .. }), "{err:?}");
        assert_eq!(err.sqlstate(), Some("28P01"));
        assert!(!err.is_transient());

        // Unsupported SASL mechanism.
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            read_startup(&mut server).await;
            server
                .write_all(&auth(10, &[cstr("OAUTHBEARER"), vec![0]].concat()))
                .await
                .unwrap();
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        });
        let err = ReplicationConnection::handshake(Box::new(client), &startup(Some("pw")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("OAUTHBEARER"), "{err}");

        // Too many connections at startup: a transient server error.
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            read_startup(&mut server).await;
            server
                .write_all(&error_response(
                    "FATAL",
                    "53300",
                    "sorry, too many clients already",
                    None,
                ))
                .await
                .unwrap();
        });
        let err = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Server(_)), "{err:?}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn garbage_and_eof_are_reported() {
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            read_startup(&mut server).await;
            server
                .write_all(&[b'R', 0xff, 0xff, 0xff, 0xff])
                .await
                .unwrap();
        });
        let err = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Protocol(_)), "{err:?}");

        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            read_startup(&mut server).await;
        });
        let err = ReplicationConnection::handshake(Box::new(client), &startup(None))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Io(_)), "{err:?}");
        assert!(err.is_transient());
    }

    // ---- SCRAM-SHA-256(-PLUS) on the fake server's side (RFC 5802) ----

    const SCRAM_PASSWORD: &str = "pw";

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        ring::hmac::sign(&key, data).as_ref().to_vec()
    }

    /// What the client sent, for the test to check.
    struct ScramSeen {
        mechanism: String,
        gs2_header: String,
        channel_binding: Vec<u8>,
    }

    /// Offers `offered`, runs the exchange the client starts and checks its
    /// proof; `end_point` is the channel-binding data the server expects
    /// with -PLUS. Ends with AuthenticationOk and ReadyForQuery.
    async fn scram_server(
        server: &mut DuplexStream,
        offered: &[&str],
        end_point: &[u8],
    ) -> ScramSeen {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        read_startup(server).await;
        let mut list = Vec::new();
        for mechanism in offered {
            list.extend(cstr(mechanism));
        }
        list.push(0);
        server.write_all(&auth(10, &list)).await.unwrap();

        let (tag, body) = read_message(server).await;
        assert_eq!(tag, b'p');
        let nul = body.iter().position(|b| *b == 0).unwrap();
        let mechanism = String::from_utf8(body[..nul].to_vec()).unwrap();
        let client_first = String::from_utf8(body[nul + 5..].to_vec()).unwrap();
        // gs2-header is "<flag>,<authzid>," then the bare message.
        let mut commas = client_first.match_indices(',').map(|(i, _)| i);
        let _ = commas.next().unwrap();
        let header_end = commas.next().unwrap() + 1;
        let gs2_header = client_first[..header_end].to_owned();
        let client_first_bare = &client_first[header_end..];
        // The attribute, not the first "r=" anywhere: a random nonce may
        // itself contain "r=" (it never contains a comma).
        let client_nonce = client_first_bare
            .split(',')
            .find_map(|attribute| attribute.strip_prefix("r="))
            .unwrap()
            .to_owned();

        let salt = b"0123456789abcdef";
        let iterations = 4096_u32;
        let server_first = format!(
            "r={client_nonce}srvnonce,s={},i={iterations}",
            b64.encode(salt)
        );
        server
            .write_all(&auth(11, server_first.as_bytes()))
            .await
            .unwrap();

        let (tag, body) = read_message(server).await;
        assert_eq!(tag, b'p');
        let client_final = String::from_utf8(body).unwrap();
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
        let c = without_proof
            .strip_prefix("c=")
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let channel_binding = b64.decode(c).unwrap();
        let expected_binding = if mechanism == sasl::SCRAM_SHA_256_PLUS {
            [gs2_header.as_bytes(), end_point].concat()
        } else {
            gs2_header.as_bytes().to_vec()
        };
        if channel_binding != expected_binding {
            // As Postgres: "SCRAM channel binding check failed".
            server
                .write_all(&error_response(
                    "FATAL",
                    "28000",
                    "SCRAM channel binding check failed",
                    None,
                ))
                .await
                .unwrap();
            return ScramSeen {
                mechanism,
                gs2_header,
                channel_binding,
            };
        }

        let mut salted = [0_u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).unwrap(),
            salt,
            SCRAM_PASSWORD.as_bytes(),
            &mut salted,
        );
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(stored_key.as_ref(), auth_message.as_bytes());
        let expected_proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(b64.decode(proof).unwrap(), expected_proof, "client proof");
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        let mut reply = auth(12, format!("v={}", b64.encode(server_signature)).as_bytes());
        reply.extend(auth(0, &[]));
        reply.extend(ready());
        server.write_all(&reply).await.unwrap();
        ScramSeen {
            mechanism,
            gs2_header,
            channel_binding,
        }
    }

    fn startup_with(mode: ChannelBindingMode, tls: TlsBinding) -> Startup<'static> {
        Startup {
            channel_binding: mode,
            tls,
            ..startup(Some(SCRAM_PASSWORD))
        }
    }

    /// Runs a login against [`scram_server`]; the client's result and what
    /// the server saw.
    async fn scram_login(
        mode: ChannelBindingMode,
        tls: TlsBinding,
        offered: &'static [&'static str],
    ) -> (Result<(), ConnectError>, ScramSeen) {
        let (client, mut server) = tokio::io::duplex(4096);
        let server_task =
            tokio::spawn(async move { scram_server(&mut server, offered, b"cert-hash").await });
        let result = ReplicationConnection::handshake(Box::new(client), &startup_with(mode, tls))
            .await
            .map(|_| ());
        (result, server_task.await.unwrap())
    }

    const BOTH: &[&str] = &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];
    const PLAIN_ONLY: &[&str] = &["SCRAM-SHA-256"];

    fn tls_with(hash: Option<&[u8]>) -> TlsBinding {
        TlsBinding::Tls {
            server_end_point: hash.map(<[u8]>::to_vec),
        }
    }

    #[tokio::test]
    async fn scram_plus_binds_the_channel_when_offered_over_tls() {
        for mode in [ChannelBindingMode::Prefer, ChannelBindingMode::Require] {
            let (result, seen) = scram_login(mode, tls_with(Some(b"cert-hash")), BOTH).await;
            result.unwrap();
            assert_eq!(seen.mechanism, "SCRAM-SHA-256-PLUS", "{mode}");
            assert_eq!(seen.gs2_header, "p=tls-server-end-point,,");
            assert_eq!(seen.channel_binding, b"p=tls-server-end-point,,cert-hash");
        }
        // The server computes another hash (another certificate: a man in
        // the middle): it refuses, and so the login fails.
        let (client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move { scram_server(&mut server, BOTH, b"other-hash").await });
        let err = ReplicationConnection::handshake(
            Box::new(client),
            &startup_with(ChannelBindingMode::Prefer, tls_with(Some(b"cert-hash"))),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("channel binding check failed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn scram_without_binding_tells_the_server_why() {
        // TLS, binding possible, but the server offers no -PLUS: "y".
        let (result, seen) =
            scram_login(ChannelBindingMode::Prefer, tls_with(Some(b"h")), PLAIN_ONLY).await;
        result.unwrap();
        assert_eq!(
            (seen.mechanism.as_str(), seen.gs2_header.as_str()),
            ("SCRAM-SHA-256", "y,,")
        );
        // Disabled: "n", even when -PLUS is offered.
        let (result, seen) =
            scram_login(ChannelBindingMode::Disable, tls_with(Some(b"h")), BOTH).await;
        result.unwrap();
        assert_eq!(
            (seen.mechanism.as_str(), seen.gs2_header.as_str()),
            ("SCRAM-SHA-256", "n,,")
        );
        // No usable hash for the certificate (Ed25519): "n".
        let (result, seen) = scram_login(ChannelBindingMode::Prefer, tls_with(None), BOTH).await;
        result.unwrap();
        assert_eq!(seen.gs2_header, "n,,");
        // Plaintext: "n".
        let (result, seen) = scram_login(
            ChannelBindingMode::Prefer,
            TlsBinding::Plaintext,
            PLAIN_ONLY,
        )
        .await;
        result.unwrap();
        assert_eq!(seen.gs2_header, "n,,");
    }

    /// A fake server that sends `first` and then reads whatever comes.
    async fn refused_login(startup: Startup<'static>, first: Vec<u8>) -> (ConnectError, Vec<u8>) {
        let (client, mut server) = tokio::io::duplex(4096);
        let server_task = tokio::spawn(async move {
            read_startup(&mut server).await;
            server.write_all(&first).await.unwrap();
            let mut rest = Vec::new();
            let _ = server.read_to_end(&mut rest).await;
            rest
        });
        let err = ReplicationConnection::handshake(Box::new(client), &startup)
            .await
            .unwrap_err();
        (err, server_task.await.unwrap())
    }

    #[tokio::test]
    async fn channel_binding_require_refuses_everything_else() {
        let require = |tls| startup_with(ChannelBindingMode::Require, tls);
        let sasl = |offered: &[&str]| {
            let mut list = Vec::new();
            for mechanism in offered {
                list.extend(cstr(mechanism));
            }
            list.push(0);
            auth(10, &list)
        };
        // No -PLUS offered.
        let (err, sent) = refused_login(require(tls_with(Some(b"h"))), sasl(PLAIN_ONLY)).await;
        assert!(matches!(err, ConnectError::Auth { .. }), "{err:?}");
        assert!(
            err.to_string().contains("does not offer channel binding"),
            "{err}"
        );
        assert!(
            sent.is_empty() || sent[0] == b'X',
            "nothing but Terminate: {sent:?}"
        );
        // Not TLS.
        let (err, _) = refused_login(require(TlsBinding::Plaintext), sasl(PLAIN_ONLY)).await;
        assert!(err.to_string().contains("does not use TLS"), "{err}");
        // The certificate's hash is unknown.
        let (err, _) = refused_login(require(tls_with(None)), sasl(BOTH)).await;
        assert!(err.to_string().contains("signature algorithm"), "{err}");
        // Passwords without SCRAM: not even sent.
        for (request, what) in [(auth(3, &[]), "cleartext"), (auth(5, &[1, 2, 3, 4]), "MD5")] {
            let (err, sent) = refused_login(require(tls_with(Some(b"h"))), request).await;
            assert!(err.to_string().contains(what), "{err}");
            assert!(
                !sent.windows(2).any(|w| w == SCRAM_PASSWORD.as_bytes()),
                "the password was sent: {sent:?}"
            );
        }
        // Let in without authentication (trust, cert): not bound.
        let mut ok = auth(0, &[]);
        ok.extend(ready());
        let (err, _) = refused_login(require(tls_with(Some(b"h"))), ok).await;
        assert!(err.to_string().contains("without channel binding"), "{err}");
        // -PLUS seen over plaintext: TLS was stripped in between.
        let (err, _) = refused_login(
            startup_with(ChannelBindingMode::Prefer, TlsBinding::Plaintext),
            sasl(BOTH),
        )
        .await;
        assert!(err.to_string().contains("removed TLS"), "{err}");
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(150_018)
        );
        assert_eq!(parse_server_version("17.0"), Some(170_000));
        assert_eq!(parse_server_version("17devel"), Some(170_000));
        assert_eq!(parse_server_version("16beta2"), Some(160_000));
        assert_eq!(parse_server_version("14rc1"), Some(140_000));
        assert_eq!(parse_server_version("10.1"), Some(100_001));
        assert_eq!(parse_server_version("9.6.24"), Some(90_624));
        assert_eq!(parse_server_version("EnterpriseDB"), None);
        assert_eq!(parse_server_version(""), None);
    }
}
