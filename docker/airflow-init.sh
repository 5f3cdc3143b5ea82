#!/usr/bin/env bash
# One-shot init of the Docker stack's Airflow (the `airflow-init` service): migrate the
# metadata database, then write the admin's login for the SimpleAuthManager from the
# environment into AIRFLOW_HOME, a volume every Airflow service mounts.
set -euo pipefail
: "${AIRFLOW_ADMIN_USER:?AIRFLOW_ADMIN_USER is not set (see .env.example)}"
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set: run make env}"
airflow db migrate
python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, fh)
print(f"airflow-init: wrote the admin login to {path}")
PY
