"""Pipeline schemas of their own, for tests, benchmarks and experiments: the pipeline's tables
(and, if asked, its marts) in a PostgreSQL schema with a name of your own, and their removal.

    from stack.settings import load_settings
    from testkit.schemas import create_pipeline_schema, drop_pipeline_schema
    create_pipeline_schema(load_settings(), "my_schema", marts=True)
"""

from __future__ import annotations

from common.pipeline import DEFAULT_SCHEMA
from common.postgres import connection
from stack.init import MARTS_SQL, PIPELINE_TABLES_SQL, apply_sql
from stack.settings import StackSettings


def _superuser(s: StackSettings):
    return connection(s.pg_params("superuser"), "iot-testkit", timeout_seconds=3)


def marts_schema_of(schema: str) -> str:
    """Return the name of the marts schema that goes with a test's pipeline schema."""
    return f"{schema}_marts"


def create_pipeline_schema(s: StackSettings, schema: str, marts: bool = False) -> None:
    """Create `schema` owned by the writer with the pipeline's tables (for tests); with
    `marts`, also the marts views over them in `marts_schema_of(schema)`."""
    from psycopg2 import sql

    with _superuser(s) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("create schema if not exists {} authorization {}").format(
            sql.Identifier(schema), sql.Identifier(s.pg_writer)))
    apply_sql(s, [s.repo / "sql" / name for name in PIPELINE_TABLES_SQL], pipeline_schema=schema)
    if marts:
        apply_sql(s, [s.repo / "sql" / MARTS_SQL], pipeline_schema=schema, marts_schema=marts_schema_of(schema))


def drop_pipeline_schema(s: StackSettings, schema: str) -> None:
    """Drop a schema made by create_pipeline_schema, with everything in it."""
    from psycopg2 import sql

    if schema == DEFAULT_SCHEMA:
        raise ValueError("refusing to drop the pipeline's own schema")
    with _superuser(s) as conn, conn.cursor() as cur:
        for name in (marts_schema_of(schema), schema):
            cur.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))
