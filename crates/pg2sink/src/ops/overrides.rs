//! Tables an operator added or stopped through the API, kept in pg2sink's
//! schema (`table_overrides`) so they outlast restarts. The subscription
//! manager reads them on every pass: an added table is captured even if the
//! flags do not watch it, a stopped one is kept out of the publication.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::{query, Error};
use crate::pg::sql::quote_ident;

/// The overrides of one publication, as `schema.table` names.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub added: Vec<String>,
    pub stopped: Vec<String>,
}

impl Overrides {
    pub fn is_added(&self, qualified: &str) -> bool {
        self.added.iter().any(|t| t == qualified)
    }

    pub fn is_stopped(&self, qualified: &str) -> bool {
        self.stopped.iter().any(|t| t == qualified)
    }
}

/// Reads the overrides; none before pg2sink's schema has them.
pub async fn load(client: &Client, schema: &str, publication: &str) -> Result<Overrides, Error> {
    let sql = format!(
        "select table_schema || '.' || table_name, capture from {}.table_overrides where publication = $1",
        quote_ident(schema)
    );
    let rows = match client.query(&sql, &[&publication]).await {
        Ok(rows) => rows,
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            return Ok(Overrides::default())
        }
        Err(e) => return Err(query("reading table overrides")(e)),
    };
    let mut out = Overrides::default();
    for row in rows {
        let (table, capture): (String, bool) = (row.get(0), row.get(1));
        if capture {
            out.added.push(table);
        } else {
            out.stopped.push(table);
        }
    }
    Ok(out)
}

/// Records that a table is to be captured (`true`) or not (`false`).
pub async fn set(
    client: &Client,
    schema: &str,
    publication: &str,
    table: (&str, &str),
    capture: bool,
) -> Result<(), Error> {
    let sql = format!(
        "insert into {}.table_overrides (publication, table_schema, table_name, capture)
         values ($1, $2, $3, $4)
         on conflict (publication, table_schema, table_name)
         do update set capture = excluded.capture, updated_at = now()",
        quote_ident(schema)
    );
    client
        .execute(&sql, &[&publication, &table.0, &table.1, &capture])
        .await
        .map_err(query("recording a table override"))?;
    Ok(())
}

/// Forgets a table's override (the flags decide again).
pub async fn clear(
    client: &Client,
    schema: &str,
    publication: &str,
    table: (&str, &str),
) -> Result<(), Error> {
    let sql = format!(
        "delete from {}.table_overrides where publication = $1 and table_schema = $2 and table_name = $3",
        quote_ident(schema)
    );
    client
        .execute(&sql, &[&publication, &table.0, &table.1])
        .await
        .map_err(query("clearing a table override"))?;
    Ok(())
}
