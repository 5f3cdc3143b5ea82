-- 002_pipeline_tables.sql: the streaming job's tables.
--
-- Applied with psql variables pipeline_schema (`iot` for the pipeline; each test applies this
-- same file to a schema of its own) and writer_role, which owns what is created here.
-- Idempotent. Timestamps are timestamptz, stored in UTC.

set role :"writer_role";
set search_path to :"pipeline_schema";

-- sensor_readings: curated, validated, classified readings.
-- Grain: one valid reading. Key: event_id (the idempotency key end to end).
create table if not exists sensor_readings (
    event_id uuid primary key,
    sensor_id text not null,
    seq bigint not null,
    city text not null,
    temperature_c double precision not null,
    humidity_pct double precision not null,
    status text not null check (status in ('OK', 'WARNING', 'CRITICAL')),
    event_time timestamptz not null,
    kafka_topic text not null,
    kafka_partition integer not null,
    kafka_offset bigint not null,
    ingested_at timestamptz not null default now()
);
-- "last N minutes" filters, retention deletes
create index if not exists sensor_readings_event_time_idx on sensor_readings (event_time);
-- latest reading per city, per-minute series per city
create index if not exists sensor_readings_city_event_time_idx on sensor_readings (city, event_time desc);
-- gap checks per sensor
create index if not exists sensor_readings_sensor_seq_idx on sensor_readings (sensor_id, seq);

-- sink_progress: micro-batches whose rows are committed; a replayed batch finds its row and
-- writes nothing. Grain: one committed micro-batch. Key: (query_id, batch_id).
create table if not exists sink_progress (
    query_id text not null,
    batch_id bigint not null,
    committed_at timestamptz not null default now(),
    primary key (query_id, batch_id)
);

-- stream_health: what each micro-batch did. Grain: one micro-batch. Key: (query_id, batch_id).
create table if not exists stream_health (
    query_id text not null,
    batch_id bigint not null,
    batch_started_at timestamptz not null,
    batch_finished_at timestamptz not null,
    rows_in bigint not null,             -- records read from Kafka (= rows appended to bronze)
    rows_valid bigint not null,          -- records passing every rule
    rows_quarantined bigint not null,    -- records failing at least one rule
    rows_inserted bigint not null,       -- valid rows new to sensor_readings
    duplicates bigint not null,          -- valid rows whose event_id was already there
    rule_failures jsonb not null,        -- {"rule name": records failing it}
    validate_ms integer not null,        -- reading the batch, parsing, validating, classifying
    postgres_ms integer not null,        -- the PostgreSQL transaction (rows visible after it)
    bronze_ms integer,                   -- writing bronze (after PostgreSQL; null if the driver died first)
    quarantine_ms integer,               -- writing quarantine (likewise)
    total_ms integer,                    -- the whole batch (likewise)
    end_offsets jsonb not null,          -- {"partition": next offset to read} after this batch
    offsets_behind bigint,               -- latest offsets minus end_offsets, summed over partitions
    primary key (query_id, batch_id)
);
create index if not exists stream_health_finished_idx on stream_health (batch_finished_at);
-- Which stream wrote the row: readers of health rows (the aggregates' wait, benchmarks) filter
-- by query name and topic, so no other stream's rows can move them. Null only in rows written
-- before these columns existed.
alter table stream_health add column if not exists query_name text;
alter table stream_health add column if not exists topic text;
create index if not exists stream_health_query_topic_idx on stream_health (query_name, topic, batch_finished_at);

reset search_path;
reset role;
