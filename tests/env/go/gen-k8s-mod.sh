#!/usr/bin/env bash
# Regenerates tests/env/go/k8s/go.mod + go.sum for K8S_VERSION (from tests/env/versions.sh).
# k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them to ./staging with
# replace lines that only work inside its own repository, so this wrapper module points every
# staging module at its published tag v0.<minor>.<patch>. Run it after bumping K8S_VERSION and
# commit the result; the install script only builds from the committed files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../versions.sh
source "$here/../versions.sh"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
staging="v0.${K8S_VERSION#*.}"
dir="$here/k8s"
mkdir -p "$dir"
cd "$dir"
rm -f go.mod go.sum
go mod init allsource.local/testenv/k8s >/dev/null 2>&1
upstream=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$upstream" ] || { echo "cannot download k8s.io/kubernetes@v$K8S_VERSION go.mod" >&2; exit 1; }
mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$upstream")
[ -n "$mods" ] || { echo "no staging replace lines found in upstream go.mod" >&2; exit 1; }
args=()
for m in $mods; do
  # sample-* are examples nothing in cmd/ imports; the proxy lacks some of their tags.
  case "$m" in k8s.io/sample-*) continue ;; esac
  args+=("-require=$m@$staging" "-replace=$m=$m@$staging")
done
go mod edit "${args[@]}"
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kube-scheduler@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kubelet@v$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-proxy@v$K8S_VERSION"
go mod edit -go=1.24.0   # tidy raises it to what the dependencies need, not the local Go
go mod tidy
echo "generated $dir/go.mod for kubernetes v$K8S_VERSION ($(echo "$mods" | wc -w) staging modules at $staging)"
