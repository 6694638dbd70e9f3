#!/usr/bin/env bash
# Stops every server tests/env/up.sh started (whole process groups, so children such as the
# Firestore emulator's java process go too), removes the state dir and the env file.
# Safe to call twice and after a half-failed up.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=node.sh
source "$here/node.sh"
ENV_FILE=${ALLSOURCE_ENV_FILE:-$here/.env}
STOP_TIMEOUT=${ALLSOURCE_STOP_TIMEOUT:-15}

D=""
if [ -f "$ENV_FILE" ]; then
  D=$(sed -n 's/^ALLSOURCE_ENV_DIR=//p' "$ENV_FILE" | head -1)
fi
D=${D:-${ALLSOURCE_ENV_DIR:-}}

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

stop_group() { # <name> <pgid>
  local name=$1 pgid=$2 sig=KILL deadline
  group_alive "$pgid" || return 0
  # Every state is thrown away, so there is nothing to shut down gracefully (and a graceful
  # kube-apiserver waits for etcd, which is stopping at the same time). PostgreSQL gets its
  # "fast" shutdown (SIGINT), which stops its backends too: they run in sessions of their own.
  [ "$name" != postgres ] || sig=INT
  kill -s "$sig" -- "-$pgid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while group_alive "$pgid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "[down] $name (group $pgid) still running ${STOP_TIMEOUT}s after SIG$sig, killing" >&2
      kill -s KILL -- "-$pgid" 2>/dev/null || true
      sleep 0.2
      break
    fi
    sleep 0.1
  done
}

# tests/env/down.sh --node-leftovers: only the real node's machine-wide parts (bridge, iptables),
# for when its state dir is gone.
if [ "${1:-}" = --node-leftovers ]; then
  node_network_down "$(bin_kube_proxy)"
  echo "[down] real node network removed" >&2
  exit 0
fi

node=""
[ -z "$D" ] || [ ! -f "$D/node/.cleanup" ] || node=$D/node
if [ -n "$node" ]; then
  # The kubelet first, so that it restarts nothing, then every container of the node.
  if [ -f "$D/pids/kubelet.pid" ]; then
    stop_group kubelet "$(cat "$D/pids/kubelet.pid")"
    rm -f "$D/pids/kubelet.pid"
  fi
  node_kill_containers "$node"
fi

if [ -n "$D" ] && [ -d "$D/pids" ]; then
  pids=()
  for f in "$D"/pids/*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    pgid=$(cat "$f")
    if [[ "$pgid" =~ ^[0-9]+$ ]]; then
      stop_group "$name" "$pgid" &
      pids+=($!)
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  rm -f "$D"/pids/*.pid
fi

if [ -n "$node" ]; then
  node_kill_containers "$node"
  node_kill_leftovers "$node"
  node_unmount "$D"
  node_network_down "$(bin_kube_proxy)"
  node_logs_links_down "$node"
fi

# Only remove what up.sh created: a dir holding its layout.
if [ -n "$D" ] && [ -d "$D/env.d" ]; then
  rm -rf "$D"
fi
rm -f "$ENV_FILE" "$ENV_FILE.tmp"
echo "[down] stopped${D:+ (state $D removed)}" >&2
