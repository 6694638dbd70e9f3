#!/usr/bin/env bash
# `make run`: the main job on one machine. Installs and starts the local control plane
# (tests/env) and installs the CRDs. As root (unless ALLSOURCE_RUN_NODE=0) it also starts the
# real kubelet node (containerd, runc, CNI, CoreDNS, a volume provisioner), builds both images
# (hack/images.sh) into the node's containerd and `helm install`s the chart, so the operator and
# every store node run as real pods from their images. Otherwise it runs the operator as a local
# process and the pod runner (which plays the kubelet for store-node pods as local processes).
# Then it applies the self-hosted EventStore sample and a Tenant, waits for Ready, appends an
# event over HTTP to the tenant's store node and reads it back, and prints what to try next.
# Everything it starts is stopped by `make env-down`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/allsource/target}
env_file=${ALLSOURCE_ENV_FILE:-tests/env/.env}
export ALLSOURCE_ENV_FILE=$env_file
ns=${ALLSOURCE_RUN_NAMESPACE:-allsource-demo}
step() { echo "[run] $*" >&2; }

real_node=0
[ "$(id -u)" = 0 ] && [ "${ALLSOURCE_RUN_NODE:-1}" = 1 ] && real_node=1
if [ "$real_node" = 1 ]; then
  # What `up.sh kube node` runs (the other servers are for `make test`).
  tests/env/install.sh apt kubernetes etcd kwok helm node coredns
  if [ ! -f "$env_file" ] || ! grep -q '^NODE_NAME=' "$env_file"; then
    [ ! -f "$env_file" ] || tests/env/down.sh
    tests/env/up.sh kube node
  fi
else
  # Only what `up.sh kube` runs.
  tests/env/install.sh apt kubernetes etcd kwok
  if [ ! -f "$env_file" ] || ! grep -q '^KUBECONFIG=' "$env_file"; then
    tests/env/up.sh kube
  fi
fi
get() { sed -n "s/^$1=//p" "$env_file" | head -1; }
export KUBECONFIG
KUBECONFIG=$(get KUBECONFIG)
state=$(get ALLSOURCE_ENV_DIR)
mkdir -p "$state/pids" "$state/run"

if [ "$real_node" = 1 ]; then
  step "building the operator and store-node"
  cargo build -q -p allsource-operator -p store-node --bins
else
  step "building the operator, store-node and the pod runner"
  cargo build -q -p allsource-operator -p store-node -p allsource-tests --bins
fi
bin=$CARGO_TARGET_DIR/debug

step "installing the CRDs"
kubectl apply --server-side --field-manager=allsource-run-local -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

if [ "$real_node" = 1 ]; then
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # Images as a user builds them (hack/images.sh), on the base image made here from Debian
  # packages, imported into the node's containerd under a registry name nobody can pull from.
  registry=allsource.local tag=run
  step "building the images into the node's containerd"
  DOCKER_HOST=$(get NODE_DOCKER_HOST) BIN_DIR=$bin BASE_IMAGE=local REGISTRY=$registry TAG=$tag \
    SAVE_DIR=$state/run/images hack/images.sh >&2
  for image in allsource-operator store-node; do
    ctr --address "$(get NODE_CONTAINERD_ADDRESS)" -n k8s.io images import \
      "$state/run/images/$image.tar" >/dev/null
  done
  taint=$(get NODE_TAINT_KEY)
  placement="\"nodeSelector\": {\"$taint\": \"true\"}, \"tolerations\": [{\"key\": \"$taint\", \"operator\": \"Exists\", \"effect\": \"NoSchedule\"}]"
  printf '{"replicas": 1, "watchNamespaces": ["%s"], "image": {"repository": "%s/allsource-operator", "tag": "%s", "pullPolicy": "Never"}, "storeNodeImages": ["%s/store-node"], %s}\n' \
    "$ns" "$registry" "$tag" "$registry" "$placement" >"$state/run/values.json"
  step "helm install of charts/allsource-operator into $ns"
  helm=$(get HELM)
  "${helm:-helm}" --kubeconfig "$KUBECONFIG" upgrade --install allsource-operator \
    charts/allsource-operator -n "$ns" -f "$state/run/values.json" >/dev/null
  kubectl rollout status deploy/allsource-operator -n "$ns" --timeout=240s >/dev/null
  step "applying config/samples/eventstore-selfhosted.yaml (image built here, the node's volumes)"
  kubectl patch --local -o yaml -f config/samples/eventstore-selfhosted.yaml --type merge -p "{
    \"spec\": {\"deletionPolicy\": \"Delete\", \"selfHosted\": {
      \"image\": \"$registry/store-node:$tag\", \"imagePullPolicy\": \"Never\",
      \"storage\": {\"storageClassName\": \"$(get NODE_STORAGE_CLASS)\"},
      \"podTemplate\": {$placement}}}}" | kubectl apply -n "$ns" --server-side -f - >/dev/null
  kubectl apply -n "$ns" --server-side -f config/samples/tenant-pooled.yaml >/dev/null
else
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

fi

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
if [ "$real_node" = 1 ]; then
  kubectl get pods -n "$ns" -o wide
  # The Secret's endpoint is the Service's DNS name, which a pod resolves; from this host the
  # owning node's pod IP (on the node's bridge) serves the same API.
  ip=$(kubectl get pod "$node" -n "$ns" -o jsonpath='{.status.podIP}')
  url=http://$ip:8080
else
port=""
for _ in $(seq 1 100); do
  port=$(kubectl get pod "$node" -n "$ns" -o jsonpath='{.metadata.annotations.allsource\.io/runner-port}' 2>/dev/null || true)
  [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.3
done
[ -n "$port" ] || { echo "no runner port for pod $node" >&2; exit 1; }
url=http://127.0.0.1:$port
fi

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

logs="$state/run/*.log"
[ "$real_node" = 0 ] || logs="kubectl logs -n $ns deploy/allsource-operator (and pod/orders-0..2)"
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
Logs: $logs      Stop everything: make env-down
EOF
