-- 003_batch_tables.sql: the tables of the batch work Airflow runs (aggregates, lake maintenance).
--
-- Applied with psql variables pipeline_schema (`iot`; tests apply it to schemas of their own)
-- and writer_role, which owns what is created here. Idempotent. Timestamps are timestamptz, UTC.

set role :"writer_role";
set search_path to :"pipeline_schema";

-- sensor_readings_hourly_city: hourly aggregates per city, computed from bronze by
-- jobs/aggregates.py. Grain: one city in one hour of event time. Key: (hour_start_utc, city).
-- A run replaces whole hours, so a rerun or a backfill of an hour yields identical rows.
create table if not exists sensor_readings_hourly_city (
    hour_start_utc timestamptz not null,
    city text not null,
    readings bigint not null,
    sensors bigint not null,
    temperature_min_c double precision not null,
    temperature_mean_c numeric(8, 3) not null,
    temperature_max_c double precision not null,
    temperature_p95_c double precision not null,
    humidity_min_pct double precision not null,
    humidity_mean_pct numeric(8, 3) not null,
    humidity_max_pct double precision not null,
    humidity_p95_pct double precision not null,
    ok_readings bigint not null,
    warning_readings bigint not null,
    critical_readings bigint not null,
    anomalies bigint not null,  -- readings off their sensor's hourly median by > AGGREGATES_ANOMALY_DELTA_C
    primary key (hour_start_utc, city)
);

-- sensor_readings_hourly_sensor: the same per sensor. Grain: one sensor in one hour.
-- Key: (hour_start_utc, sensor_id).
create table if not exists sensor_readings_hourly_sensor (
    hour_start_utc timestamptz not null,
    sensor_id text not null,
    city text not null,
    readings bigint not null,
    temperature_min_c double precision not null,
    temperature_mean_c numeric(8, 3) not null,
    temperature_max_c double precision not null,
    temperature_p95_c double precision not null,
    humidity_min_pct double precision not null,
    humidity_mean_pct numeric(8, 3) not null,
    humidity_max_pct double precision not null,
    humidity_p95_pct double precision not null,
    ok_readings bigint not null,
    warning_readings bigint not null,
    critical_readings bigint not null,
    anomalies bigint not null,
    primary key (hour_start_utc, sensor_id)
);

-- aggregate_runs: one row per run of the aggregates job (what it replaced, when).
-- Grain: one run. Key: run_id.
create table if not exists aggregate_runs (
    run_id bigserial primary key,
    window_start_utc timestamptz not null,
    window_end_utc timestamptz not null,
    bronze_rows_read bigint not null,
    city_rows bigint not null,
    sensor_rows bigint not null,
    finished_at timestamptz not null default now()
);
-- hours it computed; the others of its window were unchanged since computed (aggregate_hours)
alter table aggregate_runs add column if not exists hours_replaced integer;

-- aggregate_hours: what each hour's aggregates were computed from, so that a run computes
-- only the hours that changed (jobs/aggregates.py). Grain: one hour. Key: hour_start_utc.
create table if not exists aggregate_hours (
    hour_start_utc timestamptz primary key,
    inputs text not null,                 -- table, lateness, thresholds, derivation version
    complete_before timestamptz not null, -- every record stamped before this was read
    seen_offsets jsonb not null,          -- {"topic:partition": offset}: every record at or below was read
    run_id bigint not null references aggregate_runs (run_id)
);

-- lake_maintenance: requests to maintain the Delta tables the stream writes. Delta on S3 is
-- safe with one writer per table, so the retention DAG never writes them itself: it inserts a
-- request, and the streaming job carries it out between two micro-batches (jobs/maintenance.py).
-- Grain: one request. Key: request_id.
create table if not exists lake_maintenance (
    request_id bigserial primary key,
    requested_at timestamptz not null default now(),
    requested_by text not null,          -- e.g. the Airflow run id
    query_name text not null,            -- the stream that must carry it out
    delete_before_date date not null,    -- partitions (kafka_date) older than this are deleted
    vacuum_retain_hours integer not null check (vacuum_retain_hours >= 168),
    started_at timestamptz,
    finished_at timestamptz,
    state text not null default 'pending' check (state in ('pending', 'running', 'done', 'failed')),
    result jsonb,                        -- per table: files removed, compaction and vacuum metrics
    error text
);
create index if not exists lake_maintenance_pending_idx on lake_maintenance (query_name) where state = 'pending';
-- How many times a driver claimed the request. A request whose driver died while carrying it
-- out goes back to pending when the next driver starts, up to STREAM_MAINTENANCE_MAX_ATTEMPTS
-- claims; then it is failed, so a request that kills the driver cannot crash-loop the stream.
alter table lake_maintenance add column if not exists attempts integer not null default 0;
-- What to do: 'retention' (delete_before_date, vacuum_retain_hours: delete old partitions,
-- compact, vacuum) or 'requarantine' (params: make the quarantine rows of a range those of a
-- staging table jobs/reprocess.py wrote, in one MERGE; the two retention columns are null).
alter table lake_maintenance add column if not exists kind text not null default 'retention';
alter table lake_maintenance add column if not exists params jsonb;
alter table lake_maintenance alter column delete_before_date drop not null;
alter table lake_maintenance alter column vacuum_retain_hours drop not null;

-- reprocess_runs: each rebuild of curated rows from bronze (jobs/reprocess.py, the
-- iot_reprocess DAG): its range, the bronze version it read, the offsets it stopped at (what
-- the stream had committed), its counts and its outcome. Grain: one run; a resumed run keeps
-- its row. Key: run_id.
create table if not exists reprocess_runs (
    run_id bigserial primary key,
    requested_by text not null,          -- the Airflow run id, or "spark-submit"
    query_name text not null,            -- the stream whose committed offsets bound the run
    topic text not null,
    bronze_path text not null,
    from_date date,                      -- Kafka dates (kafka_date), inclusive; null: the whole table
    to_date date,
    as_of text,                          -- --as-of as given (a bronze version or timestamp); null: latest
    bronze_version bigint not null,      -- the bronze version read (a resumed run reads it again)
    end_offsets jsonb not null,          -- {"partition": offset}: records below these only
    thresholds jsonb not null,           -- the status thresholds applied
    chunk_rows integer not null,
    chunks_total integer not null,
    chunks_done integer not null default 0,
    rows_read bigint not null default 0,
    quarantine_request bigint,           -- the lake_maintenance request that applies its quarantine decisions
    counts jsonb not null default '{}',  -- what changed, per kind and status (jobs/reprocess.py)
    state text not null default 'running' check (state in ('running', 'done', 'failed')),
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    error text
);
-- reprocess_chunks: the chunks a run committed, each in the transaction that changed its rows,
-- so a run killed at any point resumes after its last committed chunk and writes nothing
-- twice. Grain: one chunk (one Kafka partition's offset range). Key: (run_id, chunk_no).
create table if not exists reprocess_chunks (
    run_id bigint not null references reprocess_runs (run_id) on delete cascade,
    chunk_no integer not null,
    kafka_partition integer not null,
    from_offset bigint not null,         -- inclusive
    to_offset bigint not null,           -- exclusive
    rows_read bigint not null,
    counts jsonb not null,
    committed_at timestamptz not null default now(),
    primary key (run_id, chunk_no)
);

reset search_path;
reset role;
