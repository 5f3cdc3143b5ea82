"""The one way the project talks to PostgreSQL: opening a connection, naming a schema in SQL,
and reading what the stream committed.

Every connection gets a connect timeout and an application name (what `pg_stat_activity`, and
a refused writer's message, show for it). A connection for one piece of work is a context
manager that commits or rolls back, then closes; one that lives as long as its owner (the
stream's sink, the writer locks) is opened with `open_connection` and closed by the owner.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

CONNECT_TIMEOUT_SECONDS = 10
APPLICATION_NAME_MAX = 63  # PostgreSQL truncates longer names (NAMEDATALEN - 1)


def open_connection(params: Mapping[str, Any], application_name: str, *,
                    timeout_seconds: int = CONNECT_TIMEOUT_SECONDS, autocommit: bool = False):
    """Return a new psycopg2 connection; the caller closes it. `params`: host, port, dbname,
    user, password (psycopg2's names)."""
    import psycopg2

    conn = psycopg2.connect(**params, connect_timeout=timeout_seconds,
                            application_name=application_name[:APPLICATION_NAME_MAX])
    conn.autocommit = autocommit
    return conn


@contextlib.contextmanager
def connection(params: Mapping[str, Any], application_name: str, *,
               timeout_seconds: int = CONNECT_TIMEOUT_SECONDS, autocommit: bool = False) -> Iterator[Any]:
    """A connection for one piece of work: its transaction commits when the block ends, rolls
    back when it raises, and the connection is closed either way. The block may run its own
    transactions with `with conn:` (psycopg2 refuses to enter a connection twice, so this does
    not use it)."""
    conn = open_connection(params, application_name, timeout_seconds=timeout_seconds, autocommit=autocommit)
    try:
        yield conn
        if not conn.closed and not autocommit:
            conn.commit()
    except BaseException:
        if not conn.closed and not autocommit:
            import psycopg2

            # the block's own error is what propagates; a connection that broke cannot roll back
            with contextlib.suppress(psycopg2.InterfaceError, psycopg2.OperationalError):
                conn.rollback()
        raise
    finally:
        conn.close()


def in_schema(schema: str, text: str, **identifiers: str | tuple[str, ...]):
    """Return `text` as SQL with `{schema}` replaced by the quoted schema name, and each other
    `{name}` by `identifiers[name]` quoted (a tuple: a comma-separated list). The only way a
    schema's, table's or column's name goes into a statement: an identifier, never a parameter
    nor pasted text."""
    from psycopg2 import sql

    def quoted(value: str | tuple[str, ...]):
        return sql.SQL(", ").join(map(sql.Identifier, value)) if isinstance(value, tuple) else sql.Identifier(value)

    return sql.SQL(text).format(schema=sql.Identifier(schema), **{k: quoted(v) for k, v in identifiers.items()})


def committed_end_offsets(cur, schema: str, *, query_id: str | None = None, query_name: str | None = None,
                          topic: str | None = None) -> dict[int, int]:
    """Return {partition: next offset} of the latest micro-batch a stream committed, from its
    health rows in `schema`; empty if it committed none.

    Either `query_id` (one checkpoint's query: its batches in batch order) or `query_name` and
    `topic` (a stream by name, across checkpoints: the batch that finished last). Another
    stream's rows never count."""
    if query_id is not None and query_name is None and topic is None:
        cur.execute(in_schema(schema, "select end_offsets from {schema}.stream_health where query_id = %s "
                                      "order by batch_id desc limit 1"), (query_id,))
    elif query_id is None and query_name is not None and topic is not None:
        cur.execute(in_schema(schema, "select end_offsets from {schema}.stream_health "
                                      "where query_name = %s and topic = %s "
                                      "order by batch_finished_at desc limit 1"), (query_name, topic))
    else:
        raise ValueError("committed_end_offsets needs query_id, or query_name and topic")
    row = cur.fetchone()
    return {int(p): int(o) for p, o in row[0].items()} if row else {}


def lake_maintenance_outcome(conn, schema: str, request_id: int) -> tuple[str, dict | None, str | None]:
    """Return (state, result, error) of a lake maintenance request (jobs/maintenance.py), for the
    retention DAG and the reprocess job that asked for it."""
    with conn, conn.cursor() as cur:
        cur.execute(in_schema(schema, "select state, result, error from {schema}.lake_maintenance "
                                      "where request_id = %s"), (request_id,))
        row = cur.fetchone()
    if row is None:
        raise LookupError(f"lake maintenance request {request_id} not found in {schema}.lake_maintenance")
    return row[0], row[1], row[2]
