# Shared by install.sh, up.sh and down.sh: where the cache lives and where each tool is.
# shellcheck shell=bash
ALLSOURCE_CACHE=${ALLSOURCE_CACHE:-$HOME/.cache/allsource}
ALLSOURCE_BIN=$ALLSOURCE_CACHE/bin

bin_kube_apiserver() { echo "$ALLSOURCE_BIN/kubernetes-$K8S_VERSION/kube-apiserver"; }
bin_kube_controller_manager() { echo "$ALLSOURCE_BIN/kubernetes-$K8S_VERSION/kube-controller-manager"; }
bin_kube_scheduler() { echo "$ALLSOURCE_BIN/kubernetes-$K8S_VERSION/kube-scheduler"; }
bin_kubelet() { echo "$ALLSOURCE_BIN/kubernetes-node-$K8S_VERSION/kubelet"; }
bin_kube_proxy() { echo "$ALLSOURCE_BIN/kubernetes-node-$K8S_VERSION/kube-proxy"; }
# The pause (sandbox) image is our own few lines of Go: its cache dir is keyed by their hash.
pause_key() { sha256sum "$(dirname "${BASH_SOURCE[0]}")/go/pause/main.go" | cut -c1-12; }
dir_pause() { echo "$ALLSOURCE_BIN/pause-$(pause_key)"; }
# So is the volume provisioner (go/provisioner): keyed by its source and go.sum.
provisioner_key() {
  local d
  d="$(dirname "${BASH_SOURCE[0]}")/go/provisioner"
  cat "$d/main.go" "$d/go.mod" "$d/go.sum" | sha256sum | cut -c1-12
}
bin_provisioner() { echo "$ALLSOURCE_BIN/provisioner-$(provisioner_key)/provisioner"; }
# And the gopher-lua runner of the Argo CD health checks (go/luahealth).
luahealth_key() {
  local d
  d="$(dirname "${BASH_SOURCE[0]}")/go/luahealth"
  cat "$d/main.go" "$d/go.mod" "$d/go.sum" | sha256sum | cut -c1-12
}
bin_luahealth() { echo "$ALLSOURCE_BIN/luahealth-$(luahealth_key)/luahealth"; }
bin_coredns() { echo "$ALLSOURCE_BIN/coredns-$COREDNS_VERSION/coredns"; }
bin_etcd() { echo "$ALLSOURCE_BIN/etcd-$ETCD_VERSION/etcd"; }
bin_kwok() { echo "$ALLSOURCE_BIN/kwok-$KWOK_VERSION/kwok"; }
bin_helm() { echo "$ALLSOURCE_BIN/helm-$HELM_VERSION/helm"; }
bin_fake_gcs() { echo "$ALLSOURCE_BIN/fake-gcs-server-$FAKE_GCS_VERSION/fake-gcs-server"; }
dir_dynamodb() { echo "$ALLSOURCE_BIN/dynamodb-local-$DYNAMODB_LOCAL_VERSION"; }
bin_moto() { echo "$ALLSOURCE_CACHE/venv-moto-$MOTO_VERSION/bin/moto_server"; }
dir_pg_bin() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1; }

gcloud_firestore_present() {
  local root
  root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null) || return 1
  [ -f "$root/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar" ]
}
