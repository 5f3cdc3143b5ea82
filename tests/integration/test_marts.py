"""The SQL marts (sql/004_marts.sql) on known rows: the exact figures each view returns, read
as the BI role, which may read the marts and nothing else."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from psycopg2 import errors, sql

from common.postgres import open_connection
from testkit.schemas import create_pipeline_schema, drop_pipeline_schema, marts_schema_of

pytestmark = pytest.mark.integration

SAO_PAULO = ZoneInfo("America/Sao_Paulo")


def local(at: datetime) -> datetime:
    """Wall-clock time in America/Sao_Paulo, as the marts show it (worked out here with zoneinfo)."""
    return at.astimezone(SAO_PAULO).replace(tzinfo=None)


@pytest.fixture
def schemas(stack):
    name = f"t{uuid.uuid4().hex[:10]}"
    create_pipeline_schema(stack, name, marts=True)
    yield name, marts_schema_of(name)
    drop_pipeline_schema(stack, name)


def connect(stack, role: str):
    return open_connection(stack.pg_params(role), f"iot-tests-{role}", autocommit=True)


def test_marts_return_the_exact_figures_of_known_rows(stack, schemas):
    schema, marts = schemas
    writer = connect(stack, "writer")
    with writer.cursor() as cur:
        cur.execute("select date_trunc('minute', now()), now()")
        m0, t0 = cur.fetchone()
        readings = [  # (city, temperature, humidity, status, event time)
            ("Recife", 30.0, 60.0, "OK", m0 - timedelta(minutes=2) + timedelta(seconds=10)),
            ("Recife", 41.0, 50.0, "CRITICAL", m0 - timedelta(minutes=1) + timedelta(seconds=5)),
            ("Curitiba", 10.0, 95.0, "WARNING", m0 - timedelta(minutes=3)),
            ("Salvador", 25.0, 50.0, "OK", m0 - timedelta(minutes=30)),
            ("Salvador", 27.0, 52.0, "OK", m0 - timedelta(minutes=30) + timedelta(seconds=30)),
            ("São Paulo", 20.0, 50.0, "OK", m0 - timedelta(hours=2)),
        ]
        for seq, (city, t, h, status, at) in enumerate(readings):
            cur.execute(sql.SQL("insert into {}.sensor_readings (event_id, sensor_id, seq, city, temperature_c, "
                                "humidity_pct, status, event_time, kafka_topic, kafka_partition, kafka_offset) "
                                "values (%s, %s, %s, %s, %s, %s, %s, %s, 'marts-test', 0, %s)").format(
                sql.Identifier(schema)), (str(uuid.uuid4()), f"{city[:3]}-s0", seq, city, t, h, status, at, seq))
        batches = [  # (batch id, finished, rows in, quarantined, offsets behind)
            (1, t0 - timedelta(minutes=10), 1000, 50, 500),
            (2, t0 - timedelta(minutes=2), 600, 6, 40),
            (3, t0 - timedelta(seconds=60), 300, 3, 12),
        ]
        for batch_id, finished, rows_in, quarantined, behind in batches:
            cur.execute(sql.SQL("insert into {}.stream_health (query_id, batch_id, batch_started_at, "
                                "batch_finished_at, rows_in, rows_valid, rows_quarantined, rows_inserted, duplicates, "
                                "rule_failures, validate_ms, postgres_ms, end_offsets, offsets_behind) values "
                                "('q', %s, %s, %s, %s, %s, %s, %s, 0, '{{}}', 1, 1, '{{}}', %s)").format(
                sql.Identifier(schema)),
                (batch_id, finished, finished, rows_in, rows_in - quarantined, quarantined, rows_in - quarantined,
                 behind))
        maintenance = [  # (state, finished, error): only failures of the last 7 days count, newest first
            ("failed", t0 - timedelta(days=8), "too old to count"),
            ("failed", t0 - timedelta(days=2), "older failure"),
            ("failed", t0 - timedelta(hours=1), "driver died 3 times"),
            ("done", t0 - timedelta(minutes=5), None),
        ]
        for state, finished, error in maintenance:
            cur.execute(sql.SQL("insert into {}.lake_maintenance (requested_by, query_name, delete_before_date, "
                                "vacuum_retain_hours, state, finished_at, error) values ('test', 'q', '2026-01-01', "
                                "168, %s, %s, %s)").format(sql.Identifier(schema)), (state, finished, error))
        hour = datetime(2026, 11, 26, 15, tzinfo=UTC)
        cur.execute(sql.SQL("insert into {}.sensor_readings_hourly_city values (%s, 'Recife', 120, 4, 20.5, 25.125, "
                            "31.5, 30.9, 40.0, 55.5, 70.0, 68.0, 100, 15, 5, 2)").format(sql.Identifier(schema)),
                    (hour,))
    writer.close()

    started = time.monotonic()
    bi = connect(stack, "bi")
    with bi.cursor() as cur:
        def rows(view: str, order: str = "") -> list[tuple]:
            cur.execute(sql.SQL("select * from {}.{} " + order).format(sql.Identifier(marts), sql.Identifier(view)))
            return cur.fetchall()

        kpis = rows("current_kpis")
        assert [k[:5] for k in kpis] == [(5, 3, Decimal("27.00"), Decimal("68.33"), Decimal("0.01"))]

        assert rows("city_board") == [
            ("Recife", "CRITICAL", 41.0, 50.0, "Rec-s0", local(readings[1][4]).replace(microsecond=0), 1),
            ("Curitiba", "WARNING", 10.0, 95.0, "Cur-s0", local(readings[2][4]), 2),
            ("Salvador", "OK", 27.0, 52.0, "Sal-s0", local(readings[4][4]), 3),
        ]

        assert rows("temperature_per_minute", "order by minute_local, city") == [
            (local(m0 - timedelta(minutes=30)), "Salvador", Decimal("26.00"), 2),
            (local(m0 - timedelta(minutes=3)), "Curitiba", Decimal("10.00"), 1),
            (local(m0 - timedelta(minutes=2)), "Recife", Decimal("30.00"), 1),
            (local(m0 - timedelta(minutes=1)), "Recife", Decimal("41.00"), 1),
        ]

        hourly = rows("hourly_city", "order by source, hour_local, city")
        assert hourly[0] == (datetime(2026, 11, 26, 12, 0), "Recife", 120, 4, 20.5, Decimal("25.125"), 31.5, 30.9,
                             40.0, Decimal("55.500"), 70.0, 68.0, 100, 15, 5, 2, "lake")
        # the hours after the last aggregated one, live from the curated rows
        live: dict[tuple, list] = {}
        for city, t, _h, status, at in readings:
            live.setdefault((local(at.replace(minute=0, second=0, microsecond=0)), city), []).append((t, status))
        expected_live = sorted(
            (hour_local, city, len(v), 1, min(t for t, _ in v), Decimal(sum(t for t, _ in v) / len(v)).quantize(
                Decimal("0.001")), max(t for t, _ in v), sum(st == "OK" for _, st in v),
             sum(st == "WARNING" for _, st in v), sum(st == "CRITICAL" for _, st in v), None, "live")
            for (hour_local, city), v in live.items())
        assert [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[12], r[13], r[14], r[15], r[16]) for r in hourly[1:]] \
            == expected_live

        (last_local, age, behind, batches_5m, rows_per_s, quarantine_pct, maintenance_failed,
         maintenance_error), = rows("pipeline_health")
        assert (maintenance_failed, maintenance_error) == (2, "driver died 3 times")
        elapsed = time.monotonic() - started
        assert last_local == local(batches[2][1]).replace(microsecond=0) or \
            last_local == local(batches[2][1] + timedelta(seconds=1)).replace(microsecond=0)
        assert 60 <= age <= 60 + elapsed + 1
        assert (behind, batches_5m, rows_per_s, quarantine_pct) == (12, 2, Decimal("3.00"), Decimal("1.00"))

        # the BI role reads the marts only, and cannot write
        with pytest.raises(errors.InsufficientPrivilege):
            cur.execute(sql.SQL("select count(*) from {}.sensor_readings").format(sql.Identifier(schema)))
        with pytest.raises((errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction)):
            cur.execute(sql.SQL("create view {}.mine as select 1").format(sql.Identifier(marts)))
    bi.close()


def test_empty_tables_give_one_row_of_kpis_and_health_and_empty_boards(stack, schemas):
    _, marts = schemas
    bi = connect(stack, "bi")
    with bi.cursor() as cur:
        counts = {}
        for view in ("current_kpis", "city_board", "temperature_per_minute", "hourly_city", "pipeline_health"):
            cur.execute(sql.SQL("select count(*) from {}.{}").format(sql.Identifier(marts), sql.Identifier(view)))
            counts[view] = cur.fetchone()[0]
        assert counts == {"current_kpis": 1, "city_board": 0, "temperature_per_minute": 0, "hourly_city": 0,
                          "pipeline_health": 1}
        cur.execute(sql.SQL("select readings, mean_temperature_c from {}.current_kpis").format(sql.Identifier(marts)))
        assert cur.fetchone() == (0, None)
        cur.execute(sql.SQL("select last_batch_age_seconds, batches_last_5_min, quarantine_rate_pct, "
                            "maintenance_failed_7_days, maintenance_last_error "
                            "from {}.pipeline_health").format(sql.Identifier(marts)))
        assert cur.fetchone() == (None, 0, None, 0, None)
    bi.close()


def test_every_card_of_the_dashboard_spec_runs_as_the_bi_role_and_has_its_columns(stack, schemas):
    from dashboards.spec import load

    _, marts = schemas
    bi = connect(stack, "bi")
    with bi.cursor() as cur:
        for card in load().cards:
            cur.execute(card.query.replace("marts.", f'"{marts}".'))
            names = [d.name for d in cur.description]
            assert set(card.columns()) <= set(names), card.key
            if card.kind == "number":
                assert names == [card.visualization["value"]], card.key
                assert len(cur.fetchall()) == 1, card.key
    bi.close()
