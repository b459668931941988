-- One import job per captured table per publication. A job walks its table
-- in key order; `cursor` is the last key imported (text values, one per key
-- column). Workers claim a job with a lease (owner, lease_until) taken in a
-- short FOR UPDATE SKIP LOCKED transaction, so no transaction stays open
-- while a table is imported. Resync expires the job; a new one replaces it.
create table {schema}.import_jobs (
  id bigserial primary key,
  publication text not null,
  table_schema text not null,
  table_name text not null,
  key_columns text[],
  cursor jsonb,
  rows_processed bigint not null default 0,
  rows_estimated bigint,
  owner text,
  lease_until timestamptz,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  updated_at timestamptz not null default now(),
  completed_at timestamptz,
  expired_at timestamptz,
  skipped_reason text,
  last_error text,
  error_count integer not null default 0,
  last_error_at timestamptz,
  retry_after timestamptz
);

create unique index import_jobs_one_live_job_per_table
  on {schema}.import_jobs (publication, table_schema, table_name)
  where expired_at is null;
