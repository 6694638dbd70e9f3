# The real node of the test environment (service `node` of up.sh; cleaned up by down.sh): a
# private containerd + runc, a kubelet registered as Node `allsource-node` with its own client
# certificate, kube-proxy (iptables), a CNI bridge on a fixed pod CIDR, a private dockerd that
# builds the images (hack/images.sh), CoreDNS as the cluster DNS on the node IP, a hostPath
# volume provisioner (StorageClass allsource-hostpath), and socat giving the apiserver an address on the pod
# network. Sourced by up.sh and down.sh; needs root.
#
# Network (fixed, machine-wide, so one real node per machine):
#   pod CIDR       10.0.16.0/24 on bridge allsrc0, gateway = node IP = 10.0.16.1
#   Service CIDR   10.0.0.0/24 (the apiserver's), routed to the bridge; `kubernetes` ->
#                  10.0.16.1:6443 (socat -> the apiserver on 127.0.0.1)
#   kwok's fake pod CIDR is 10.0.1.0/24 (no packets: kwok pods have no network)
# Nothing leaves the machine: no masquerading (CNI ipMasq false, kube-proxy masquerades only
# Service traffic onto the bridge), IP forwarding is switched on for the bridge only
# (net.ipv4.conf.allsrc0.forwarding; the global switch is untouched), and chain ALLSRC-NODE in
# the mangle table's FORWARD drops every forwarded packet entering or leaving the bridge from or to
# another interface. NodePorts listen on 10.0.16.1 only; kube-proxy leaves route_localnet off.
# shellcheck shell=bash

NODE_NAME=allsource-node
NODE_BRIDGE=allsrc0
NODE_POD_CIDR=10.0.16.0/24
NODE_IP=10.0.16.1
NODE_SERVICE_CIDR=10.0.0.0/24 # the apiserver's --service-cluster-ip-range
NODE_APISERVER_PORT=6443
NODE_FW_CHAIN=ALLSRC-NODE
NODE_CNI_NETWORK=allsource-node
# Taint and label of the real node: only pods that tolerate the taint land there, so the
# existing tests' pods keep going to kwok's nodes (or the pod runner's), as before.
NODE_TAINT_KEY=allsource.io/real-node
NODE_LABEL=allsource.io/real-node
# Dynamic volumes: hostPath directories below the state dir, made by go/provisioner.
NODE_STORAGE_CLASS=allsource-hostpath
NODE_PROVISIONER=allsource.io/hostpath

node_sign() { # <name> <subject> <extensions> : key + certificate signed by the env's CA
  local pki=$D/kube/pki out=$D/node/pki
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$out/$1.key" -out "$out/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$out/$1.ext"
  openssl x509 -req -in "$out/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$out/$1.ext" -out "$out/$1.crt" 2>/dev/null
}

node_kubeconfig() { # <file> <cert name>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: allsource-test
  cluster:
    server: $KUBE_APISERVER
    certificate-authority: $D/kube/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $D/node/pki/$2.crt
    client-key: $D/node/pki/$2.key
contexts:
- name: default
  context: {cluster: allsource-test, user: $2}
current-context: default
EOF
}

node_containerd_config() { # <pause image ref>
  local n=$D/node
  cat >"$n/containerd.toml" <<EOF
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$n/containerd.sock"
[ttrpc]
  address = "$n/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$1"
  # Without these two every pod sandbox fails here with runc's "can't get final child's PID
  # from pipe: EOF" (see the notes).
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$n/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni/net.d"
    max_conf_num = 1
EOF
}

node_cni_config() {
  mkdir -p "$D/node/cni/net.d" "$D/node/cni/ipam"
  cat >"$D/node/cni/net.d/10-allsource.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "$NODE_CNI_NETWORK", "plugins": [
  {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$D/node/cni/ipam",
            "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}
]}
EOF
}

node_kubelet_config() { # <healthz port>
  local n=$D/node
  cat >"$n/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $1
tlsCertFile: $n/pki/kubelet-serving.crt
tlsPrivateKeyFile: $n/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $D/kube/pki/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$n/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
podLogsDir: $n/pod-logs
volumePluginDir: $n/kubelet-plugins
resolvConf: $n/resolv.conf
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 60s
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
maxPods: 60
EOF
}

# CoreDNS on the node IP: cluster names only. There is no `forward`: a name outside
# cluster.local is never sent to any other resolver.
node_coredns_config() { # <ready port>
  cat >"$D/node/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:$1
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $D/kube/admin.kubeconfig allsource-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
EOF
}

node_proxy_config() { # <healthz port> <metrics port>
  cat >"$D/node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $D/node/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $NODE_POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$1
metricsBindAddress: 127.0.0.1:$2
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false, syncPeriod: 10s, minSyncPeriod: 0s}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

node_network_up() {
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    die "bridge $NODE_BRIDGE exists: a real node is up already (one per machine), or a previous one was not cleaned up (run tests/env/down.sh with its env file, or tests/env/down.sh --node-leftovers)"
  fi
  if ip -4 -o addr show | grep -q ' 10\.0\.16\.'; then
    die "an interface of this machine has an address in $NODE_POD_CIDR: the real node's pod CIDR would collide"
  fi
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Service addresses are routed to the bridge: a ClusterIP kube-proxy has not programmed (yet)
  # goes nowhere instead of to the machine's default gateway.
  ip route add "$NODE_SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  # Routing between pods and Services on the bridge needs forwarding for packets that arrive on
  # it; only this interface's switch is turned on.
  sysctl -q -w "net.ipv4.conf.$NODE_BRIDGE.forwarding=1"
  sysctl -q -w "net.ipv6.conf.$NODE_BRIDGE.disable_ipv6=1" 2>/dev/null || true
  [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" = 1 ] ||
    modprobe br_netfilter 2>/dev/null || true
  # In mangle's FORWARD, which runs before filter's and which neither kube-proxy nor the
  # kubelet touches: their ACCEPT rules in filter's FORWARD cannot come first.
  iptables -w -t mangle -N "$NODE_FW_CHAIN" 2>/dev/null || iptables -w -t mangle -F "$NODE_FW_CHAIN"
  iptables -w -t mangle -A "$NODE_FW_CHAIN" -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
  iptables -w -t mangle -A "$NODE_FW_CHAIN" ! -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j DROP
  iptables -w -t mangle -A "$NODE_FW_CHAIN" -j RETURN
  iptables -w -t mangle -I FORWARD 1 -j "$NODE_FW_CHAIN"
  # The resolver of pods with dnsPolicy Default: the cluster DNS too, so no name is ever resolved
  # through the machine's resolver.
  printf 'nameserver %s\noptions ndots:5 timeout:1 attempts:1\n' "$NODE_IP" >"$D/node/resolv.conf"
}

# Sets the `kubernetes` Service's endpoints (the apiserver runs with
# --endpoint-reconciler-type=none) to the apiserver's address on the pod network.
node_kubernetes_endpoints() {
  kube_api PUT /api/v1/namespaces/default/endpoints/kubernetes "{\"apiVersion\":\"v1\",\"kind\":\"Endpoints\",
    \"metadata\":{\"name\":\"kubernetes\",\"namespace\":\"default\",\"labels\":{\"endpointslice.kubernetes.io/skip-mirror\":\"true\"}},
    \"subsets\":[{\"addresses\":[{\"ip\":\"$NODE_IP\"}],\"ports\":[{\"name\":\"https\",\"port\":$NODE_APISERVER_PORT,\"protocol\":\"TCP\"}]}]}" >/dev/null ||
    kube_api POST /api/v1/namespaces/default/endpoints "{\"apiVersion\":\"v1\",\"kind\":\"Endpoints\",
    \"metadata\":{\"name\":\"kubernetes\",\"namespace\":\"default\",\"labels\":{\"endpointslice.kubernetes.io/skip-mirror\":\"true\"}},
    \"subsets\":[{\"addresses\":[{\"ip\":\"$NODE_IP\"}],\"ports\":[{\"name\":\"https\",\"port\":$NODE_APISERVER_PORT,\"protocol\":\"TCP\"}]}]}" >/dev/null
  local slice="{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",
    \"metadata\":{\"name\":\"kubernetes\",\"namespace\":\"default\",\"labels\":{\"kubernetes.io/service-name\":\"kubernetes\",\"endpointslice.kubernetes.io/managed-by\":\"allsource-test-env\"}},
    \"addressType\":\"IPv4\",\"endpoints\":[{\"addresses\":[\"$NODE_IP\"],\"conditions\":{\"ready\":true}}],
    \"ports\":[{\"name\":\"https\",\"port\":$NODE_APISERVER_PORT,\"protocol\":\"TCP\"}]}"
  kube_api PUT /apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes "$slice" >/dev/null ||
    kube_api POST /apis/discovery.k8s.io/v1/namespaces/default/endpointslices "$slice" >/dev/null
}

node_ready() {
  kube_api GET "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
n = json.load(sys.stdin)
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", [])) else 1)'
}

up_node() {
  [ "$(id -u)" -eq 0 ] || die "the real node needs root (containerd, kubelet, iptables, network namespaces)"
  local kubelet proxy pause_dir coredns prov b
  kubelet=$(bin_kubelet) proxy=$(bin_kube_proxy) pause_dir=$(dir_pause) coredns=$(bin_coredns)
  prov=$(bin_provisioner)
  for b in "$kubelet" "$proxy" "$coredns" "$prov" "$pause_dir/pause-image.tar" /usr/lib/cni/bridge /usr/lib/cni/host-local \
    /usr/lib/cni/loopback; do require_file "$b"; done
  for b in containerd runc ctr dockerd socat iptables ip; do
    command -v "$b" >/dev/null || die "$b is missing: run tests/env/install.sh"
  done
  local n=$D/node
  mkdir -p "$n/pki" "$n/pod-logs" "$n/kubelet" "$n/kubelet-plugins" "$n/docker" "$n/docker-run"
  # Tells down.sh to clean the machine-wide parts (bridge, iptables, mounts), even half made.
  touch "$n/.cleanup"
  node_network_up
  node_cni_config
  local pause_ref
  pause_ref=allsource.local/pause:$(pause_key)
  node_containerd_config "$pause_ref"
  start containerd containerd --config "$n/containerd.toml" --log-level warn
  echo '{}' >"$n/docker-daemon.json"
  start dockerd dockerd --config-file "$n/docker-daemon.json" --data-root "$n/docker" \
    --exec-root "$n/docker-run" --host "unix://$n/docker.sock" --pidfile "$n/docker.pid" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    --userland-proxy=false --log-level warn
  wait_for containerd ctr --address "$n/containerd.sock" version
  ctr --address "$n/containerd.sock" -n k8s.io images import --no-unpack=false \
    "$pause_dir/pause-image.tar" >/dev/null

  # The control plane: its CA signs our certificates, its address is the kubelet's.
  local deadline=$((SECONDS + READY_TIMEOUT))
  until [ -f "$D/env.d/kube.env" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "kube did not come up: the node needs it (up.sh kube node)"
    sleep 0.3
  done
  KUBE_APISERVER=$(sed -n 's/^KUBE_APISERVER=//p' "$D/env.d/kube.env")
  KUBE_TOKEN=$(sed -n 's/^KUBE_TOKEN=//p' "$D/env.d/kube.env")
  node_sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" \
    "extendedKeyUsage=clientAuth"
  node_sign kubelet-serving "/CN=$NODE_NAME" \
    "$(printf 'extendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:%s' "$NODE_IP" "$NODE_NAME")"
  node_sign kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  node_kubeconfig "$n/kubelet.kubeconfig" kubelet
  node_kubeconfig "$n/kube-proxy.kubeconfig" kube-proxy
  local ports hz phz pmp dnsr
  ports=$(free_ports 4)
  read -r hz phz pmp dnsr <<<"$ports"
  node_kubelet_config "$hz"
  node_proxy_config "$phz" "$pmp"
  node_coredns_config "$dnsr"

  local ap=${KUBE_APISERVER##*:}
  start apiserver-bridge socat "TCP-LISTEN:$NODE_APISERVER_PORT,bind=$NODE_IP,reuseaddr,fork" \
    "TCP:127.0.0.1:$ap"
  node_kubernetes_endpoints
  start kubelet "$kubelet" --config="$n/kubelet.yaml" --kubeconfig="$n/kubelet.kubeconfig" \
    --root-dir="$n/kubelet" --cert-dir="$n/kubelet/pki" --node-ip="$NODE_IP" \
    --hostname-override="$NODE_NAME" --register-with-taints="$NODE_TAINT_KEY=true:NoSchedule" \
    --node-labels="$NODE_LABEL=true" --v=1
  start kube-proxy "$proxy" --config="$n/kube-proxy.yaml" --v=1
  start coredns "$coredns" -conf "$n/Corefile"
  mkdir -p "$n/volumes"
  start provisioner "$prov" -kubeconfig "$D/kube/admin.kubeconfig" -dir "$n/volumes" \
    -node "$NODE_NAME" -name "$NODE_PROVISIONER"
  # Not the default class: the existing tests bind their claims (of no class) to PVs they make.
  kube_api POST /apis/storage.k8s.io/v1/storageclasses "{\"apiVersion\":\"storage.k8s.io/v1\",
    \"kind\":\"StorageClass\",\"metadata\":{\"name\":\"$NODE_STORAGE_CLASS\"},
    \"provisioner\":\"$NODE_PROVISIONER\",\"reclaimPolicy\":\"Delete\",\"allowVolumeExpansion\":true,
    \"volumeBindingMode\":\"WaitForFirstConsumer\"}" >/dev/null ||
    die "could not create StorageClass $NODE_STORAGE_CLASS"
  wait_for kubelet node_ready
  wait_for coredns curl -sf --max-time 2 "http://127.0.0.1:$dnsr/ready"
  wait_for dockerd env DOCKER_HOST="unix://$n/docker.sock" docker version
  cat >"$D/env.d/node.env" <<EOF
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
NODE_POD_CIDR=$NODE_POD_CIDR
NODE_TAINT_KEY=$NODE_TAINT_KEY
NODE_CONTAINERD_ADDRESS=$n/containerd.sock
NODE_DOCKER_HOST=unix://$n/docker.sock
NODE_DNS=$NODE_IP
NODE_STORAGE_CLASS=$NODE_STORAGE_CLASS
EOF
}

# --- cleanup (down.sh) --------------------------------------------------------------------------

# Kills every container of the node's runc root (also when containerd is gone), then containerd's
# shims of this node. $1: the node's state dir.
node_kill_containers() {
  local n=$1 id
  if [ -d "$n/runc/k8s.io" ]; then
    for id in $(runc --root "$n/runc/k8s.io" list -q 2>/dev/null); do
      runc --root "$n/runc/k8s.io" kill --all "$id" KILL 2>/dev/null || true
    done
    sleep 0.3
    for id in $(runc --root "$n/runc/k8s.io" list -q 2>/dev/null); do
      runc --root "$n/runc/k8s.io" delete --force "$id" 2>/dev/null || true
    done
  fi
}

# Processes that outlive their process group: containerd's shims, dockerd's containerd. Each
# names a path below the node's state dir on its command line, which nothing else does.
node_kill_leftovers() { # <node state dir>
  local n=$1 p pid
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" != $$ ] && [ "$pid" != "$BASHPID" ] || continue
    if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$n/"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

node_unmount() { # every mount below the state dir, deepest first
  local n=$1 m
  for _ in 1 2 3; do
    local mounts
    mounts=$(awk -v p="$n/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    [ -n "$mounts" ] || return 0
    for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
}

# Removes the machine-wide parts: bridge and veths, the firewall chain, every KUBE-* chain
# (kube-proxy --cleanup, then the kubelet's), CNI result caches, /var/log/containers links.
node_network_down() { # <kube-proxy binary or "">
  local proxy=$1 t ipt
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    for t in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$t" 2>/dev/null || true
    done
    ip link del "$NODE_BRIDGE" 2>/dev/null || true
  fi
  while iptables -w -t mangle -D FORWARD -j "$NODE_FW_CHAIN" 2>/dev/null; do :; done
  iptables -w -t mangle -F "$NODE_FW_CHAIN" 2>/dev/null || true
  iptables -w -t mangle -X "$NODE_FW_CHAIN" 2>/dev/null || true
  if [ -n "$proxy" ] && [ -x "$proxy" ]; then
    "$proxy" --cleanup >/dev/null 2>&1 || true
  fi
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for t in filter nat mangle; do
      local rules rule
      rules=$("$ipt" -w -t "$t" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' | sed 's/^-A/-D/' || true)
      while IFS= read -r rule; do
        [ -n "$rule" ] || continue
        # Rules as iptables -S prints them: quoted comments need the shell's word splitting.
        eval "\"\$ipt\" -w -t \"\$t\" $rule" 2>/dev/null || true
      done <<<"$rules"
      for c in $("$ipt" -w -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$ipt" -w -t "$t" -F "$c" 2>/dev/null || true
      done
      for c in $("$ipt" -w -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$ipt" -w -t "$t" -X "$c" 2>/dev/null || true
      done
    done
  done
  local f id
  for f in /var/lib/cni/results/"$NODE_CNI_NETWORK"-*; do
    [ -e "$f" ] || continue
    id=${f#/var/lib/cni/results/"$NODE_CNI_NETWORK"-}
    id=${id%-*}
    rm -f "$f" "/var/lib/cni/results/cni-loopback-$id-lo"
  done
  rmdir /var/lib/cni/results /var/lib/cni /var/log/containers 2>/dev/null || true # when empty
  # runc removed each container's cgroup; their parent (containerd's namespace) is left empty.
  rmdir /sys/fs/cgroup/*/k8s.io 2>/dev/null || true
}

node_logs_links_down() { # <node state dir>
  local l
  for l in /var/log/containers/*.log; do
    [ -L "$l" ] || continue
    case "$(readlink "$l")" in "$1"/*) rm -f "$l" ;; esac
  done
}
