#!/usr/bin/env bash
# `make run`: the main job on one machine. Installs and starts the local control plane
# (tests/env), installs the CRDs, starts the operator and the pod runner (which plays the kubelet
# for store-node pods as local processes), applies the self-hosted EventStore sample and a Tenant,
# waits for Ready, appends an event over HTTP to a store node and reads it back, then prints what
# to try next. Everything it starts is stopped by `make env-down`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/allsource/target}
env_file=${ALLSOURCE_ENV_FILE:-tests/env/.env}
export ALLSOURCE_ENV_FILE=$env_file
ns=${ALLSOURCE_RUN_NAMESPACE:-allsource-demo}
step() { echo "[run] $*" >&2; }

# Only what `up.sh kube` runs (the real node and the other servers are for `make test`).
tests/env/install.sh apt kubernetes etcd kwok
if [ ! -f "$env_file" ] || ! grep -q '^KUBECONFIG=' "$env_file"; then
  tests/env/up.sh kube
fi
get() { sed -n "s/^$1=//p" "$env_file" | head -1; }
export KUBECONFIG
KUBECONFIG=$(get KUBECONFIG)
state=$(get ALLSOURCE_ENV_DIR)
mkdir -p "$state/pids" "$state/run"

step "building the operator, store-node and the pod runner"
cargo build -q -p allsource-operator -p store-node -p allsource-tests --bins
bin=$CARGO_TARGET_DIR/debug

step "installing the CRDs"
kubectl apply --server-side --field-manager=allsource-run-local -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

# Background processes go in their own process group, recorded where tests/env/down.sh stops them.
start_bg() { # <name> <command...>
  local name=$1
  shift
  if [ -f "$state/pids/$name.pid" ] && kill -0 -- "-$(cat "$state/pids/$name.pid")" 2>/dev/null; then
    step "$name already running"
    return
  fi
  setsid "$@" >"$state/run/$name.log" 2>&1 &
  echo $! >"$state/pids/$name.pid"
  step "$name started (log: $state/run/$name.log)"
}
start_bg pod-runner "$bin/pod-runner" --store-node-bin "$bin/store-node" --state-dir "$state/run/pods"
start_bg operator env RUST_LOG=info "$bin/allsource-operator" run --leader-elect=false \
  --http-addr 127.0.0.1:0

kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# The local cluster has no volume provisioner: one PersistentVolume pre-bound per store node.
replicas=3
for i in $(seq 0 $((replicas - 1))); do
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $ns-orders-$i}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $state/run/pv-$ns-orders-$i}
  claimRef: {namespace: $ns, name: data-orders-$i}
EOF
done

step "applying config/samples/eventstore-selfhosted.yaml (pods pinned to the pod runner's node)"
sed -e "s/^  deletionPolicy: Retain/  deletionPolicy: Delete/" config/samples/eventstore-selfhosted.yaml |
  kubectl apply -n "$ns" --server-side -f - >/dev/null
kubectl patch es orders -n "$ns" --type merge \
  -p '{"spec":{"selfHosted":{"podTemplate":{"nodeSelector":{"allsource.io/pod-runner":"true"},"tolerations":[{"key":"allsource.io/pod-runner","operator":"Equal","value":"true","effect":"NoSchedule"}]}}}}' >/dev/null
kubectl apply -n "$ns" --server-side -f config/samples/tenant-pooled.yaml >/dev/null

step "waiting for EventStore orders to be Ready"
kubectl wait es/orders -n "$ns" --for=condition=Ready --timeout=180s >/dev/null
# The Tenant controller issues the token into the Tenant's connection Secret (keys endpoint,
# tenantId, token, backend) and only its SHA-256 into the status and the store nodes' registry.
step "waiting for Tenant acme to be Ready; its token comes from Secret acme-credentials"
kubectl wait tn/acme -n "$ns" --for=condition=Ready --timeout=180s >/dev/null
kubectl get es,tn -n "$ns"
token=$(kubectl get secret acme-credentials -n "$ns" -o jsonpath='{.data.token}' | base64 -d)
[ -n "$token" ] || { echo "no token in Secret acme-credentials" >&2; exit 1; }

node=$(kubectl get es orders -n "$ns" -o jsonpath='{.status.placement.acme}')
port=""
for _ in $(seq 1 100); do
  port=$(kubectl get pod "$node" -n "$ns" -o jsonpath='{.metadata.annotations.allsource\.io/runner-port}' 2>/dev/null || true)
  [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.3
done
[ -n "$port" ] || { echo "no runner port for pod $node" >&2; exit 1; }

url=http://127.0.0.1:$port
step "tenant acme lives on $node ($url); the registry reloads within a few seconds"
for _ in $(seq 1 60); do
  code=$(curl -s -o "$state/run/append.json" -w '%{http_code}' -X POST "$url/v1/streams/order-1/events" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"events\":[{\"eventId\":\"$(cat /proc/sys/kernel/random/uuid)\",\"eventType\":\"OrderPlaced\",\"data\":{\"total\":42}}]}")
  [ "$code" = 201 ] && break
  sleep 0.5
done
echo "append -> HTTP $code: $(cat "$state/run/append.json")"
[ "$code" = 201 ] || exit 1
echo "read   -> $(curl -sf "$url/v1/streams/order-1/events" -H "Authorization: Bearer $token")"

cat <<EOF

AllSource is running locally (namespace $ns).
  export KUBECONFIG=$KUBECONFIG
  kubectl get es,tn,ap -A
  kubectl describe es orders -n $ns
  kubectl scale es orders -n $ns --replicas=2     # refused while a tenant lives on the removed node
  TOKEN=\$(kubectl get secret acme-credentials -n $ns -o jsonpath='{.data.token}' | base64 -d)
  curl -s $url/v1/streams/order-1/events -H "Authorization: Bearer \$TOKEN"
  curl -s $url/v1/stats -H "Authorization: Bearer \$TOKEN"
  curl -s $url/metrics | grep allsource_
Logs: $state/run/*.log      Stop everything: make env-down
EOF
