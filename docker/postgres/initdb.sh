#!/usr/bin/env bash
# The postgres image runs this once, on an empty data directory: the roles and databases of
# the pipeline (writer, read-only BI role, Airflow's and Metabase's own), then
# sql/*.sql in order, as `make up` does for the local stack (stack/init.py).
set -euo pipefail
for name in PIPELINE_DB_PASSWORD BI_DB_PASSWORD AIRFLOW_DB_PASSWORD METABASE_DB_PASSWORD; do
  if [ -z "${!name:-}" ]; then echo "initdb: $name is not set: run make env" >&2; exit 1; fi
done
psql=(psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password)
"${psql[@]}" --dbname postgres \
  -v writer="$PIPELINE_DB_USER" -v writer_pw="$PIPELINE_DB_PASSWORD" \
  -v bi="$BI_DB_USER" -v bi_pw="$BI_DB_PASSWORD" \
  -v airflow="$AIRFLOW_DB_USER" -v airflow_pw="$AIRFLOW_DB_PASSWORD" \
  -v metabase="$METABASE_DB_USER" -v metabase_pw="$METABASE_DB_PASSWORD" \
  -v pipeline_db="$IOT_DB" -v airflow_db="$AIRFLOW_DB" -v metabase_db="$METABASE_DB" <<'SQL'
create role :"writer" login password :'writer_pw';
create role :"bi" login password :'bi_pw';
create role :"airflow" login password :'airflow_pw';
create role :"metabase" login password :'metabase_pw';
create database :"pipeline_db" owner :"writer";
create database :"airflow_db" owner :"airflow";
create database :"metabase_db" owner :"metabase";
-- No database is open to PUBLIC: the BI role connects to the pipeline's only, and creates
-- nothing there, not even a temporary table (stack/init.py does the same locally).
revoke connect, temporary on database :"pipeline_db" from public;
revoke connect, temporary on database :"airflow_db" from public;
revoke connect, temporary on database :"metabase_db" from public;
revoke connect, temporary on database postgres from public;
grant connect, temporary on database :"pipeline_db" to :"writer";
grant connect on database :"pipeline_db" to :"bi";
SQL
for file in /iot/sql/[0-9][0-9][0-9]_*.sql; do
  echo "initdb: applying $(basename "$file")"
  "${psql[@]}" --dbname "$IOT_DB" -q -v writer_role="$PIPELINE_DB_USER" -v bi_role="$BI_DB_USER" \
    -v pipeline_schema="$PIPELINE_SCHEMA" -v marts_schema=marts -f "$file"
done
