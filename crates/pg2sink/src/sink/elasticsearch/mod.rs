//! The Elasticsearch sink (`--sink=elasticsearch`): one index per table,
//! one document per row, `_id` = the primary key.
//!
//! Promises: after `flush`, every change written so far is applied (or was
//! refused as older than what the index holds). Replays are harmless: each
//! action carries the external version (`lsn`, `sequence`), so an older
//! change never overwrites a newer one (see [`encoding`]). A `_bulk` item
//! that fails transiently (429, 5xx) is sent again with back-off; one the
//! cluster rejects stops the sink with the item's error — never dropped.
//!
//! Updates whose TOAST columns were not sent are completed from the
//! document's previous version (read with `_mget`, or taken from earlier in
//! the same batch) and indexed whole, so versioning covers them too
//! (Elasticsearch's partial `update` cannot be externally versioned).
//!
//! Only the REST API is used (`_bulk`, `_mget`, index and mapping APIs,
//! `_refresh`, `_delete_by_query`): Elasticsearch 7/8 and OpenSearch 2.

pub mod client;
pub mod config;
pub mod encoding;
pub mod mapping;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Instant;

use self::client::Client;
pub use self::config::ElasticsearchConfig;
use self::encoding::{Action, ItemOutcome};
use self::mapping::TableMapping;
use super::http::SinkStats;
use super::{table_of, Sink, SinkError};
use crate::model::{JsonRow, Modification, Schema};
use crate::retry::{Attempts, Failure};

pub struct ElasticsearchSink {
    config: ElasticsearchConfig,
    client: Client,
    /// By `schema.table` (the real names).
    tables: HashMap<String, TableMapping>,
    pending: Vec<Action>,
    unflushed: usize,
}

impl ElasticsearchSink {
    pub fn new(config: ElasticsearchConfig) -> Result<ElasticsearchSink, SinkError> {
        Ok(ElasticsearchSink {
            client: Client::new(&config)?,
            config,
            tables: HashMap::new(),
            pending: vec![],
            unflushed: 0,
        })
    }

    pub fn stats(&self) -> &SinkStats {
        &self.client.stats
    }

    /// Applies the pending actions in order: bulk runs between truncates.
    async fn apply(&mut self, actions: Vec<Action>) -> Result<(), SinkError> {
        let mut run: Vec<Action> = vec![];
        for action in actions {
            if let Action::DeleteAll { index } = &action {
                self.bulk_run(std::mem::take(&mut run)).await?;
                self.client.delete_all(index).await?;
                continue;
            }
            run.push(action);
        }
        self.bulk_run(run).await
    }

    async fn bulk_run(&mut self, mut actions: Vec<Action>) -> Result<(), SinkError> {
        if actions.is_empty() {
            return Ok(());
        }
        self.fill_unchanged(&mut actions).await?;
        for chunk in actions.chunks(self.config.bulk_actions.max(1)) {
            self.bulk_chunk(chunk).await?;
        }
        Ok(())
    }

    /// Completes updates that lack TOAST columns: from an earlier action of
    /// this batch on the same document, else from the index.
    async fn fill_unchanged(&self, actions: &mut [Action]) -> Result<(), SinkError> {
        let mut wanted = vec![];
        let mut written: std::collections::HashSet<(String, String)> = Default::default();
        for action in actions.iter() {
            match action {
                Action::Index {
                    index,
                    id,
                    unchanged,
                    previous_id,
                    ..
                } => {
                    let key = (index.clone(), previous_id.clone());
                    if !unchanged.is_empty() && !written.contains(&key) {
                        wanted.push(key);
                    }
                    written.insert((index.clone(), id.clone()));
                }
                Action::Delete { .. } | Action::DeleteAll { .. } => {}
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let stored = self.client.mget(&wanted).await?;
        let mut latest: HashMap<(String, String), JsonRow> = HashMap::new();
        for action in actions.iter_mut() {
            if let Action::Index {
                index,
                id,
                doc,
                unchanged,
                previous_id,
                ..
            } = action
            {
                if !unchanged.is_empty() {
                    let key = (index.clone(), previous_id.clone());
                    let previous = latest
                        .get(&key)
                        .or_else(|| stored.get(&key).map(|f| &f.source));
                    if previous.is_none() {
                        tracing::warn!(index = %index, id = %id, columns = ?unchanged,
                            "an update left TOAST columns unchanged but the document has no previous version; they stay absent");
                    }
                    encoding::fill_unchanged(doc, unchanged, previous);
                }
                latest.insert((index.clone(), id.clone()), doc.to_json().into_owned());
            }
        }
        Ok(())
    }

    /// Sends one `_bulk` request; items that fail transiently are sent
    /// again (alone) with back-off until the retry policy gives up.
    async fn bulk_chunk(&self, chunk: &[Action]) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut todo: Vec<&Action> = chunk.iter().collect();
        let stats = &self.client.stats;
        let mut attempts = Attempts::new(&self.config.retry);
        loop {
            let sent: Result<(), Failure<SinkError>> = async {
                let mut body = Vec::new();
                for action in &todo {
                    encoding::append_bulk(&mut body, action);
                }
                let reply = self.client.bulk(body).await.map_err(Failure::Definite)?;
                let items = reply.body["items"].as_array().cloned().unwrap_or_default();
                if items.len() != todo.len() {
                    return Err(Failure::Definite(SinkError::Transient {
                        context: "a _bulk answer".into(),
                        source: format!("{} items for {} actions", items.len(), todo.len())
                            .into(),
                    }));
                }
                let mut again = vec![];
                let mut last_error = String::new();
                for (action, item) in todo.iter().zip(&items) {
                    match encoding::item_outcome(item) {
                        ItemOutcome::Done => SinkStats::add(&stats.rows, 1),
                        ItemOutcome::Stale => SinkStats::add(&stats.stale, 1),
                        ItemOutcome::Retry(e) => {
                            again.push(*action);
                            last_error = e;
                        }
                        ItemOutcome::Rejected(e) => {
                            SinkStats::add(&stats.errors, 1);
                            return Err(Failure::Definite(SinkError::definite("Elasticsearch rejected a document", e).hint("fix the index (mapping) or the data; nothing after this change is confirmed, so a restart sends it again")));
                        }
                    }
                }
                if again.is_empty() {
                    return Ok(());
                }
                // Only the items that failed transiently are sent again.
                SinkStats::add(&stats.errors, again.len() as u64);
                todo = again;
                Err(Failure::Transient(last_error))
            }
            .await;
            let Err(failure) = sent else {
                stats.batch("elasticsearch", chunk.len() as u64, started.elapsed());
                return Ok(());
            };
            let verdict = failure.verdict();
            match attempts.failed("_bulk items", failure, verdict).await {
                Ok(()) => SinkStats::add(&stats.retries, 1),
                Err(stopped) => {
                    return Err(match stopped.into_inner() {
                        Failure::Definite(e) => e,
                        Failure::Transient(last_error) => SinkError::Transient {
                            context: format!("{} _bulk items still failing", todo.len()),
                            source: last_error.into(),
                        },
                    })
                }
            }
        }
    }
}

impl Sink for ElasticsearchSink {
    fn name(&self) -> &'static str {
        "elasticsearch"
    }

    async fn health_check(&mut self) -> Result<(), SinkError> {
        let version = self.client.health_check().await?;
        tracing::info!(%version, "elasticsearch sink ready");
        Ok(())
    }

    async fn write_schema(&mut self, schema: &Schema) -> Result<(), SinkError> {
        let table = TableMapping::from_table(&self.config.index_prefix, &schema.table);
        let qualified = schema.table.qualified_name();
        if self
            .tables
            .get(&qualified)
            .is_some_and(|t| t.properties == table.properties)
        {
            return Ok(());
        }
        let changed = self
            .client
            .ensure_index(&table.index, &table.properties)
            .await?;
        if !changed.is_empty() {
            tracing::warn!(index = %table.index, fields = ?changed,
                "columns changed type; the index keeps their old mapping (reindex to change it)");
        }
        self.tables.insert(qualified, table);
        Ok(())
    }

    async fn write_modification(&mut self, m: &Modification) -> Result<(), SinkError> {
        let table = table_of(&self.tables, m)?;
        for action in encoding::actions(table, m)? {
            self.unflushed += action.size();
            self.pending.push(action);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let actions = std::mem::take(&mut self.pending);
        let result = self.apply(actions).await;
        // On failure nothing is confirmed; the driver stops and a restart
        // sends everything again.
        self.unflushed = 0;
        result
    }

    fn unflushed_bytes(&self) -> usize {
        self.unflushed
    }
}
