//! The workspace's own binaries for tests that run them as real processes (`store-node`,
//! `crash-writer`, `allsource-operator`, `pod-runner`), and free loopback ports for them.
//!
//! A binary is built on first use with `cargo build --workspace --bins --tests` into the target
//! directory of the running test (a no-op when `make test` built it already; `--workspace` and
//! `--tests` resolve features as `cargo test --workspace` does, so no dependency is rebuilt).
//! Set `STORE_NODE_BIN` to use a prebuilt `store-node`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of the workspace binary `name`. The first call of the process builds every binary at
/// once (one `cargo build`, so all the binaries a run uses come from the same sources, even if
/// the sources are edited while the suites run).
pub fn workspace_bin(name: &str) -> PathBuf {
    static PROFILE_DIR: OnceLock<PathBuf> = OnceLock::new();
    let path = PROFILE_DIR.get_or_init(build_all).join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Runs `cargo build --workspace --bins --tests` into the running test's target directory and
/// returns its profile directory (`<target>/debug`).
fn build_all() -> PathBuf {
    // <target>/debug/deps/<test>-<hash> -> <target>/debug
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("no target dir above {}", exe.display()))
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args([
            "build",
            "--workspace",
            "--bins",
            "--tests",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir);
    for key in cargo_test_vars() {
        cargo.env_remove(key);
    }
    let status = cargo
        .status()
        .unwrap_or_else(|e| panic!("run cargo build: {e}"));
    assert!(
        status.success(),
        "cargo build --workspace --bins --tests failed"
    );
    profile_dir
}

/// The variables `cargo test` sets for the test process (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_NAME`, `OUT_DIR`, ...). A nested cargo must not inherit them: build scripts that
/// watch them (ring's `rerun-if-env-changed=CARGO_PKG_NAME`, for one) would see them changed,
/// rerun, and rebuild ring, rustls and everything above them, here and again in the next
/// ordinary build.
fn cargo_test_vars() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_EXE_")
                || k.starts_with("CARGO_CFG_")
                || matches!(
                    k.as_ref(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                )
        })
        .collect()
}

/// The `store-node` binary (`STORE_NODE_BIN` overrides).
pub fn store_node() -> PathBuf {
    match std::env::var("STORE_NODE_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => workspace_bin("store-node"),
    }
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}
