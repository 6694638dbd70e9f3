#!/usr/bin/env bash
# `make run`: installs and starts the local test environment (if it is not up yet), installs
# the CRDs from crds/ into its kube-apiserver, and prints how to use the cluster.
# The operator helper extends this to build and run the operator against it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
env_file=${ALLSOURCE_ENV_FILE:-tests/env/.env}

tests/env/install.sh
if [ ! -f "$env_file" ] || ! grep -q '^KUBECONFIG=' "$env_file"; then
  tests/env/up.sh
fi

get() { sed -n "s/^$1=//p" "$env_file" | head -1; }
KUBECONFIG=$(get KUBECONFIG)
server=$(get KUBE_APISERVER)
ca=$(get KUBE_CA_FILE)
token=$(get KUBE_TOKEN)

# Server-side apply of each CRD over the REST API (no kubectl needed).
shopt -s nullglob
for f in crds/*.yaml crds/*.yml; do
  name=$(sed -n 's/^  name: *//p' "$f" | head -1)
  [ -n "$name" ] || continue
  curl -sf --cacert "$ca" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/apply-patch+yaml' -X PATCH --data-binary "@$f" \
    "$server/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$name?fieldManager=allsource-run-local&force=true" \
    >/dev/null && echo "applied CRD $name"
done

cat <<EOF

The local environment is up (env file: $env_file).
  export KUBECONFIG=$KUBECONFIG
  $(get HELM) list -A          # helm v3 against the test cluster
  set -a; . $env_file; set +a  # every endpoint (PG_URL, DYNAMODB_ENDPOINT, S3_ENDPOINT, ...)
Stop it with: make env-down
EOF
