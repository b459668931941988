//! Import jobs, stored in pg2sink's schema: one live job per captured table
//! per publication, claimed by workers with a lease.
//!
//! Promises: every statement is its own short transaction (a claim is one
//! `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)`), so an
//! import never holds a transaction open on the source; a job's cursor only
//! moves forward; an expired lease makes a job claimable again, so a crashed
//! worker's job resumes from its cursor.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::{query, Error};
use crate::pg::sql::quote_ident;

#[derive(Clone, Debug)]
pub struct Job {
    pub id: i64,
    pub table_schema: String,
    pub table_name: String,
    /// The last key imported, as text values; `None` before the first chunk.
    pub cursor: Option<Vec<String>>,
    pub rows_processed: i64,
}

impl Job {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.table_schema, self.table_name)
    }
}

/// The job store of one publication.
#[derive(Clone, Debug)]
pub struct Jobs {
    table: String,
    publication: String,
}

/// A job's state, for `import status` and the API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobStatus {
    pub id: i64,
    pub table: String,
    pub state: String,
    pub rows_processed: i64,
    pub rows_estimated: Option<i64>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub last_error: Option<String>,
    pub error_count: i32,
}

impl Jobs {
    pub fn new(schema: &str, publication: &str) -> Jobs {
        Jobs {
            table: format!("{}.import_jobs", quote_ident(schema)),
            publication: publication.to_string(),
        }
    }

    /// Creates a job for every table of the publication that has no live one:
    /// the tables as pgoutput publishes them (a partitioned table's leaves,
    /// or its root with `publish_via_partition_root`; PostgreSQL 14 may
    /// list a leaf twice).
    pub async fn create_missing(&self, client: &Client) -> Result<u64, Error> {
        let sql = format!(
            "insert into {t} (publication, table_schema, table_name)
             select distinct $1::text, p.schemaname, p.tablename from pg_publication_tables p
              where p.pubname = $1::text
                and not exists (select 1 from {t} j where j.publication = $1::text and j.expired_at is null
                                   and j.table_schema = p.schemaname and j.table_name = p.tablename)
             on conflict do nothing",
            t = self.table
        );
        let created = client
            .execute(&sql, &[&self.publication])
            .await
            .map_err(query("creating import jobs"))?;
        if created > 0 {
            tracing::info!(jobs = created, "import jobs created");
        }
        Ok(created)
    }

    /// Claims the oldest claimable job, leasing it to `owner`. A job whose
    /// lease `owner` itself holds is claimable: the worker lost its
    /// connection mid-job and no one else can be working on it.
    pub async fn claim(
        &self,
        client: &Client,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Job>, Error> {
        let sql = format!(
            "update {t} set owner = $2, lease_until = now() + make_interval(secs => $3),
                    started_at = coalesce(started_at, now()), updated_at = now()
              where id = (select id from {t}
                           where publication = $1 and completed_at is null and expired_at is null
                             and skipped_reason is null
                             and (lease_until is null or lease_until < now() or owner = $2)
                             and (retry_after is null or retry_after <= now())
                           order by id for update skip locked limit 1)
              returning id, table_schema, table_name, cursor, rows_processed",
            t = self.table
        );
        let row = client
            .query_opt(&sql, &[&self.publication, &owner, &lease.as_secs_f64()])
            .await
            .map_err(query("claiming an import job"))?;
        Ok(row.map(|r| {
            let cursor: Option<serde_json::Value> = r.get(3);
            Job {
                id: r.get(0),
                table_schema: r.get(1),
                table_name: r.get(2),
                cursor: cursor.and_then(|c| serde_json::from_value(c).ok()),
                rows_processed: r.get(4),
            }
        }))
    }

    /// Records the key columns and the row estimate when a job starts;
    /// returns the estimate (from the planner's statistics).
    pub async fn describe(
        &self,
        client: &Client,
        job: &Job,
        key: &[String],
    ) -> Result<Option<i64>, Error> {
        let sql = format!(
            "update {t} set key_columns = $2,
                    rows_estimated = (select greatest(c.reltuples, 0)::bigint from pg_class c
                                       join pg_namespace n on n.oid = c.relnamespace
                                      where n.nspname = $3 and c.relname = $4)
              where id = $1 returning rows_estimated",
            t = self.table
        );
        let row = client
            .query_opt(&sql, &[&job.id, &key, &job.table_schema, &job.table_name])
            .await
            .map_err(query("describing an import job"))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Moves the cursor past a chunk the sink has made durable, renewing
    /// the lease; `done` completes the job.
    pub async fn advance(
        &self,
        client: &Client,
        job: &Job,
        cursor: &[String],
        rows: i64,
        done: bool,
        lease: Duration,
    ) -> Result<(), Error> {
        let sql = format!(
            "update {t} set cursor = $2, rows_processed = rows_processed + $3,
                    completed_at = case when $4 then now() end,
                    lease_until = now() + make_interval(secs => $5), updated_at = now(),
                    error_count = 0, last_error = null, retry_after = null
              where id = $1 and expired_at is null",
            t = self.table
        );
        let cursor = serde_json::to_value(cursor).unwrap_or_default();
        client
            .execute(
                &sql,
                &[&job.id, &cursor, &rows, &done, &lease.as_secs_f64()],
            )
            .await
            .map_err(query("advancing an import job"))?;
        Ok(())
    }

    /// Completes a job whose last chunk came back short or empty.
    pub async fn complete(&self, client: &Client, job: &Job) -> Result<(), Error> {
        let sql = format!(
            "update {t} set completed_at = now(), updated_at = now() where id = $1",
            t = self.table
        );
        client
            .execute(&sql, &[&job.id])
            .await
            .map_err(query("completing an import job"))?;
        Ok(())
    }

    /// Marks a table that cannot be imported; it is not retried.
    pub async fn skip(&self, client: &Client, job: &Job, reason: &str) -> Result<(), Error> {
        let sql = format!(
            "update {t} set skipped_reason = $2, owner = null, lease_until = null, updated_at = now() where id = $1",
            t = self.table
        );
        client
            .execute(&sql, &[&job.id, &reason])
            .await
            .map_err(query("marking an import job skipped"))?;
        Ok(())
    }

    /// Records a failure and releases the job until its back-off passes.
    pub async fn fail(&self, client: &Client, job: &Job, error: &str) -> Result<(), Error> {
        let sql = format!(
            "update {t} set last_error = $2, last_error_at = now(), error_count = error_count + 1,
                    retry_after = now() + make_interval(secs => least(300, power(2, error_count)::int)),
                    owner = null, lease_until = null, updated_at = now()
              where id = $1",
            t = self.table
        );
        client
            .execute(&sql, &[&job.id, &error])
            .await
            .map_err(query("recording an import failure"))?;
        Ok(())
    }

    /// Frees every claimed job of the publication (their owner is known to
    /// be gone: the HA lock's new holder calls this). Returns how many.
    pub async fn release_all(&self, client: &Client) -> Result<u64, Error> {
        let sql = format!(
            "update {} set owner = null, lease_until = null where publication = $1 and owner is not null",
            self.table
        );
        client
            .execute(&sql, &[&self.publication])
            .await
            .map_err(query("releasing the previous active's import jobs"))
    }

    /// Gives a job back (on shutdown) so another worker can take it at once.
    pub async fn release(&self, client: &Client, job: &Job) -> Result<(), Error> {
        let sql = format!(
            "update {t} set owner = null, lease_until = null where id = $1",
            t = self.table
        );
        client
            .execute(&sql, &[&job.id])
            .await
            .map_err(query("releasing an import job"))?;
        Ok(())
    }

    /// Starts a table's import over: expires its live job (a new one is
    /// created by `create_missing`). Returns whether a job was expired.
    pub async fn resync(&self, client: &Client, schema: &str, name: &str) -> Result<bool, Error> {
        let sql = format!(
            "update {t} set expired_at = now(), updated_at = now()
              where publication = $1 and table_schema = $2 and table_name = $3 and expired_at is null",
            t = self.table
        );
        let n = client
            .execute(&sql, &[&self.publication, &schema, &name])
            .await
            .map_err(query("expiring an import job"))?;
        Ok(n > 0)
    }

    /// Every live job, for status displays.
    pub async fn status(&self, client: &Client) -> Result<Vec<JobStatus>, Error> {
        let sql = format!(
            "select id, table_schema || '.' || table_name,
                    case when skipped_reason is not null then 'skipped: ' || skipped_reason
                         when completed_at is not null then 'completed'
                         when retry_after > now() then 'waiting to retry'
                         when lease_until > now() then 'running'
                         else 'pending' end,
                    rows_processed, rows_estimated, started_at::text, completed_at::text,
                    last_error, error_count
               from {t} where publication = $1 and expired_at is null order by table_schema, table_name",
            t = self.table
        );
        let rows = client
            .query(&sql, &[&self.publication])
            .await
            .map_err(query("reading import jobs"))?;
        Ok(rows
            .iter()
            .map(|r| JobStatus {
                id: r.get(0),
                table: r.get(1),
                state: r.get(2),
                rows_processed: r.get(3),
                rows_estimated: r.get(4),
                started_at: r.get(5),
                completed_at: r.get(6),
                last_error: r.get(7),
                error_count: r.get(8),
            })
            .collect())
    }
}
