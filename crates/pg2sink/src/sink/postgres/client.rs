//! The target database: one connection, the position table, table DDL, and
//! the statements that apply a batch in one transaction.
//!
//! Promises: [`Client::apply`] writes a batch's rows and the new position
//! in one transaction, after checking (under a row lock) that the stored
//! position is the one the sink expects; if it already equals the batch's
//! end, an earlier attempt committed and nothing is written again. Errors
//! are split as the server's SQLSTATE says: connection, rollback (40),
//! resource (53), operator (57) and system (58) classes are transient,
//! everything else definite with a hint.

use std::fmt::Write as _;

use serde_json::Value;

use super::config::PostgresSinkConfig;
use super::encoding::TableBatch;
use super::schema::TableShape;
use crate::model::Lsn;
use crate::pg::settings::ConnectionConfig;
use crate::pg::sql::{quote_ident, quote_literal};
use crate::sink::SinkError;

/// The last change the target applied: (`lsn`, `sequence`).
pub type Position = (Lsn, u64);

pub struct Client {
    connection: ConnectionConfig,
    client: Option<tokio_postgres::Client>,
    /// `"schema"."applied"`.
    state_table: String,
    state_schema: String,
    stream: String,
    batch_rows: usize,
}

impl Client {
    pub fn new(config: &PostgresSinkConfig) -> Result<Client, SinkError> {
        if config.url.is_empty() {
            return Err(definite("the postgres sink needs a target", "no URL given")
                .hint("set --sink.postgres.url (PG2SINK_SINK_POSTGRES_URL)"));
        }
        // The source's PG* variables must not leak into the target; only
        // the OS user stands in for a user the URL leaves out.
        let mut connection =
            ConnectionConfig::resolve(Some(config.url.expose()), &|name| match name {
                "USER" => std::env::var(name).ok(),
                _ => None,
            })
            .map_err(|e| {
                definite("--sink.postgres.url is not usable", e)
                    .hint("give a postgres:// URL or a libpq key=value string")
            })?;
        if connection.connect_timeout.is_none() {
            connection.connect_timeout = Some(config.connect_timeout);
        }
        connection.silence_timeout = config.silence_timeout;
        Ok(Client {
            connection,
            client: None,
            state_table: format!("{}.\"applied\"", quote_ident(&config.state_schema)),
            state_schema: config.state_schema.clone(),
            stream: config.stream.clone(),
            batch_rows: config.batch_rows.max(1),
        })
    }

    /// `host=... port=... dbname=... user=...` of the target.
    pub fn describe(&self) -> String {
        self.connection.describe()
    }

    async fn connected(&mut self) -> Result<&mut tokio_postgres::Client, SinkError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let client = self.connection.connect().await.map_err(|e| {
                let hint = "check --sink.postgres.url";
                // Reached, if the error is definite (refused credentials, a
                // missing database, TLS): "cannot reach" would mislead.
                if e.is_transient() {
                    let context = format!("cannot reach the target Postgres ({})", self.describe());
                    transient(context, format!("{e}\n  hint: {hint}"))
                } else {
                    let context = format!(
                        "cannot connect to the target Postgres ({})",
                        self.describe()
                    );
                    definite(context, e).hint(hint)
                }
            })?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("set above"))
    }

    /// Forgets the connection after an error, so the next call reconnects.
    pub fn reset(&mut self) {
        self.client = None;
    }

    /// Connects, creates the position table if missing, and reads the
    /// stored position. Returns it with the server's version.
    pub async fn health_check(
        &mut self,
        target_schema: Option<&str>,
    ) -> Result<(Position, String), SinkError> {
        let (state_schema, state_table, stream) = (
            self.state_schema.clone(),
            self.state_table.clone(),
            self.stream.clone(),
        );
        let client = self.connected().await?;
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(|e| classify("reading the target's version", e))?
            .get(0);
        ensure_schema(client, &state_schema).await?;
        if let Some(schema) = target_schema {
            ensure_schema(client, schema).await?;
        }
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&state_table])
            .await
            .map_err(|e| classify("looking for the position table", e))?
            .get(0);
        if !exists {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {state_table} (
                       stream text PRIMARY KEY,
                       lsn pg_lsn NOT NULL,
                       sequence bigint NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"
                ))
                .await
                .map_err(|e| classify(format!("creating the position table {state_table}"), e))?;
        }
        client
            .execute(
                &format!(
                    "INSERT INTO {state_table} (stream, lsn, sequence) VALUES ($1, '0/0', 0)
                     ON CONFLICT (stream) DO NOTHING"
                ),
                &[&stream],
            )
            .await
            .map_err(|e| classify(format!("writing the position table {state_table}"), e))?;
        let position = read_position(client, &state_table, &stream, false).await?;
        Ok((position, version))
    }

    /// Creates the table if missing and adds the columns it lacks. Returns
    /// the names of the columns the target already had.
    pub async fn ensure_table(&mut self, shape: &TableShape) -> Result<Vec<String>, SinkError> {
        let qualified = shape.qualified();
        let client = self.connected().await?;
        ensure_schema(client, &shape.target_schema).await?;
        let what = |action: &str| format!("{action} the target table {qualified}");
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .await
            .map_err(|e| classify(what("looking for"), e))?
            .get(0);
        if !exists {
            client
                .batch_execute(&shape.create_table_sql())
                .await
                .map_err(|e| classify(what("creating"), e))?;
        }
        let existing: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute
                  WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
                  ORDER BY attnum",
                &[&qualified],
            )
            .await
            .map_err(|e| classify(what("reading the columns of"), e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for column in &shape.columns {
            if !existing.contains(&column.name) {
                client
                    .batch_execute(&shape.add_column_sql(column))
                    .await
                    .map_err(|e| classify(what("adding a column to"), e))?;
                tracing::info!(table = %qualified, column = %column.name, r#type = %column.sql_type,
                    "added a column to the target table");
            }
        }
        Ok(existing)
    }

    /// Applies a batch and stores `end` as the position, in one
    /// transaction, if the target holds `expected`. `Ok(false)` when the
    /// target already holds `end` (an attempt whose answer was lost
    /// committed).
    pub async fn apply(
        &mut self,
        tables: &[(&TableShape, &TableBatch)],
        expected: Position,
        end: Position,
    ) -> Result<bool, SinkError> {
        let (state_table, stream, batch_rows) = (
            self.state_table.clone(),
            self.stream.clone(),
            self.batch_rows,
        );
        let client = self.connected().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| classify("starting a transaction on the target", e))?;
        let stored = read_position(&tx, &state_table, &stream, true).await?;
        if stored == end {
            return Ok(false);
        }
        if stored != expected {
            return Err(definite(
                format!("the target's position for stream {stream} moved under pg2sink"),
                format!(
                    "it holds {}/{} where this pg2sink last wrote {}/{}",
                    stored.0, stored.1, expected.0, expected.1
                ),
            )
            .hint("another pg2sink may be applying the same stream to this target; stop it (or give each its own --sink.postgres.state-schema)"));
        }
        for (shape, batch) in tables {
            let qualified = shape.qualified();
            if batch.truncate {
                tx.batch_execute(&format!("TRUNCATE TABLE {qualified}"))
                    .await
                    .map_err(|e| classify(format!("truncating {qualified}"), e))?;
            }
            let (partial, delete, upsert) = batch.payloads();
            // Partial rows read their base rows first, as they were before
            // this batch; deletes and upserts touch other keys.
            for (rows, sql, what) in [
                (partial, partial_sql(shape), "updating rows (TOAST kept) of"),
                (delete, delete_sql(shape), "deleting rows of"),
                (upsert, upsert_sql(shape), "upserting rows of"),
            ] {
                for chunk in rows.chunks(batch_rows) {
                    let json = Value::Array(chunk.to_vec()).to_string();
                    tx.execute(&sql, &[&json])
                        .await
                        .map_err(|e| classify(format!("{what} {qualified}"), e))?;
                }
            }
        }
        tx.execute(
            &format!(
                "UPDATE {state_table} SET lsn = $2::text::pg_lsn, sequence = $3, applied_at = now()
                  WHERE stream = $1"
            ),
            &[&stream, &end.0.to_string(), &(end.1 as i64)],
        )
        .await
        .map_err(|e| classify("storing the applied position", e))?;
        tx.commit()
            .await
            .map_err(|e| classify("committing on the target", e))?;
        Ok(true)
    }
}

async fn ensure_schema(client: &tokio_postgres::Client, schema: &str) -> Result<(), SinkError> {
    // Looked up first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the
    // database even when the schema exists.
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(|e| classify("looking for a schema on the target", e))?
        .get(0);
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(schema)
            ))
            .await
            .map_err(|e| classify(format!("creating the schema {schema} on the target"), e))?;
    }
    Ok(())
}

async fn read_position(
    client: &impl tokio_postgres::GenericClient,
    state_table: &str,
    stream: &str,
    lock: bool,
) -> Result<Position, SinkError> {
    let sql = format!(
        "SELECT lsn::text, sequence FROM {state_table} WHERE stream = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = client
        .query_opt(&sql, &[&stream])
        .await
        .map_err(|e| classify("reading the applied position", e))?
        .ok_or_else(|| {
            definite(
                format!("the position of stream {stream} is missing from {state_table}"),
                "someone deleted it while pg2sink ran",
            )
            .hint("restart pg2sink (it starts from what the source has confirmed)")
        })?;
    let lsn: String = row.get(0);
    let sequence: i64 = row.get(1);
    let lsn = lsn
        .parse::<Lsn>()
        .map_err(|e| definite("reading the applied position", e))?;
    Ok((lsn, sequence.max(0) as u64))
}

fn columns(shape: &TableShape) -> String {
    shape
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_columns(shape: &TableShape) -> String {
    shape
        .keys()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ON CONFLICT (key) DO UPDATE SET` every other column.
fn on_conflict(shape: &TableShape) -> String {
    let set: Vec<String> = shape
        .columns
        .iter()
        .filter(|c| !c.key)
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
        .collect();
    if set.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", key_columns(shape))
    } else {
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            key_columns(shape),
            set.join(", ")
        )
    }
}

/// Full rows: `jsonb_populate_recordset` turns each value back into the
/// column's type with the type's own input rules.
pub fn upsert_sql(shape: &TableShape) -> String {
    let (q, cols) = (shape.qualified(), columns(shape));
    format!(
        "INSERT INTO {q} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{q}, $1::text::jsonb) {}",
        on_conflict(shape)
    )
}

pub fn delete_sql(shape: &TableShape) -> String {
    let q = shape.qualified();
    let mut on = String::new();
    for (i, c) in shape.keys().enumerate() {
        let c = quote_ident(&c.name);
        let _ = write!(on, "{}t.{c} = d.{c}", if i > 0 { " AND " } else { "" });
    }
    format!("DELETE FROM {q} AS t USING jsonb_populate_recordset(NULL::{q}, $1::text::jsonb) AS d WHERE {on}")
}

/// Rows some of whose columns (`u`) keep the value of the target's row at
/// the base key `b`.
pub fn partial_sql(shape: &TableShape) -> String {
    let (q, cols) = (shape.qualified(), columns(shape));
    let values: Vec<String> = shape
        .columns
        .iter()
        .map(|c| {
            format!(
                "CASE WHEN p.u ? {} THEN t.{1} ELSE (p.r).{1} END",
                quote_literal(&c.name),
                quote_ident(&c.name)
            )
        })
        .collect();
    let mut on = String::new();
    for (i, c) in shape.keys().enumerate() {
        let c = quote_ident(&c.name);
        let _ = write!(on, "{}t.{c} = (p.b).{c}", if i > 0 { " AND " } else { "" });
    }
    format!(
        "INSERT INTO {q} ({cols}) SELECT {} FROM (SELECT e->'u' AS u, jsonb_populate_record(NULL::{q}, e->'r') AS r, jsonb_populate_record(NULL::{q}, e->'b') AS b FROM jsonb_array_elements($1::text::jsonb) AS e) AS p JOIN {q} AS t ON {on} {}",
        values.join(", "),
        on_conflict(shape)
    )
}

pub fn transient(
    context: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> SinkError {
    SinkError::Transient {
        context: context.into(),
        source: source.into(),
    }
}

pub fn definite(context: impl Into<String>, detail: impl std::fmt::Display) -> SinkError {
    SinkError::definite(context, detail)
}

/// A server or connection error as transient or definite, with the
/// server's message, detail and a hint saying what to do.
pub fn classify(context: impl Into<String>, e: tokio_postgres::Error) -> SinkError {
    let context = context.into();
    let Some(db) = e.as_db_error() else {
        // The connection broke (or closed): try again on a new one.
        return transient(context, e.to_string());
    };
    let code = db.code().code();
    let mut text = format!("{}: {} (SQLSTATE {code})", db.severity(), db.message());
    if let Some(detail) = db.detail() {
        let _ = write!(text, "\n  detail: {detail}");
    }
    if crate::pg::error::sqlstate_is_transient(code) {
        return transient(context, text);
    }
    let hint = match code {
        "42501" => "grant the target role what it lacks: CREATE on the database (or the schemas must exist), and CREATE and USAGE on the schemas, or ownership of existing target tables",
        "42P10" => "the target table needs a primary key (or unique index) on the source table's key columns",
        c if c.starts_with("22") || c.starts_with("23") => "a target column cannot hold the value (a column created earlier with another type?); fix the target table: nothing after this change is confirmed, so a restart applies it again",
        _ => "fix the target database; nothing after this change is confirmed, so a restart applies it again",
    };
    definite(context, text).hint(hint)
}
