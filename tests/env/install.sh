#!/usr/bin/env bash
# Installs every server and tool the test environment runs, from package registries only
# (Debian, the Go module proxy, Maven Central, PyPI). Idempotent: each tool is built once into
# $ALLSOURCE_CACHE/bin/<tool>-<version>/ (default $HOME/.cache/allsource) and skipped when that
# directory already holds it, so a warm run takes seconds. Independent steps run in parallel.
#
# Usage: tests/env/install.sh [step...]   steps: apt kubernetes etcd kwok helm luahealth fake-gcs
#                                                 dynamodb moto firestore node coredns (default: all)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"
# shellcheck source=lib.sh
source "$here/lib.sh"

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# ---------------------------------------------------------------------------------------------
# Debian packages (one apt-get update, only when something is missing)

apt_missing() {
  local missing=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v ps >/dev/null || missing+=(procps)
  command -v setsid >/dev/null || missing+=(util-linux)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v promtool >/dev/null || missing+=(prometheus) # promtool checks the alert rules
  # The real node (up.sh node) and the images (hack/images.sh): containerd + runc, the CNI
  # plugins, dockerd to build the images, socat (the apiserver's address on the pod network).
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  command -v dockerd >/dev/null || missing+=(docker.io)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v socat >/dev/null || missing+=(socat)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v readelf >/dev/null || missing+=(binutils)
  echo "${missing[@]:-}"
}

step_apt() {
  local missing
  missing=$(apt_missing)
  if [ -z "$missing" ]; then
    echo "all Debian packages present"
    return 0
  fi
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing: $missing"
  "${sudo[@]}" apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends $missing
}

# ---------------------------------------------------------------------------------------------
# Go builds. Each writes into a temporary directory and renames it into place, so an
# interrupted build never leaves a half-filled cache directory behind.

go_into_cache() { # <dir-name> <command...>  runs the command with $out set to a fresh dir
  local name=$1
  shift
  local dest="$ALLSOURCE_BIN/$name"
  if [ -d "$dest" ]; then
    echo "cached: $dest"
    return 0
  fi
  mkdir -p "$ALLSOURCE_BIN"
  out=$(mktemp -d "$ALLSOURCE_BIN/.tmp-$name.XXXXXX")
  if "$@"; then
    chmod 755 "$out"
    mv "$out" "$dest"
    echo "built: $dest"
  else
    rm -rf "$out"
    return 1
  fi
}

k8s_ldflags() {
  local minor=${K8S_VERSION#*.}
  minor=${minor%%.*}
  local flags="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_kubernetes() {
  local modver
  modver=$(sed -n 's#^[[:space:]]*k8s.io/kubernetes v\([^[:space:]]*\).*#\1#p' "$here/go/k8s/go.mod" | head -1)
  if [ "$modver" != "$K8S_VERSION" ]; then
    echo "tests/env/go/k8s/go.mod is for v$modver, versions.sh says $K8S_VERSION:" \
      "run tests/env/go/gen-k8s-mod.sh and commit the result" >&2
    return 1
  fi
  (cd "$here/go/k8s" && go build -trimpath -ldflags "$(k8s_ldflags)" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
}
step_kubernetes() { go_into_cache "kubernetes-$K8S_VERSION" build_kubernetes; }

# The real node's kubelet and kube-proxy, from the same module (a separate cache dir, so adding
# them did not invalidate the control plane's), and the pause image: a static binary of
# go/pause packed as a docker-archive tar that `ctr images import` reads (no registry, no docker).
build_kube_node() {
  (cd "$here/go/k8s" && go build -trimpath -ldflags "$(k8s_ldflags)" -o "$out/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
}
build_pause() {
  (cd "$here/go/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/pause" .)
  python3 - "$out" "allsource.local/pause:$(pause_key)" <<'PY'
import hashlib, io, json, sys, tarfile
out, ref = sys.argv[1], sys.argv[2]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
    info = t.gettarinfo(f"{out}/pause", arcname="pause")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o555
    with open(f"{out}/pause", "rb") as f:
        t.addfile(info, f)
layer = layer.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "history": [{"created_by": "tests/env/go/pause"}]},
    sort_keys=True).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode()
with tarfile.open(f"{out}/pause-image.tar", "w") as t:
    for name, data in (("layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
print(ref)
PY
}
build_luahealth() {
  (cd "$here/go/luahealth" && go build -trimpath -ldflags "-s -w" -o "$out/luahealth" .)
}
step_luahealth() { go_into_cache "luahealth-$(luahealth_key)" build_luahealth; }
build_provisioner() {
  (cd "$here/go/provisioner" && go build -trimpath -ldflags "-s -w" -o "$out/provisioner" .)
}
step_node() {
  go_into_cache "kubernetes-node-$K8S_VERSION" build_kube_node
  go_into_cache "pause-$(pause_key)" build_pause
  go_into_cache "provisioner-$(provisioner_key)" build_provisioner
}

build_etcd() {
  local v
  v=$(sed -n 's#^[[:space:]]*go.etcd.io/etcd/server/v3 v\([^[:space:]]*\).*#\1#p' "$here/go/etcd/go.mod" | head -1)
  if [ "$v" != "$ETCD_VERSION" ]; then
    echo "tests/env/go/etcd/go.mod pins etcd $v, versions.sh says $ETCD_VERSION:" \
      "run 'go get -tool go.etcd.io/etcd/server/v3@v$ETCD_VERSION && go mod tidy' there" >&2
    return 1
  fi
  (cd "$here/go/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)
}
step_etcd() { go_into_cache "etcd-$ETCD_VERSION" build_etcd; }

# These modules have no replace directives, so `go install pkg@version` (which verifies
# against the module's own go.sum) is reproducible as it stands.
go_install() { GOBIN="$out" go install -trimpath -ldflags "-s -w" "$1"; }
# kwok >= 0.8 has no built-in stages: assemble its "fast" set (node initialize + heartbeat with
# lease, pod ready/complete/delete) from the module's own kustomize files into a config file.
build_kwok() {
  go_install "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  local src f
  src=$(go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"
    cat "$src/kustomize/stage/$f"
  done >"$out/stages.yaml"
}
step_kwok() { go_into_cache "kwok-$KWOK_VERSION" build_kwok; }
# Stamp helm's own version and its default Kubernetes version (used by `helm template` without
# a cluster; v1.20 otherwise) the way helm's Makefile does, from its client-go requirement.
build_helm() {
  local mod minor p=helm.sh/helm/v3
  mod=$(go mod download -json "$p@v$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  minor=$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$mod" | head -1)
  GOBIN="$out" go install -trimpath -ldflags "-s -w -X $p/internal/version.version=v$HELM_VERSION \
    -X $p/internal/version.gitTreeState=clean \
    -X $p/pkg/lint/rules.k8sVersionMajor=1 -X $p/pkg/lint/rules.k8sVersionMinor=$minor \
    -X $p/pkg/chartutil.k8sVersionMajor=1 -X $p/pkg/chartutil.k8sVersionMinor=$minor" \
    "$p/cmd/helm@v$HELM_VERSION"
}
step_helm() { go_into_cache "helm-$HELM_VERSION" build_helm; }
step_coredns() {
  go_into_cache "coredns-$COREDNS_VERSION" go_install "github.com/coredns/coredns@v$COREDNS_VERSION"
}
step_fake_gcs() {
  go_into_cache "fake-gcs-server-$FAKE_GCS_VERSION" go_install \
    "github.com/fsouza/fake-gcs-server@v$FAKE_GCS_VERSION"
}

# ---------------------------------------------------------------------------------------------
# DynamoDB Local from Maven Central, moto from PyPI, the Firestore emulator from gcloud.

fetch_dynamodb() {
  local pomver
  pomver=$(sed -n 's#.*<dynamodb.local.version>\(.*\)</dynamodb.local.version>.*#\1#p' "$here/dynamodb/pom.xml")
  if [ "$pomver" != "$DYNAMODB_LOCAL_VERSION" ]; then
    echo "dynamodb/pom.xml has $pomver, versions.sh says $DYNAMODB_LOCAL_VERSION" >&2
    return 1
  fi
  mvn -q -B -ntp -f "$here/dynamodb/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$out" -Dmdep.stripVersion=true
  [ -f "$out/DynamoDBLocal.jar" ] && [ -f "$out/libsqlite4java-linux-amd64.so" ]
}
step_dynamodb() { go_into_cache "dynamodb-local-$DYNAMODB_LOCAL_VERSION" fetch_dynamodb; }

step_moto() {
  local venv="$ALLSOURCE_CACHE/venv-moto-$MOTO_VERSION"
  if [ -f "$venv/.complete" ]; then
    echo "cached: $venv"
    return 0
  fi
  # A venv hard-codes its own path in its scripts, so it is built in place; the marker file
  # tells a finished venv from an interrupted one.
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  touch "$venv/.complete"
  echo "built: $venv"
}

step_firestore() {
  if ! command -v gcloud >/dev/null; then
    echo "gcloud is not installed: install the Google Cloud CLI (Debian package google-cloud-cli)" >&2
    return 1
  fi
  if gcloud_firestore_present; then
    echo "cloud-firestore-emulator present"
    return 0
  fi
  # The component lives in a separate Debian package when gcloud came from apt.
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  if dpkg -s google-cloud-cli >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq google-cloud-cli-firestore-emulator
  else
    gcloud components install cloud-firestore-emulator --quiet
  fi
  gcloud_firestore_present
}

# ---------------------------------------------------------------------------------------------

run_step() { # <name> : runs step_<name>, logs to a file, prints the outcome and time
  local name=$1 fn=step_${1//-/_} t0 rc=0
  t0=$(date +%s)
  "$fn" >"$logs/$name.log" 2>&1 || rc=$?
  local dt=$(($(date +%s) - t0))
  if [ "$rc" -eq 0 ]; then
    printf '[install] %-12s ok     %4ss  %s\n' "$name" "$dt" "$(tail -1 "$logs/$name.log")"
  else
    printf '[install] %-12s FAILED %4ss (exit %s), last lines of its log:\n' "$name" "$dt" "$rc"
    tail -40 "$logs/$name.log" | sed 's/^/    /'
  fi
  return "$rc"
}

run_chain() { # <step...> : runs steps one after another, stops at the first failure
  local s
  for s in "$@"; do run_step "$s" || return 1; done
}

main() {
  local want=("$@")
  [ ${#want[@]} -gt 0 ] || want=(apt kubernetes etcd kwok helm luahealth fake-gcs dynamodb moto firestore node coredns)
  local t0 s
  t0=$(date +%s)
  mkdir -p "$ALLSOURCE_CACHE"
  # apt first: later steps may need what it installs.
  for s in "${want[@]}"; do [ "$s" != apt ] || run_step apt; done
  # The Kubernetes build is the long pole (minutes on 2 cores): one chain for it, one for the
  # small Go builds, the downloads (I/O bound) next to them.
  local chain_k=() chain_go=() chain_dl=()
  for s in "${want[@]}"; do
    case "$s" in
      apt) ;;
      # node after kubernetes: its packages are mostly in Go's build cache by then.
      kubernetes | node) chain_k+=("$s") ;;
      etcd | kwok | helm | luahealth | fake-gcs) chain_go+=("$s") ;;
      # CoreDNS (a long Go build) after the downloads: the shortest chain otherwise.
      dynamodb | moto | firestore | coredns) chain_dl+=("$s") ;;
      *)
        echo "unknown step: $s" >&2
        return 2
        ;;
    esac
  done
  local pids=() rc=0 p
  [ ${#chain_k[@]} -eq 0 ] || { run_chain "${chain_k[@]}" & pids+=($!); }
  [ ${#chain_go[@]} -eq 0 ] || { run_chain "${chain_go[@]}" & pids+=($!); }
  [ ${#chain_dl[@]} -eq 0 ] || { run_chain "${chain_dl[@]}" & pids+=($!); }
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  echo "[install] total $(($(date +%s) - t0))s$([ "$rc" -eq 0 ] || echo ' (with failures)')"
  return "$rc"
}

main "$@"
