//! Sockets to Postgres, for both kinds of connection. Promises: every TCP
//! socket has keepalives and `TCP_USER_TIMEOUT` as configured (libpq's
//! `keepalives*` and `tcp_user_timeout` parameters, with defaults that find
//! a dead peer in about a minute instead of the kernel's two hours), and a
//! query connection that sent a request and hears nothing back for its
//! silence bound fails with `TimedOut` instead of waiting for ever.
//!
//! The kernel's keepalives only help when the peer's kernel is gone; a
//! middlebox that keeps the TCP session alive but passes nothing (a stuck
//! proxy, a half-dead load balancer) is caught only by the silence bound.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, Sleep};

/// libpq's TCP settings (`keepalives`, `keepalives_idle`,
/// `keepalives_interval`, `keepalives_count`, `tcp_user_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSettings {
    /// `keepalives=0` turns them off.
    pub keepalives: bool,
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
    /// How long sent data may stay unacknowledged; `None`: the kernel's default.
    pub user_timeout: Option<Duration>,
}

impl Default for TcpSettings {
    /// Unlike libpq (which leaves the kernel's two-hour idle time), a dead
    /// peer is noticed in about a minute: pg2sink holds a replication slot,
    /// and every minute it is stuck the server keeps WAL for it.
    fn default() -> Self {
        TcpSettings {
            keepalives: true,
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
            user_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl TcpSettings {
    /// Applies the settings to a connected socket.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let socket = SockRef::from(stream);
        socket.set_keepalive(self.keepalives)?;
        if self.keepalives {
            let keepalive = TcpKeepalive::new()
                .with_time(self.idle)
                .with_interval(self.interval)
                .with_retries(self.count);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        if let Some(limit) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(limit))?;
        }
        Ok(())
    }
}

/// A connected socket: TCP or Unix.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Connects to `addr` (anything `TcpStream::connect` takes) with `tcp`'s settings.
    pub async fn tcp<A: tokio::net::ToSocketAddrs>(
        addr: A,
        tcp: &TcpSettings,
    ) -> io::Result<Socket> {
        let stream = TcpStream::connect(addr).await?;
        tcp.apply(&stream)?;
        Ok(Socket::Tcp(stream))
    }

    /// Connects to the Unix socket at `path`.
    pub async fn unix(path: &std::path::Path) -> io::Result<Socket> {
        Ok(Socket::Unix(UnixStream::connect(path).await?))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A stream that fails reads with `TimedOut` once it has written something
/// and then, since its last write, read nothing for `limit`. An idle connection (nothing sent
/// since the last answer) is never timed out, so pooled connections can
/// wait between queries as long as they like.
pub struct Silence<S> {
    inner: S,
    limit: Option<Duration>,
    /// Set by each write, cleared by any answer: when the wait began.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Silence<S> {
    /// `limit` `None` never times out.
    pub fn new(inner: S, limit: Option<Duration>) -> Self {
        Silence {
            inner,
            limit,
            waiting_since: None,
            timer: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Silence<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.waiting_since = None;
                    this.timer = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let (Some(limit), Some(since)) = (this.limit, this.waiting_since) else {
                    return Poll::Pending;
                };
                let deadline = since + limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server sent nothing for {} after a request (silence timeout): the connection is taken for dead",
                            humantime::format_duration(limit)
                        ),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Silence<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        // Silence counts from the last write: a long upload (COPY FROM
        // STDIN) keeps the bound from firing while it is still sending.
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.waiting_since = Some(Instant::now());
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silence_after_a_request_times_out_and_idleness_does_not() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut guarded = Silence::new(client, Some(Duration::from_secs(5)));
        let mut buf = [0u8; 8];
        // Idle: nothing sent, so a long wait for data is fine.
        let idle = tokio::time::timeout(Duration::from_secs(60), guarded.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle read must simply wait");
        // A request answered in time.
        guarded.write_all(b"ping").await.unwrap();
        server.write_all(b"pong").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 4);
        // A request never answered.
        guarded.write_all(b"ping").await.unwrap();
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("5s"), "{error}");
    }

    #[tokio::test]
    async fn tcp_settings_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = TcpSettings {
            keepalives: true,
            idle: Duration::from_secs(17),
            interval: Duration::from_secs(4),
            count: 5,
            user_timeout: Some(Duration::from_millis(12_345)),
        };
        let Socket::Tcp(stream) = Socket::tcp(addr, &settings).await.unwrap() else {
            unreachable!()
        };
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(17)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(4)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 5);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(12_345))
        );
        assert!(stream.nodelay().unwrap());
    }
}
