//! The tables an operator can act on, and the actions: add, stop, resync.
//! Shared by the API (and so the web page).
//!
//! Promises: every action is recorded in pg2sink's schema before it takes
//! effect, so it outlasts a restart; an action on a table that does not
//! exist, or that cannot be captured, is refused with the reason.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{query, Error};
use crate::import::jobs::{JobStatus, Jobs};
use crate::ops::overrides::{self, Overrides};
use crate::pg::sql::quote_ident;
use crate::source::subscription::{Candidate, SubscriptionManager, SubscriptionOptions};

/// What pg2sink is set to capture and where its state lives.
#[derive(Clone, Debug)]
pub struct Scope {
    pub schema: String,
    pub publication: String,
    /// The subscription manager's options; `None` when it is disabled.
    pub manager: Option<SubscriptionOptions>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    /// The planner's estimate (`pg_class.reltuples`); 0 before the first
    /// ANALYZE or VACUUM.
    pub approximate_rows: i64,
    pub captured: bool,
    /// Why it is not captured; `null` when it is.
    pub reason: Option<String>,
    pub import: Option<ImportInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImportInfo {
    #[serde(flatten)]
    pub job: JobStatus,
    /// 0 to 1; 1 once complete.
    pub progress: f64,
}

impl ImportInfo {
    pub fn new(job: JobStatus) -> ImportInfo {
        let progress = if job.completed_at.is_some() {
            1.0
        } else {
            match job.rows_estimated {
                Some(e) if e > 0 => (job.rows_processed as f64 / e as f64).min(0.99),
                _ => 0.0,
            }
        };
        ImportInfo { job, progress }
    }
}

/// A refused action, with the HTTP status it maps to.
#[derive(Debug)]
pub enum ActionError {
    /// The request itself is malformed.
    BadRequest(String),
    NotFound(String),
    /// The table is in a state that does not allow this.
    Conflict(String),
    Failed(Error),
}

impl From<Error> for ActionError {
    fn from(e: Error) -> Self {
        ActionError::Failed(e)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ActionResult {
    pub table: String,
    pub captured: bool,
    pub message: String,
}

impl Scope {
    fn jobs(&self) -> Jobs {
        Jobs::new(&self.schema, &self.publication)
    }

    /// Every persistent base table of the database outside the system
    /// schemas and pg2sink's own, with its capture and import state.
    pub async fn tables(&self, client: &Client) -> Result<Vec<TableInfo>, Error> {
        let rows = client
            .query(
                "select n.nspname::text, c.relname::text, greatest(c.reltuples, 0)::bigint,
                        exists (select 1 from pg_publication_tables p
                                 where p.pubname = $1 and p.schemaname = n.nspname and p.tablename = c.relname)
                   from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where c.relkind in ('r', 'p') and c.relpersistence = 'p' and not c.relispartition
                    and n.nspname not in ('pg_catalog', 'information_schema')
                    and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
                    and n.nspname <> $2
                  order by 1, 2",
                &[&self.publication, &self.schema],
            )
            .await
            .map_err(query("listing tables"))?;
        let overrides = overrides::load(client, &self.schema, &self.publication).await?;
        let candidates = match &self.manager {
            Some(options) => {
                SubscriptionManager::new(options.clone())
                    .candidates(client)
                    .await?
            }
            None => vec![],
        };
        let jobs = self.jobs().status(client).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let (schema, name): (String, String) = (r.get(0), r.get(1));
                let qualified = format!("{schema}.{name}");
                let captured: bool = r.get(3);
                let reason =
                    (!captured).then(|| self.reason(&schema, &qualified, &overrides, &candidates));
                let import = jobs
                    .iter()
                    .find(|j| j.table == qualified)
                    .cloned()
                    .map(ImportInfo::new);
                TableInfo {
                    schema,
                    name,
                    approximate_rows: r.get(2),
                    captured,
                    reason,
                    import,
                }
            })
            .collect())
    }

    /// Why a table outside the publication is not in it.
    fn reason(
        &self,
        schema: &str,
        qualified: &str,
        overrides: &Overrides,
        candidates: &[Candidate],
    ) -> String {
        if overrides.is_stopped(qualified) {
            return "stopped through the API".into();
        }
        let Some(options) = &self.manager else {
            return "the subscription manager is off (--subscription-manager.enabled=false) and the table is not in the publication".into();
        };
        if options.exclude.iter().any(|t| t == qualified) {
            return "excluded by --subscription-manager.exclude".into();
        }
        if let Some(c) = candidates
            .iter()
            .find(|c| c.schema == schema && format!("{}.{}", c.schema, c.name) == qualified)
        {
            return match &c.skip_reason {
                Some(reason) => format!(
                    "{reason}: its UPDATEs and DELETEs would fail once published; add a primary key or set REPLICA IDENTITY FULL"
                ),
                None => "not added yet: the subscription manager adds it at its next pass".into(),
            };
        }
        if !options.include.is_empty() {
            return "not listed in --subscription-manager.include".into();
        }
        format!("schema {schema:?} is not watched (--subscription-manager.schema)")
    }

    async fn find(
        &self,
        client: &Client,
        schema: &str,
        name: &str,
    ) -> Result<TableInfo, ActionError> {
        check_identifier(schema)?;
        check_identifier(name)?;
        self.tables(client)
            .await?
            .into_iter()
            .find(|t| t.schema == schema && t.name == name)
            .ok_or_else(|| {
                ActionError::NotFound(format!(
                    "no table {schema}.{name} (only persistent base tables outside pg2sink's schema can be captured)"
                ))
            })
    }

    /// Captures a table: records the choice, puts it in the publication
    /// and creates its import job.
    pub async fn add(
        &self,
        client: &Client,
        schema: &str,
        name: &str,
    ) -> Result<ActionResult, ActionError> {
        let table = self.find(client, schema, name).await?;
        let qualified = format!("{schema}.{name}");
        overrides::set(
            client,
            &self.schema,
            &self.publication,
            (schema, name),
            true,
        )
        .await?;
        let outcome = match &self.manager {
            Some(options) => {
                let report = SubscriptionManager::new(options.clone())
                    .sync(client)
                    .await?;
                if report.skipped.contains(&qualified) {
                    let reason = self
                        .find(client, schema, name)
                        .await?
                        .reason
                        .unwrap_or_default();
                    Err(reason)
                } else {
                    Ok(())
                }
            }
            None if table.captured => Ok(()),
            None => client
                .batch_execute(&format!(
                    "alter publication {} add table {}.{}",
                    quote_ident(&self.publication),
                    quote_ident(schema),
                    quote_ident(name)
                ))
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => db.message().to_string(),
                    None => e.to_string(),
                }),
        };
        if let Err(reason) = outcome {
            overrides::clear(client, &self.schema, &self.publication, (schema, name)).await?;
            return Err(ActionError::Conflict(format!(
                "{qualified} cannot be captured: {reason}"
            )));
        }
        self.jobs().create_missing(client).await?;
        tracing::info!(table = %qualified, "table added through the API");
        Ok(ActionResult {
            table: qualified,
            captured: true,
            message: if table.captured {
                "already captured".into()
            } else {
                "captured; its existing rows are imported".into()
            },
        })
    }

    /// Stops capturing a table: records the choice, takes it out of the
    /// publication and ends its import (adding it again starts afresh).
    pub async fn stop(
        &self,
        client: &Client,
        schema: &str,
        name: &str,
    ) -> Result<ActionResult, ActionError> {
        let table = self.find(client, schema, name).await?;
        let qualified = format!("{schema}.{name}");
        overrides::set(
            client,
            &self.schema,
            &self.publication,
            (schema, name),
            false,
        )
        .await?;
        match &self.manager {
            Some(options) => {
                SubscriptionManager::new(options.clone())
                    .sync(client)
                    .await?;
            }
            None if table.captured => {
                client
                    .batch_execute(&format!(
                        "alter publication {} drop table {}.{}",
                        quote_ident(&self.publication),
                        quote_ident(schema),
                        quote_ident(name)
                    ))
                    .await
                    .map_err(query("removing a table from the publication"))?;
            }
            None => {}
        }
        self.jobs().resync(client, schema, name).await?;
        tracing::info!(table = %qualified, "table stopped through the API");
        Ok(ActionResult {
            table: qualified,
            captured: false,
            message: if table.captured {
                "no longer captured".into()
            } else {
                "was not captured; it stays out".into()
            },
        })
    }

    /// Starts a captured table's import over.
    pub async fn resync(
        &self,
        client: &Client,
        schema: &str,
        name: &str,
    ) -> Result<ActionResult, ActionError> {
        let table = self.find(client, schema, name).await?;
        let qualified = format!("{schema}.{name}");
        if !table.captured {
            return Err(ActionError::Conflict(format!(
                "{qualified} is not captured ({}); add it first",
                table.reason.unwrap_or_default()
            )));
        }
        self.jobs().resync(client, schema, name).await?;
        self.jobs().create_missing(client).await?;
        tracing::info!(table = %qualified, "import restarted through the API");
        Ok(ActionResult {
            table: qualified,
            captured: true,
            message: "import started over".into(),
        })
    }
}

/// Postgres names are 1 to 63 bytes.
fn check_identifier(name: &str) -> Result<(), ActionError> {
    if name.is_empty() || name.len() > 63 {
        return Err(ActionError::BadRequest(format!(
            "{name:?} is not a table or schema name: names are 1 to 63 bytes"
        )));
    }
    Ok(())
}
