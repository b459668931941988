//! Versioned migrations of pg2sink's internal schema, embedded in the binary.
//!
//! Promises: each migration runs once, in order, inside one transaction that
//! also records it; concurrent pg2sink processes serialise on an advisory
//! lock, so two starting at once never race.

use tokio_postgres::Client;

use crate::error::{query, Error, Problem};
use crate::pg::sql::quote_ident;

/// (version, name, SQL with `{schema}` standing for the quoted schema name).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "subscriptions",
        include_str!("sql/0001_subscriptions.sql"),
    ),
    (2, "import_jobs", include_str!("sql/0002_import_jobs.sql")),
    (
        3,
        "table_overrides",
        include_str!("sql/0003_table_overrides.sql"),
    ),
];

/// A constant key for `pg_advisory_xact_lock`: "pg2sink" in ASCII.
const LOCK_KEY: i64 = 0x0070_6732_7369_6e6b;

/// Creates the schema if needed and applies pending migrations.
pub async fn run(client: &mut Client, schema: &str) -> Result<(), Error> {
    let quoted = quote_ident(schema);
    let exists = client
        .query_opt("select 1 from pg_namespace where nspname = $1", &[&schema])
        .await
        .map_err(query("looking up the internal schema"))?
        .is_some();
    let tx = client
        .transaction()
        .await
        .map_err(query("starting the migration transaction"))?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(query("taking the migration lock"))?;
    if !exists {
        tx.batch_execute(&format!("create schema if not exists {quoted}"))
            .await
            .map_err(|e| match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => Problem::new(format!(
                    "cannot create pg2sink's internal schema {schema:?}: permission denied"
                ))
                .hint(format!(
                    "grant the role CREATE on the database (GRANT CREATE ON DATABASE <db> TO <role>), or create the schema for it: CREATE SCHEMA {quoted} AUTHORIZATION <role>; or choose another with --schema"
                ))
                .into(),
                _ => query("creating the internal schema")(e),
            })?;
    }
    tx.batch_execute(&format!(
        "create table if not exists {quoted}.schema_migrations (
           version integer primary key,
           name text not null,
           applied_at timestamptz not null default now())"
    ))
    .await
    .map_err(query("creating the migrations table"))?;
    let applied: Vec<i32> = tx
        .query(
            &format!("select version from {quoted}.schema_migrations"),
            &[],
        )
        .await
        .map_err(query("reading applied migrations"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newest) = applied
        .iter()
        .max()
        .filter(|v| **v > MIGRATIONS.len() as i32)
    {
        return Err(Problem::new(format!(
            "the internal schema {schema:?} is at migration {newest}, newer than this pg2sink knows ({})",
            MIGRATIONS.len()
        ))
        .hint("run a pg2sink at least as new as the one that last ran here")
        .into());
    }
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, name, "applying migration");
        tx.batch_execute(&sql.replace("{schema}", &quoted))
            .await
            .map_err(query(format!("applying migration {version} ({name})")))?;
        tx.execute(
            &format!("insert into {quoted}.schema_migrations (version, name) values ($1, $2)"),
            &[version, name],
        )
        .await
        .map_err(query("recording a migration"))?;
    }
    tx.commit().await.map_err(query("committing migrations"))?;
    Ok(())
}
