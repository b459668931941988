//! A write load for tests: one numbered transaction after another, from a
//! thread of its own, each id recorded once its commit has returned, so a
//! test can check that every committed row arrived.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::TestDb;

pub struct Writer {
    done: Arc<AtomicBool>,
    committed: Arc<Mutex<Vec<i64>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Commits `sql(1)`, `sql(2)`, ... on `db`, sleeping `pause` after
    /// every `every`-th commit so the load stays steady without starving
    /// pg2sink of the machine's two cores (`Duration::ZERO`: no pause).
    pub fn start(
        db: &TestDb,
        mut sql: impl FnMut(i64) -> String + Send + 'static,
        every: i64,
        pause: Duration,
    ) -> Writer {
        let done = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (url, done, committed) = (db.url(), done.clone(), committed.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    let mut id = 0i64;
                    while !done.load(Ordering::Relaxed) {
                        id += 1;
                        c.batch_execute(&sql(id)).await.unwrap();
                        committed.lock().unwrap().push(id);
                        if !pause.is_zero() && id % every == 0 {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
        };
        Writer {
            done,
            committed,
            thread: Some(thread),
        }
    }

    /// How many transactions have committed so far.
    pub fn count(&self) -> usize {
        self.committed.lock().unwrap().len()
    }

    /// Stops the writer; returns the ids it committed, in commit order.
    pub fn stop(mut self) -> Vec<i64> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.committed.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}
