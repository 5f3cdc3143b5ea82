"""Connections of Airflow tasks, from Airflow connection ids (filled from AIRFLOW_CONN_*)."""

from __future__ import annotations

POSTGRES_CONN_ID = "iot_postgres"


def postgres(conn_id: str = POSTGRES_CONN_ID):
    """Return a psycopg2 connection for an Airflow connection id, as a context manager that
    commits (or rolls back) and closes it (the task logic speaks psycopg2; the provider's hook
    would hand out psycopg 3 connections next to SQLAlchemy 2)."""
    from airflow.sdk import Connection

    from common.postgres import connection

    c = Connection.get(conn_id)
    return connection({"host": c.host, "port": c.port or 5432, "dbname": c.schema, "user": c.login,
                       "password": c.password}, f"airflow-{conn_id}")
