#!/usr/bin/env bash
# The body of `make test`: install the test servers (fast when cached), start them, run
# `cargo test --workspace` with the env file's variables exported, stop them again (also when
# the tests fail or are interrupted). Exits with the tests' status.
#
# The run uses its own env file and state dir (not tests/env/.env), so it neither needs nor
# disturbs an environment started by hand with `make env-up`.
# Extra arguments go to cargo test, e.g. tests/run-tests.sh -p allsource-tests --test suites env_smoke::
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/allsource/target}

phase() { echo "[test] $*" >&2; }
t0=$SECONDS

if [ "${ALLSOURCE_SKIP_INSTALL:-0}" != 1 ]; then
  tests/env/install.sh
fi
phase "install done at $((SECONDS - t0))s"

state=$(mktemp -d "${TMPDIR:-/tmp}/allsource-test.XXXXXX")
chmod 755 "$state" # PostgreSQL runs as the postgres user when we are root
export ALLSOURCE_ENV_DIR=$state/env ALLSOURCE_ENV_FILE=$state/env.file
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  tests/env/down.sh || true
  rm -rf "$state"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tests/env/up.sh
phase "servers up at $((SECONDS - t0))s"

# Export every KEY=VALUE of the env file for the tests (and tools they start).
while IFS='=' read -r key value; do
  [[ "$key" =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
  export "$key=$value"
done <"$ALLSOURCE_ENV_FILE"

# The suites run the real binaries (store-node, the operator, pod-runner): build them first, with
# the test targets in the same command so that both get the same features (dev-dependencies
# unify features; `--bins` alone would compile many dependencies a second time).
cargo build --workspace --bins --tests
rc=0
cargo test --workspace "$@" || rc=$?
phase "cargo test exited $rc at $((SECONDS - t0))s"
exit "$rc"
