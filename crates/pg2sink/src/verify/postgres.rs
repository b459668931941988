//! The Postgres sink's side of `verify`: a target table read in key-ordered
//! chunks (one short statement each, like the source) and rendered with the
//! same value mapping, from the target's own column types (the sink maps
//! some types: enums to text, composites to jsonb; their JSON is the same).
//!
//! Promises: reads only; holds per-column hashes, never rows.

use std::sync::Arc;

use super::TableState;
use crate::error::{Error, Problem};
use crate::import::table::{self, KeyChoice};
use crate::pg::settings::ConnectionConfig;
use crate::sink::postgres::PostgresSinkConfig;
use crate::source::types::TypeRegistry;

/// A connection to the target database and its types.
pub struct Target {
    client: tokio_postgres::Client,
    types: Arc<TypeRegistry>,
    schema: Option<String>,
}

impl Target {
    pub async fn connect(config: &PostgresSinkConfig) -> Result<Target, Error> {
        if config.url.is_empty() {
            return Err(Problem::new("verify --sink=postgres needs the target")
                .hint("set --sink.postgres.url (PG2SINK_SINK_POSTGRES_URL)")
                .into());
        }
        // As the sink does: the source's PG* variables describe the source.
        let connection = ConnectionConfig::resolve(Some(config.url.expose()), &|name| match name {
            "USER" => std::env::var(name).ok(),
            _ => None,
        })
        .map_err(|e| Problem::new(format!("--sink.postgres.url is not usable: {e}")))?;
        let client = connection.connect().await?;
        let types = TypeRegistry::new(connection);
        Ok(Target {
            client,
            types,
            schema: config.schema.clone(),
        })
    }

    /// What the target holds of source table `schema.name`, keyed by
    /// `key` (the source's key columns); `None` if the table is absent.
    pub async fn read(
        &self,
        schema: &str,
        name: &str,
        key: &[String],
        batch: usize,
    ) -> Result<Option<TableState>, Error> {
        let target_schema = self.schema.as_deref().unwrap_or(schema);
        let mut target = match table::load(&self.client, target_schema, name).await? {
            Some(KeyChoice::Key(t)) => t,
            Some(KeyChoice::KeyNotPublished(problem)) => return Err(problem.into()),
            Some(KeyChoice::NoKey(reason)) => {
                return Err(Problem::new(format!(
                    "the target table {target_schema}.{name} has no key: {reason}"
                ))
                .into())
            }
            None => return Ok(None),
        };
        self.types.resolve_table(&mut target.table).await?;
        let mut state = TableState::default();
        super::walk_table(&self.client, &target, batch, |row| {
            let key_text = super::key_text(key.iter().map(|k| row.get(k)));
            let hashes = state.hash_row(&row);
            state.rows.insert(key_text, hashes.into_boxed_slice());
        })
        .await?;
        Ok(Some(state))
    }
}
