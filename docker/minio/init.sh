#!/bin/bash
# One-shot init of the Docker stack's MinIO (the `minio-init` service, MinIO's own mc image):
# the bucket, a policy scoped to it, and the pipeline's access key with that policy, as
# `make up` does locally (stack/init.py). Idempotent: a second run changes nothing.
set -euo pipefail
: "${LAKEHOUSE_BUCKET:?}" "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?S3_SECRET_KEY is not set: run make env}"
# the root login through mc's environment alias, not on a command line
export MC_HOST_lakehouse="http://${MINIO_ROOT_USER}:${MINIO_ROOT_PASSWORD}@minio:9000"
mc mb --ignore-existing "lakehouse/$LAKEHOUSE_BUCKET"
policy_name="$LAKEHOUSE_BUCKET-readwrite"
template=$(cat /iot/minio/pipeline-policy.json)
printf '%s\n' "${template//'${BUCKET}'/$LAKEHOUSE_BUCKET}" > /tmp/policy.json
mc admin policy create lakehouse "$policy_name" /tmp/policy.json
# the secret goes through stdin, never on a command line (ps shows those to every user)
printf '%s\n' "$S3_SECRET_KEY" | mc admin user add lakehouse "$S3_ACCESS_KEY" >/dev/null
mc admin policy attach lakehouse "$policy_name" --user "$S3_ACCESS_KEY" 2>/dev/null \
  || mc admin user info lakehouse "$S3_ACCESS_KEY" | grep -q "$policy_name"
echo "minio-init: bucket $LAKEHOUSE_BUCKET, policy $policy_name, key $S3_ACCESS_KEY ready"
