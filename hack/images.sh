#!/usr/bin/env bash
# Builds the two container images (allsource-operator, store-node) from the repository's
# Dockerfile. Usage:
#
#   hack/images.sh [build]      build the binaries (release), stage them stripped, build both images
#   hack/images.sh base         make the local base image (Debian packages, no registry) and print its name
#   hack/images.sh base-rootfs  only make (or find) the cached root file system tar of that base; prints its path
#
# Environment:
#   REGISTRY    image name prefix                 (default ghcr.io/allsource)
#   TAG         image tag                         (default: the Cargo workspace version)
#   BASE_IMAGE  base of both images               (default: the Dockerfile's, gcr.io/distroless/cc-debian12:nonroot);
#               "local" builds one here from Debian packages (libc6, libgcc-s1, libssl3, ca-certificates)
#   BIN_DIR     take allsource-operator and store-node from this directory instead of running
#               cargo (the tests package the debug binaries `cargo build --workspace --bins --tests` made)
#   SAVE_DIR    also write each image as a tar (`docker save`) into this directory
#   DOCKER      the image builder CLI (default docker; podman works: `DOCKER=podman`)
#
# Binaries are stripped while staged. The local base's root file system is cached under
# ${ALLSOURCE_CACHE:-$HOME/.cache/allsource}/images, keyed by the Debian package versions.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALLSOURCE_CACHE=${ALLSOURCE_CACHE:-$HOME/.cache/allsource}
DOCKER=${DOCKER:-docker}
REGISTRY=${REGISTRY:-ghcr.io/allsource}
BASE_PACKAGES=(libc6 libgcc-s1 libssl3 ca-certificates)
NONROOT_UID=65532

log() { echo "[images] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

workspace_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1
}

# --- the local base: a root file system from Debian packages --------------------------------

# Candidate versions of the base packages, e.g. "libc6=2.36-9+deb12u14 libgcc-s1=12.2.0-14 ...".
base_package_versions() {
  local p v out=()
  for p in "${BASE_PACKAGES[@]}"; do
    v=$(apt-cache show --no-all-versions "$p" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
    [ -n "$v" ] || die "apt-cache knows no version of $p (run apt-get update)"
    out+=("$p=$v")
  done
  echo "${out[*]}"
}

base_key() { # a short, stable key of the package set and this script's recipe version
  printf '%s recipe-3 %s\n' "$(base_package_versions)" "$(dpkg --print-architecture)" |
    sha256sum | cut -c1-12
}

# Prints the path of the cached root file system tar, making it when missing.
base_rootfs() {
  local key dir tar
  key=$(base_key)
  dir=$ALLSOURCE_CACHE/images
  tar=$dir/base-cc-$key.tar
  if [ -f "$tar" ]; then
    echo "$tar"
    return 0
  fi
  mkdir -p "$dir"
  local work
  work=$(mktemp -d "$dir/.tmp-base.XXXXXX")
  chmod 755 "$work" # apt-get download runs as _apt
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  local pkgs
  read -r -a pkgs <<<"$(base_package_versions)"
  log "downloading ${pkgs[*]}"
  (cd "$work" && apt-get download -qq "${pkgs[@]}") >&2
  local fs=$work/rootfs deb
  mkdir -p "$fs"
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$fs"; done
  # Only what a dynamically linked Rust binary needs at run time.
  rm -rf "$fs/usr/share/doc" "$fs/usr/share/man" "$fs/usr/share/lintian" "$fs/usr/share/locale" \
    "$fs/usr/share/info" "$fs/usr/lib/x86_64-linux-gnu/gconv" "$fs/usr/sbin" "$fs/usr/bin" \
    "$fs/sbin" "$fs/usr/libexec" "$fs/etc/ld.so.conf.d"
  # ca-certificates' bundle is made by its maintainer script: concatenate the certificates.
  mkdir -p "$fs/etc/ssl/certs"
  find "$fs/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat \
    >"$fs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$fs/usr/share/ca-certificates"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$NONROOT_UID" "$NONROOT_UID" >"$fs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$NONROOT_UID" >"$fs/etc/group"
  printf 'hosts: files dns\n' >"$fs/etc/nsswitch.conf"
  mkdir -p "$fs/tmp" "$fs/home/nonroot" "$fs/root" "$fs/usr/local/bin"
  chmod 1777 "$fs/tmp"
  chown "$NONROOT_UID:$NONROOT_UID" "$fs/home/nonroot"
  chmod 700 "$fs/root"
  tar --numeric-owner -C "$fs" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$tar"
  log "made $tar ($(du -h "$tar" | cut -f1))"
  echo "$tar"
}

# Imports the local base into the builder (once per key) and prints its name.
local_base_image() {
  local tar key ref
  tar=$(base_rootfs)
  key=$(basename "$tar" .tar)
  key=${key#base-cc-}
  ref=allsource.local/base-cc:$key
  if ! "$DOCKER" image inspect "$ref" >/dev/null 2>&1; then
    "$DOCKER" import --change "USER $NONROOT_UID:$NONROOT_UID" --change "WORKDIR /" \
      --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
      "$tar" "$ref" >/dev/null
    log "imported $ref"
  fi
  echo "$ref"
}

# Fails when a shared library a binary needs is not in the local base's root file system.
check_libraries() { # <rootfs tar> <binary...>
  local tar=$1 bin lib
  shift
  local content
  content=$(tar -tf "$tar")
  for bin in "$@"; do
    for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      grep -q "/$lib\$" <<<"$content" || die "$(basename "$bin") needs $lib, which the local base lacks"
    done
  done
}

# --- the images -------------------------------------------------------------------------------

build() {
  local tag=${TAG:-$(workspace_version)} version revision
  version=$(workspace_version)
  revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
  local bin_dir=${BIN_DIR:-}
  if [ -z "$bin_dir" ]; then
    log "cargo build --release (operator, store-node)"
    (cd "$root" && cargo build --release --locked -p allsource-operator --bin allsource-operator \
      -p store-node --bin store-node) >&2
    bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
  fi
  local b
  for b in allsource-operator store-node; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing (build it, or unset BIN_DIR)"
  done

  local ctx
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/allsource-images.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" EXIT
  mkdir -p "$ctx/bin"
  for b in allsource-operator store-node; do
    strip --strip-all -o "$ctx/bin/$b" "$bin_dir/$b"
    chmod 0555 "$ctx/bin/$b"
  done
  cp "$root/Dockerfile" "$ctx/Dockerfile"

  local base_args=()
  if [ "${BASE_IMAGE:-}" = local ]; then
    check_libraries "$(base_rootfs)" "$ctx/bin/allsource-operator" "$ctx/bin/store-node"
    base_args=(--build-arg "BASE_IMAGE=$(local_base_image)")
  elif [ -n "${BASE_IMAGE:-}" ]; then
    base_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  fi

  local target name ref
  for target in operator store-node; do
    name=$target
    [ "$target" != operator ] || name=allsource-operator
    ref=$REGISTRY/$name:$tag
    log "building $ref"
    "$DOCKER" build -q --target "$target" -t "$ref" "${base_args[@]}" \
      --build-arg "VERSION=$version" --build-arg "REVISION=$revision" "$ctx" >/dev/null
    if [ -n "${SAVE_DIR:-}" ]; then
      mkdir -p "$SAVE_DIR"
      "$DOCKER" save -o "$SAVE_DIR/$name.tar" "$ref"
    fi
    "$DOCKER" image inspect -f '{{.Size}}' "$ref" |
      awk -v ref="$ref" '{printf "%s\t%.1f MB\n", ref, $1 / 1000000}'
  done
}

case "${1:-build}" in
  build) build ;;
  base) local_base_image ;;
  base-rootfs) base_rootfs ;;
  *) die "unknown command '$1' (build | base | base-rootfs)" ;;
esac
