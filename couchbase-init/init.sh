#!/usr/bin/env bash
# Initialises a fresh Couchbase Server node so that `ledgerd init` can run:
# services, memory quotas and the administrator. Idempotent: an initialised
# node is left alone. Buckets and indexes are created by `ledgerd init`
# (their definitions are in indexes.n1ql).
#
# Runs inside the couchbase/server image (it has couchbase-cli and curl).
set -euo pipefail

host="${COUCHBASE_HOST:-couchbase}"
user="${COUCHBASE_ADMIN_USERNAME:-Administrator}"
pass="${COUCHBASE_ADMIN_PASSWORD:-password}"
ram_mb="${COUCHBASE_DATA_RAM_MB:-1024}"
index_ram_mb="${COUCHBASE_INDEX_RAM_MB:-256}"
cli=/opt/couchbase/bin/couchbase-cli

echo "waiting for Couchbase at ${host}:8091"
for _ in $(seq 1 150); do
  if curl -fsS -o /dev/null "http://${host}:8091/ui/index.html"; then break; fi
  sleep 2
done

if "$cli" server-list -c "$host" -u "$user" -p "$pass" >/dev/null 2>&1; then
  echo "cluster already initialised"
  exit 0
fi

"$cli" cluster-init -c "$host" \
  --cluster-username "$user" --cluster-password "$pass" \
  --services data,index,query \
  --cluster-ramsize "$ram_mb" --cluster-index-ramsize "$index_ram_mb" \
  --index-storage-setting default
echo "cluster initialised"
