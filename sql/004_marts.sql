-- 004_marts.sql: the views the dashboards read (Metabase, Superset; dashboards/spec.yaml).
--
-- Applied with psql variables pipeline_schema (the tables, `iot`), marts_schema (`marts`; each
-- test applies this file to schemas of its own), writer_role (owns the views) and bi_role (may
-- read them, and nothing in pipeline_schema). Idempotent.
--
-- Stored in UTC, shown in America/Sao_Paulo: every *_local column is local wall-clock time
-- (timestamp without time zone) in America/Sao_Paulo, for display only. Filters compare
-- timestamptz values, so they do not depend on any session's time zone.

set role :"writer_role";
create schema if not exists :"marts_schema";

-- current_kpis: one row. The last 5 minutes of readings (by event time): how many, their mean
-- temperature and humidity, readings per second.
create or replace view :"marts_schema".current_kpis as
select
    5 as window_minutes,
    count(*)::bigint as readings,
    round(avg(temperature_c)::numeric, 2) as mean_temperature_c,
    round(avg(humidity_pct)::numeric, 2) as mean_humidity_pct,
    round(count(*) / 300.0, 2) as readings_per_second,
    (now() at time zone 'America/Sao_Paulo')::timestamp(0) as as_of_local
from :"pipeline_schema".sensor_readings
where event_time >= now() - interval '5 minutes';

-- city_board: the latest reading of each city in the last hour, CRITICAL first, then WARNING,
-- then OK (severity_rank 1, 2, 3), then by city.
create or replace view :"marts_schema".city_board as
select
    city,
    status,
    temperature_c,
    humidity_pct,
    sensor_id,
    (event_time at time zone 'America/Sao_Paulo')::timestamp(0) as reading_time_local,
    case status when 'CRITICAL' then 1 when 'WARNING' then 2 else 3 end as severity_rank
from (
    select distinct on (city) city, status, temperature_c, humidity_pct, sensor_id, event_time
    from :"pipeline_schema".sensor_readings
    where event_time >= now() - interval '1 hour'
    order by city, event_time desc, event_id
) latest
order by severity_rank, city;

-- temperature_per_minute: mean temperature per minute per city, the current minute and the 59
-- before it. Grain: (minute_local, city).
create or replace view :"marts_schema".temperature_per_minute as
select
    date_trunc('minute', event_time at time zone 'America/Sao_Paulo') as minute_local,
    city,
    round(avg(temperature_c)::numeric, 2) as mean_temperature_c,
    count(*)::bigint as readings
from :"pipeline_schema".sensor_readings
where event_time >= date_trunc('minute', now()) - interval '59 minutes'
group by 1, 2;

-- hourly_city: readings per hour per city. Hours the iot_aggregates DAG has computed from the
-- lake (source 'lake'), then, for the hours after the last of those within the last 24, the same
-- figures computed live from the curated rows (source 'live': the running hour, and a closed
-- hour until its DAG run replaces it; no anomaly count). Grain: (hour, city).
create or replace view :"marts_schema".hourly_city as
with covered as (
    select max(hour_start_utc) + interval '1 hour' as live_from
    from :"pipeline_schema".sensor_readings_hourly_city
)
select
    hour_start_utc at time zone 'America/Sao_Paulo' as hour_local,
    city,
    readings,
    sensors,
    temperature_min_c,
    temperature_mean_c,
    temperature_max_c,
    temperature_p95_c,
    humidity_min_pct,
    humidity_mean_pct,
    humidity_max_pct,
    humidity_p95_pct,
    ok_readings,
    warning_readings,
    critical_readings,
    anomalies,
    'lake'::text as source
from :"pipeline_schema".sensor_readings_hourly_city
union all
select
    date_trunc('hour', r.event_time at time zone 'UTC') at time zone 'UTC' at time zone 'America/Sao_Paulo',
    r.city,
    count(*),
    count(distinct r.sensor_id),
    min(r.temperature_c),
    round(avg(r.temperature_c)::numeric, 3)::numeric(8, 3),
    max(r.temperature_c),
    percentile_cont(0.95) within group (order by r.temperature_c),
    min(r.humidity_pct),
    round(avg(r.humidity_pct)::numeric, 3)::numeric(8, 3),
    max(r.humidity_pct),
    percentile_cont(0.95) within group (order by r.humidity_pct),
    count(*) filter (where r.status = 'OK'),
    count(*) filter (where r.status = 'WARNING'),
    count(*) filter (where r.status = 'CRITICAL'),
    null::bigint,
    'live'::text
from :"pipeline_schema".sensor_readings r, covered
where r.event_time >= greatest(coalesce(covered.live_from, '-infinity'),
                               date_trunc('hour', now() at time zone 'UTC') at time zone 'UTC' - interval '23 hours')
group by 1, 2;

-- pipeline_health: one row. The last micro-batch (when, how long ago, offsets still behind the
-- topic's end), the last 5 minutes of batches (how many, rows read per second, share of
-- rows quarantined; null without rows), and lake maintenance requests that failed in the last
-- 7 days (how many, and the newest one's error).
create or replace view :"marts_schema".pipeline_health as
with last_batch as (
    select batch_finished_at, offsets_behind
    from :"pipeline_schema".stream_health
    order by batch_finished_at desc
    limit 1
), recent as (
    select count(*)::bigint as batches, coalesce(sum(rows_in), 0) as rows_in,
           coalesce(sum(rows_quarantined), 0) as rows_quarantined
    from :"pipeline_schema".stream_health
    where batch_finished_at >= now() - interval '5 minutes'
), maintenance as (
    select count(*)::bigint as failed,
           (array_agg(error order by finished_at desc))[1] as last_error
    from :"pipeline_schema".lake_maintenance
    where state = 'failed' and finished_at >= now() - interval '7 days'
)
select
    (last_batch.batch_finished_at at time zone 'America/Sao_Paulo')::timestamp(0) as last_batch_local,
    round(extract(epoch from now() - last_batch.batch_finished_at))::bigint as last_batch_age_seconds,
    last_batch.offsets_behind,
    recent.batches as batches_last_5_min,
    round(recent.rows_in / 300.0, 2) as rows_per_second,
    case when recent.rows_in > 0 then round(100.0 * recent.rows_quarantined / recent.rows_in, 2) end
        as quarantine_rate_pct,
    maintenance.failed as maintenance_failed_7_days,
    maintenance.last_error as maintenance_last_error
from recent cross join maintenance left join last_batch on true;

-- The BI role reads these views and nothing else (the views read the tables with their
-- owner's rights).
grant usage on schema :"marts_schema" to :"bi_role";
grant select on all tables in schema :"marts_schema" to :"bi_role";

reset role;
