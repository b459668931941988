-- What pg2sink manages on this database: one row per publication it owns,
-- with the slot it streams from. `status` and `teardown` read this.
create table {schema}.subscriptions (
  publication text primary key,
  slot text not null,
  created_at timestamptz not null default now()
);
