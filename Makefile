# Entry points for developers and CI. The test servers are real (tests/env), built from
# package registries into $HOME/.cache/allsource; see tests/env/install.sh.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/allsource/target

.PHONY: test install-env env-up env-down run lint crds-check fuzz images

## Install + start the test servers, cargo test --workspace against them, stop them.
test:
	tests/run-tests.sh

## Build/fetch every test server into the cache (seconds when cached).
install-env:
	tests/env/install.sh

## Start all test servers (or SERVICES="postgres s3") and write tests/env/.env.
env-up:
	tests/env/up.sh $(SERVICES)

## Stop the test servers started by env-up.
env-down:
	tests/env/down.sh

## Local environment with the CRDs installed, plus how to use it.
run:
	tests/run-local.sh

## Build the operator and store-node images (REGISTRY, TAG, BASE_IMAGE, BIN_DIR: see hack/images.sh).
images:
	hack/images.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## Fails when a regeneration of the generated files (crds/, chart CRDs, config/crd, RBAC) differs
## from what is committed.
## Builds with the same command as the tests (tests/run-tests.sh), so CI compiles the workspace's
## dependencies once, not once per feature set.
crds-check:
	cargo build -q --workspace --bins --tests
	"$(CARGO_TARGET_DIR)/debug/allsource-operator" crdgen --check

## Fuzz one target for FUZZ_SECONDS (needs a nightly toolchain and `cargo install cargo-fuzz`):
## make fuzz FUZZ_TARGET=wal_reader|http_request
FUZZ_TARGET ?= http_request
FUZZ_SECONDS ?= 300
fuzz:
	cd store-node/fuzz && CARGO_TARGET_DIR=$(HOME)/.cache/allsource/fuzz-target \
		cargo +nightly fuzz run $(FUZZ_TARGET) -- -max_total_time=$(FUZZ_SECONDS)
