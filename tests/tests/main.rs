//! Every integration suite of the project, in one test binary (one link instead of one per
//! suite; suites run side by side in one pool of test threads). Each module is a suite, run
//! alone with `cargo test -p allsource-tests --test suites <module>::`, for example
//! `cargo test -p allsource-tests --test suites store_api::`. The servers come from tests/env
//! (`make env-up`, or `tests/run-tests.sh` which starts and stops them).

mod archive;
mod chart;
mod conformance;
mod env_smoke;
mod firestore;
mod firestore_auth;
mod operator_archivepolicy;
mod operator_cloud;
mod operator_crds;
mod operator_eventstore;
mod operator_siloed;
mod operator_tenant;
mod postgres_tls;
mod real_node;
mod store_api;
mod store_crash;
mod store_tls;

/// Every file of tests/tests is a module of this binary: with `autotests = false` a suite file
/// nobody declared here would compile and run never.
#[test]
fn every_suite_file_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(m) = name.strip_suffix(".rs").filter(|m| *m != "main") {
            if !main.lines().any(|l| l == format!("mod {m};")) {
                missing.push(m.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not declared in tests/tests/main.rs: {missing:?}"
    );
}
