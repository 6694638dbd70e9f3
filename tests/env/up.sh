#!/usr/bin/env bash
# Starts the real test servers on free loopback ports and writes the env file the tests read
# (tests/env/.env, or $ALLSOURCE_ENV_FILE). Services: kube (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok + two simulated nodes), postgres, dynamodb,
# s3 (moto), gcs (fake-gcs-server), firestore (gcloud emulator), and node: a real kubelet node
# with containerd (needs root and kube; tests/env/node.sh). All by default (node only as root,
# which it needs; tests/tests/real_node.rs then fails in CI and says SKIPPED elsewhere); they start in
# parallel, each in its own process group, with state under ${ALLSOURCE_ENV_DIR:-$(mktemp -d)}
# (never inside the clone). Stop everything with tests/env/down.sh.
#
# Usage: tests/env/up.sh [kube|postgres|dynamodb|s3|gcs|firestore|node ...]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=node.sh
source "$here/node.sh"

ALL_SERVICES=(kube postgres dynamodb s3 gcs firestore node)
DEFAULT_SERVICES=(kube postgres dynamodb s3 gcs firestore)
[ "$(id -u)" -ne 0 ] || DEFAULT_SERVICES+=(node)
ENV_FILE=${ALLSOURCE_ENV_FILE:-$here/.env}
READY_TIMEOUT=${ALLSOURCE_READY_TIMEOUT:-120}

log() { echo "[up] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Prints N distinct free loopback ports. Asking the kernel for all of them at once keeps them
# distinct; another process could still take one before we bind it, which is unlikely enough.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# start <name> <command...>: runs the command in its own session/process group with its output
# in $D/logs/<name>.log and records the group id for down.sh.
start() {
  local name=$1
  shift
  # Its own working directory: some servers drop files there (DynamoDB Local's metadata).
  mkdir -p "$D/run/$name"
  (cd "$D/run/$name" && exec setsid "$@" </dev/null >"$D/logs/$name.log" 2>&1) &
  echo $! >"$D/pids/$name.pid"
}

# wait_for <process> <command...>: retries the command until it succeeds; fails when the process
# started under that name exits or READY_TIMEOUT passes.
wait_for() {
  local what=$1 deadline=$((SECONDS + READY_TIMEOUT)) pid
  shift
  pid=$(cat "$D/pids/$what.pid" 2>/dev/null || true)
  until "$@" >/dev/null 2>&1; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      log "$what exited during start-up (log: $D/logs/$what.log)"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$what not ready after ${READY_TIMEOUT}s"
      return 1
    fi
    sleep 0.2
  done
}

http_answers() { # any HTTP status at all means the server is listening
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1") || true
  [ "${code:-000}" != 000 ]
}

require_file() { [ -e "$1" ] || die "$1 is missing: run tests/env/install.sh"; }

# ---------------------------------------------------------------------------------------------

kube_pki() {
  local pki=$D/kube/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=allsource-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1,IP:10.0.16.1\n' \
    >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  # The apiserver's client certificate towards kubelets (logs, exec, port-forward of a real node).
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/kubelet-client.key" -out "$pki/kubelet-client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/kubelet-client.ext"
  openssl x509 -req -in "$pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$pki/kubelet-client.ext" -out "$pki/kubelet-client.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  KUBE_TOKEN=$(openssl rand -hex 24)
  echo "$KUBE_TOKEN,allsource-test-admin,allsource-test-admin,\"system:masters\"" >"$pki/tokens.csv"
}

kube_kubeconfig() { # <file> <server>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: allsource-test
  cluster:
    server: $2
    certificate-authority: $D/kube/pki/ca.crt
users:
- name: allsource-test-admin
  user:
    token: $KUBE_TOKEN
contexts:
- name: allsource-test
  context:
    cluster: allsource-test
    user: allsource-test-admin
    namespace: default
current-context: allsource-test
EOF
}

kube_api() { # <method> <path> [json body]
  curl -sf --max-time 5 --cacert "$D/kube/pki/ca.crt" -H "Authorization: Bearer $KUBE_TOKEN" \
    -H 'Content-Type: application/json' -X "$1" "$KUBE_APISERVER$2" ${3:+--data "$3"}
}

kwok_node_json() { # <name>
  cat <<EOF
{"apiVersion":"v1","kind":"Node","metadata":{"name":"$1",
 "annotations":{"node.alpha.kubernetes.io/ttl":"0","kwok.x-k8s.io/node":"fake"},
 "labels":{"kubernetes.io/hostname":"$1","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64",
  "kubernetes.io/role":"agent","node-role.kubernetes.io/agent":"","type":"kwok"}},
 "status":{"allocatable":{"cpu":"32","memory":"256Gi","pods":"110"},
  "capacity":{"cpu":"32","memory":"256Gi","pods":"110"},
  "nodeInfo":{"architecture":"amd64","kubeletVersion":"v$K8S_VERSION","operatingSystem":"linux"},
  "phase":"Running"}}
EOF
}

up_kube() {
  local apiserver kcm scheduler etcd kwok
  apiserver=$(bin_kube_apiserver) kcm=$(bin_kube_controller_manager)
  scheduler=$(bin_kube_scheduler) etcd=$(bin_etcd) kwok=$(bin_kwok)
  for f in "$apiserver" "$kcm" "$scheduler" "$etcd" "$kwok" "$(dirname "$kwok")/stages.yaml"; do require_file "$f"; done
  local ports ep pp ap
  ports=$(free_ports 3)
  read -r ep pp ap <<<"$ports"
  mkdir -p "$D/kube/etcd"
  kube_pki
  KUBE_APISERVER=https://127.0.0.1:$ap
  kube_kubeconfig "$D/kube/admin.kubeconfig" "$KUBE_APISERVER"
  local pki=$D/kube/pki

  start etcd "$etcd" --name allsource-test --data-dir "$D/kube/etcd" \
    --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "allsource-test=http://127.0.0.1:$pp" --unsafe-no-fsync \
    --quota-backend-bytes=2147483648 --log-level=warn
  wait_for etcd curl -sf --max-time 2 "http://127.0.0.1:$ep/health"

  start kube-apiserver "$apiserver" --etcd-servers="http://127.0.0.1:$ep" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$ap" \
    --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --kubelet-client-certificate="$pki/kubelet-client.crt" --kubelet-client-key="$pki/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer="$KUBE_APISERVER" --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" --endpoint-reconciler-type=none \
    --profiling=false --v=0
  wait_for kube-apiserver kube_api GET /readyz

  start kube-controller-manager "$kcm" --kubeconfig="$D/kube/admin.kubeconfig" \
    --authentication-kubeconfig="$D/kube/admin.kubeconfig" \
    --authorization-kubeconfig="$D/kube/admin.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --use-service-account-credentials=false --cluster-name=allsource-test \
    --concurrent-statefulset-syncs=5 --profiling=false --v=0
  start kube-scheduler "$scheduler" --kubeconfig="$D/kube/admin.kubeconfig" \
    --authentication-kubeconfig="$D/kube/admin.kubeconfig" \
    --authorization-kubeconfig="$D/kube/admin.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --profiling=false --v=0
  start kwok "$kwok" --kubeconfig="$D/kube/admin.kubeconfig" --config="$(dirname "$kwok")/stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.0.1.0/24 --node-ip=10.0.0.2 --node-lease-duration-seconds=40

  local n
  for n in kwok-node-0 kwok-node-1; do
    kube_api POST /api/v1/nodes "$(kwok_node_json "$n")" >/dev/null ||
      die "could not create node $n"
  done
  # Ready nodes prove kwok works; the default ServiceAccount proves the controller manager's
  # token and service-account controllers do (pods are rejected until it exists).
  wait_for kwok kube_nodes_ready 2
  wait_for kube-controller-manager kube_api GET /api/v1/namespaces/default/serviceaccounts/default

  cat >"$D/env.d/kube.env" <<EOF
KUBECONFIG=$D/kube/admin.kubeconfig
KUBE_APISERVER=$KUBE_APISERVER
KUBE_CA_FILE=$pki/ca.crt
KUBE_TOKEN=$KUBE_TOKEN
KUBE_SA_SIGNING_KEY=$pki/sa.key
KUBE_VERSION=v$K8S_VERSION
EOF
}

kube_nodes_ready() { # <count>
  local ready
  ready=$(kube_api GET /api/v1/nodes | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["items"]
print(sum(any(c["type"] == "Ready" and c["status"] == "True"
              for c in n.get("status", {}).get("conditions", [])) for n in nodes))')
  [ "$ready" -ge "$1" ]
}

up_postgres() {
  local pgbin port
  pgbin=$(dir_pg_bin)
  [ -n "$pgbin" ] || die "PostgreSQL is not installed: run tests/env/install.sh"
  port=$(free_ports 1)
  local dir=$D/postgres as=()
  mkdir -p "$dir"
  # initdb refuses to run as root: run the server as the postgres user the package creates.
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$dir"
    as=(runuser -u postgres --)
    "${as[@]}" test -w "$dir" || die "the postgres user cannot reach $dir: make its parents world-executable"
  fi
  "${as[@]}" "$pgbin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale \
    --no-sync >"$D/logs/postgres-initdb.log" 2>&1 || die "initdb failed, see $D/logs/postgres-initdb.log"
  # fsync=off and friends trade durability for speed: no test kills PostgreSQL.
  start postgres "${as[@]}" "$pgbin/postgres" -D "$dir/data" -p "$port" -k "$dir" \
    -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB
  wait_for postgres "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres
  echo "PG_URL=postgres://postgres@127.0.0.1:$port/postgres" >"$D/env.d/postgres.env"
}

up_dynamodb() {
  local lib port
  lib=$(dir_dynamodb)
  require_file "$lib/DynamoDBLocal.jar"
  port=$(free_ports 1)
  start dynamodb java -Xmx512m -Djava.library.path="$lib" -cp "$lib/*" \
    software.amazon.dynamodb.services.local.main.ServerRunner -inMemory -sharedDb -port "$port" \
    -disableTelemetry
  wait_for dynamodb http_answers "http://127.0.0.1:$port/"
  echo "DYNAMODB_ENDPOINT=http://127.0.0.1:$port" >"$D/env.d/dynamodb.env"
}

up_s3() {
  local moto port
  moto=$(bin_moto)
  require_file "$moto"
  port=$(free_ports 1)
  start s3 "$moto" -H 127.0.0.1 -p "$port"
  wait_for s3 curl -sf --max-time 2 "http://127.0.0.1:$port/moto-api/"
  cat >"$D/env.d/s3.env" <<EOF
S3_ENDPOINT=http://127.0.0.1:$port
S3_ACCESS_KEY=allsourcetest
S3_SECRET_KEY=allsourcetestsecret
EOF
}

up_gcs() {
  local gcs port
  gcs=$(bin_fake_gcs)
  require_file "$gcs"
  port=$(free_ports 1)
  start gcs "$gcs" -backend memory -scheme http -host 127.0.0.1 -port "$port" \
    -public-host "127.0.0.1:$port" -external-url "http://127.0.0.1:$port" -log-level warn
  wait_for gcs curl -sf --max-time 2 "http://127.0.0.1:$port/storage/v1/b"
  echo "GCS_ENDPOINT=http://127.0.0.1:$port" >"$D/env.d/gcs.env"
}

up_firestore() {
  local port
  command -v gcloud >/dev/null || die "gcloud is not installed"
  port=$(free_ports 1)
  # gcloud starts a java child: the process group (see start) lets down.sh stop both.
  start firestore gcloud emulators firestore start --host-port="127.0.0.1:$port" --quiet
  wait_for firestore curl -sf --max-time 2 "http://127.0.0.1:$port/"
  cat >"$D/env.d/firestore.env" <<EOF
FIRESTORE_EMULATOR_HOST=127.0.0.1:$port
FIRESTORE_PROJECT=allsource-test
EOF
}

# ---------------------------------------------------------------------------------------------

main() {
  local services=("$@") s
  [ ${#services[@]} -gt 0 ] || services=("${DEFAULT_SERVICES[@]}")
  for s in "${services[@]}"; do
    [[ " ${ALL_SERVICES[*]} " == *" $s "* ]] || die "unknown service '$s' (known: ${ALL_SERVICES[*]})"
  done
  if [[ " ${services[*]} " == *" node "* ]] && [[ " ${services[*]} " != *" kube "* ]]; then
    die "the node service needs kube: tests/env/up.sh kube node"
  fi
  if [ -f "$ENV_FILE" ]; then
    local old
    old=$(sed -n 's/^ALLSOURCE_ENV_DIR=//p' "$ENV_FILE")
    if [ -n "$old" ] && compgen -G "$old/pids/*.pid" >/dev/null; then
      die "an environment is already up ($ENV_FILE, state in $old): run tests/env/down.sh first"
    fi
  fi

  local t0=$SECONDS
  D=${ALLSOURCE_ENV_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/allsource-env.XXXXXX")}
  mkdir -p "$D/logs" "$D/pids" "$D/env.d"
  chmod 755 "$D"
  # Written first so down.sh finds the state dir even when start-up fails half way.
  printf 'ALLSOURCE_ENV_DIR=%s\n' "$D" >"$ENV_FILE"

  local pids=() failed=()
  for s in "${services[@]}"; do
    ("up_$s") &
    pids+=($!)
  done
  local i
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then failed+=("${services[$i]}"); fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    log "failed to start: ${failed[*]}; logs:"
    for f in "$D"/logs/*.log; do
      echo "--- $f" >&2
      tail -15 "$f" >&2
    done
    "$here/down.sh" >&2 || true
    exit 1
  fi

  {
    printf 'ALLSOURCE_ENV_DIR=%s\n' "$D"
    printf 'ALLSOURCE_SERVICES=%s\n' "$(
      IFS=,
      echo "${services[*]}"
    )"
    printf 'HELM=%s\n' "$(bin_helm)"
    printf 'LUAHEALTH=%s\n' "$(bin_luahealth)"
    printf 'KWOK=%s\n' "$(bin_kwok)"
    cat "$D"/env.d/*.env
  } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  log "up in $((SECONDS - t0))s: ${services[*]}; env file $ENV_FILE, state $D"
}

main "$@"
