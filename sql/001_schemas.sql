-- 001_schemas.sql: schemas and privileges of the pipeline database.
--
-- Applied in file order by `make up` (stack/init.py) as the cluster superuser, with psql
-- variables writer_role, bi_role and pipeline_schema (iot). Every statement is idempotent.
--
--   iot    the pipeline's own tables (curated readings, health, sink progress, aggregates);
--          owned and written by the writer role; invisible to the BI role.
--   marts  views and tables the dashboards read; the BI role may read these and nothing else.

create schema if not exists :"pipeline_schema" authorization :"writer_role";
create schema if not exists marts authorization :"writer_role";

-- The BI role: read-only by default, reads the marts schema only.
alter role :"bi_role" set default_transaction_read_only = on;
revoke all on schema :"pipeline_schema" from :"bi_role";
grant usage on schema marts to :"bi_role";
grant select on all tables in schema marts to :"bi_role";
alter default privileges for role :"writer_role" in schema marts grant select on tables to :"bi_role";

-- Nobody but the owner creates objects in public.
revoke create on schema public from public;

alter role :"writer_role" set timezone = 'UTC';
alter role :"bi_role" set timezone = 'UTC';
