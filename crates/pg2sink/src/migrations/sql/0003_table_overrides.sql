-- Tables an operator added or stopped through the API, per publication.
-- The subscription manager honours them over its flags: `capture = true`
-- captures a table outside the watched schemas (or not included),
-- `capture = false` keeps a table out of the publication.
create table {schema}.table_overrides (
  publication text not null,
  table_schema text not null,
  table_name text not null,
  capture boolean not null,
  updated_at timestamptz not null default now(),
  primary key (publication, table_schema, table_name)
);
