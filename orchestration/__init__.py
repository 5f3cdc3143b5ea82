"""What Airflow's DAGs run: operators and task logic, importable and unit-tested without Airflow
where they can be (the DAG files in dags/ only declare schedules, tasks and dependencies)."""
