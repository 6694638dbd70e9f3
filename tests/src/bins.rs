//! The workspace's own binaries for tests that run them as real processes (`store-node`,
//! `crash-writer`, `allsource-operator`, `pod-runner`), and free loopback ports for them.
//!
//! A binary is built on first use with `cargo build --workspace --bins` into the target directory
//! of the running test (a no-op when `make test` built it already; `--workspace` unifies
//! features as `cargo test --workspace` does, so no dependency is rebuilt). Set
//! `STORE_NODE_BIN` to use a prebuilt `store-node`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Path of the workspace binary `name`, built once per test process.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
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
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--workspace", "--bins", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .unwrap_or_else(|e| panic!("run cargo build: {e}"));
    assert!(status.success(), "cargo build --workspace --bins failed");
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    built.insert(name.to_string(), path.clone());
    path
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
