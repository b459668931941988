//! A TCP proxy between pg2sink and Postgres that can cut every connection
//! (both ends see it closed) or blackhole chosen ones (nothing passes,
//! nothing is closed, as a firewall that dropped its state), and refuse new
//! connections (the host is gone).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::TestDb;

/// A TCP proxy whose existing connections can be blackholed: from then on
/// nothing is passed either way and nothing is closed.
pub struct BlackholeProxy {
    pub port: u16,
    /// Upstream-side local ports (Postgres's `client_port`) to blackhole.
    silenced: watch::Sender<HashSet<u16>>,
    /// The upstream-side local port of every connection, in accept order.
    opened: Arc<Mutex<Vec<u16>>>,
    /// Each increment closes every connection open at that moment.
    cut: watch::Sender<u64>,
    /// When set, new connections are closed at once (the host is gone).
    refusing: Arc<std::sync::atomic::AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl BlackholeProxy {
    pub fn start(upstream: u16) -> BlackholeProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (silenced, silence) = watch::channel(HashSet::new());
        let (cut, cuts) = watch::channel(0u64);
        let opened = Arc::new(Mutex::new(Vec::new()));
        let opened_by_task = opened.clone();
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refusing_by_task = refusing.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if refusing_by_task.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let local = server.local_addr().unwrap().port();
                opened_by_task.lock().unwrap().push(local);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                // Only cuts after this connection opened end it.
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(pass(
                    client_read,
                    server_write,
                    local,
                    silence.clone(),
                    cuts.clone(),
                ));
                tokio::spawn(pass(
                    server_read,
                    client_write,
                    local,
                    silence.clone(),
                    cuts,
                ));
            }
        });
        BlackholeProxy {
            port,
            silenced,
            opened,
            cut,
            refusing,
            _runtime: runtime,
        }
    }

    /// Closes every connection open now (both ends see it closed).
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// The Postgres-side port of every connection opened so far.
    pub fn opened(&self) -> Vec<u16> {
        self.opened.lock().unwrap().clone()
    }

    /// From now on, new connections are closed at once.
    pub fn refuse_new(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Blackholes the connections whose Postgres-side port is in `ports`.
    pub fn blackhole(&self, ports: &[u16]) {
        self.silenced.send_modify(|set| set.extend(ports));
    }

    /// `url` with its port replaced by the proxy's.
    pub fn url(&self, db: &TestDb) -> String {
        let proxied = db.url().replace(
            &format!(":{}/", db.server().port()),
            &format!(":{}/", self.port),
        );
        assert_ne!(proxied, db.url());
        proxied
    }
}

/// Copies one direction until the connection is cut (then returns,
/// closing it) or blackholed; then holds both
/// halves open, reading and passing nothing, until the proxy is dropped.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    port: u16,
    mut silence: watch::Receiver<HashSet<u16>>,
    mut cuts: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if silence.borrow_and_update().contains(&port) {
            break;
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if silence.borrow().contains(&port) {
                        break;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = silence.changed() => {}
            // Dropping both halves is the cut.
            _ = cuts.changed() => return,
        }
    }
    // Silent: keep the sockets, pass nothing.
    let _hold = (from, to);
    std::future::pending::<()>().await;
}
