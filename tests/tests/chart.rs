//! Install artefacts as a user meets them: the Helm chart (`helm lint`, `helm template` with
//! default and namespaced values, schema validation), the kustomize tree, the Argo CD health checks
//! (run in Lua against status samples), the Prometheus alert rules and the Grafana dashboard.
//! Every check runs the real tool (helm, kubectl kustomize, promtool, a Lua 5.4 interpreter);
//! the end-to-end install on the test cluster lives in the `e2e` module at the bottom.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

#[allow(dead_code)]
use allsource_tests::podrunner;

/// Repository root (the parent of the `tests` crate).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    root().join("charts/allsource-operator")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `KEY=VALUE` lines of the env file written by tests/env/up.sh, if it exists.
fn env_file_value(key: &str) -> Option<String> {
    let file = std::env::var("ALLSOURCE_ENV_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("tests/env/.env"));
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(str::to_string)
    })
}

/// The helm binary: `$HELM`, then `HELM` from tests/env/.env, then the one tests/env/install.sh
/// builds into `$HOME/.cache/allsource/bin`. Panics when none exists (the tests need it).
fn helm() -> PathBuf {
    if let Ok(h) = std::env::var("HELM") {
        return PathBuf::from(h);
    }
    if let Some(h) = env_file_value("HELM") {
        return PathBuf::from(h);
    }
    let versions = read("tests/env/versions.sh");
    let version = versions
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION="))
        .and_then(|r| r.split_whitespace().next())
        .expect("HELM_VERSION in tests/env/versions.sh");
    let home = std::env::var("HOME").expect("HOME");
    let path = PathBuf::from(home).join(format!(".cache/allsource/bin/helm-{version}/helm"));
    assert!(
        path.exists(),
        "helm not found: set HELM, run tests/env/up.sh, or tests/env/install.sh helm"
    );
    path
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn stdout_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Release name of every rendering: the chart's fullname is then just `allsource-operator`.
const RELEASE: &str = "allsource-operator";

/// Kubernetes version the chart is rendered for: the one tests/env runs. A helm built with
/// `go install` defaults to v1.20 (its version ldflags are unset), below the chart's kubeVersion.
fn kube_version() -> String {
    read("tests/env/versions.sh")
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .and_then(|r| r.split_whitespace().next())
        .expect("K8S_VERSION in tests/env/versions.sh")
        .to_string()
}

/// `helm template` of the chart with extra arguments; returns every rendered object.
fn helm_template(args: &[&str]) -> Vec<Value> {
    let text = stdout_ok(
        Command::new(helm())
            .args(["template", RELEASE, "--namespace", "allsource-system"])
            .args(["--kube-version", &kube_version()])
            .arg(chart_dir())
            .args(args),
    );
    parse_docs(&text)
}

/// Parses a multi-document YAML stream, skipping empty documents.
fn parse_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(objs: &'a [Value], k: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| kind(o) == k).collect()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Asserts that no Role or ClusterRole grants a wildcard or a nonResourceURL.
fn assert_least_privilege(objs: &[Value]) {
    let roles: Vec<&Value> = objs
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
        .collect();
    assert!(!roles.is_empty(), "no Role or ClusterRole rendered");
    for role in roles {
        let rules = role["rules"].as_array().expect("rules list");
        assert!(!rules.is_empty(), "{} has no rules", name(role));
        for rule in rules {
            for field in ["verbs", "resources", "apiGroups", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).iter().any(|s| s.contains('*')),
                    "wildcard in {field} of {} {}: {rule}",
                    kind(role),
                    name(role)
                );
            }
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "nonResourceURLs in {}",
                name(role)
            );
            assert!(!strings(&rule["verbs"]).is_empty(), "rule without verbs");
            assert!(
                !strings(&rule["resources"]).is_empty(),
                "rule without resources"
            );
            // escalate/bind/impersonate would let the operator grant itself more.
            for v in strings(&rule["verbs"]) {
                assert!(
                    !matches!(v, "escalate" | "bind" | "impersonate"),
                    "privilege-raising verb {v} in {}",
                    name(role)
                );
            }
        }
    }
}

fn deployment(objs: &[Value]) -> &Value {
    let deps = of_kind(objs, "Deployment");
    assert_eq!(deps.len(), 1, "one Deployment");
    deps[0]
}

fn container(dep: &Value) -> &Value {
    &dep["spec"]["template"]["spec"]["containers"][0]
}

fn args(dep: &Value) -> Vec<&str> {
    strings(&container(dep)["args"])
}

fn env_var<'a>(dep: &'a Value, name: &str) -> &'a str {
    container(dep)["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .and_then(|v| v["value"].as_str())
        .unwrap_or_else(|| panic!("no env {name}"))
}

#[test]
fn helm_lint_is_clean_with_default_and_namespaced_values() {
    for extra in [
        &[][..],
        &["--set", "watchNamespaces={team-a,team-b}"][..],
        &["--set", "crds.templated=true,metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,dashboards.enabled=true"][..],
    ] {
        let out = stdout_ok(
            Command::new(helm())
                .args(["lint", "--strict"])
                .arg(chart_dir())
                .args(extra),
        );
        assert!(out.contains("0 chart(s) failed"), "helm lint {extra:?}: {out}");
    }
}

#[test]
fn default_render_is_hardened_least_privilege_and_ships_crds() {
    let objs = helm_template(&["--include-crds"]);
    let kinds: BTreeSet<&str> = objs.iter().map(kind).collect();
    // For the report: what a default install creates, and every permission it grants.
    eprintln!("helm template (default values): {} objects", objs.len());
    for role in objs
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            eprintln!(
                "  {} {}: apiGroups={:?} resources={:?} verbs={:?}",
                kind(role),
                name(role),
                strings(&rule["apiGroups"]),
                strings(&rule["resources"]),
                strings(&rule["verbs"])
            );
        }
    }
    for k in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(k), "{k} not rendered; got {kinds:?}");
    }
    let crds: BTreeSet<&str> = of_kind(&objs, "CustomResourceDefinition")
        .into_iter()
        .map(name)
        .collect();
    assert_eq!(
        crds,
        BTreeSet::from([
            "archivepolicies.allsource.io",
            "eventstores.allsource.io",
            "tenants.allsource.io"
        ])
    );
    assert_least_privilege(&objs);

    // Leases only through the leader-election Role in the release namespace.
    let cluster_role = of_kind(&objs, "ClusterRole")[0];
    assert!(
        !cluster_role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| strings(&r["resources"]).contains(&"leases")),
        "the ClusterRole must not grant Leases cluster-wide"
    );
    let roles = of_kind(&objs, "Role");
    assert_eq!(roles.len(), 1, "only the leader-election Role");
    assert_eq!(roles[0]["metadata"]["namespace"], "allsource-system");
    assert_eq!(strings(&roles[0]["rules"][0]["resources"]), vec!["leases"]);

    let dep = deployment(&objs);
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &container(dep)["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), vec!["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        container(dep)["livenessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    assert_eq!(
        container(dep)["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    let a = args(dep);
    assert_eq!(a[0], "run");
    assert!(a.contains(&"--leader-elect=true"), "{a:?}");
    assert!(a.contains(&"--http-addr=0.0.0.0:8081"), "{a:?}");
    assert_eq!(env_var(dep, "RUST_LOG"), "info,kube=warn");
    assert!(!a.iter().any(|x| x.starts_with("--namespaces")), "{a:?}");
    // Store nodes, gateways and archivers run only the chart's store-node image by default.
    assert!(
        a.contains(&"--allowed-images=ghcr.io/allsource/store-node"),
        "{a:?}"
    );
    assert_eq!(
        container(dep)["image"],
        format!(
            "ghcr.io/allsource/allsource-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );

    // Every object carries the standard labels.
    for o in objs
        .iter()
        .filter(|o| kind(o) != "CustomResourceDefinition")
    {
        let labels = &o["metadata"]["labels"];
        for l in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(
                labels.get(l).is_some(),
                "{} {} lacks label {l}",
                kind(o),
                name(o)
            );
        }
    }
}

#[test]
fn watch_namespaces_renders_roles_per_namespace_and_nothing_cluster_wide() {
    let objs = helm_template(&["--set", "watchNamespaces={team-a,team-b}"]);
    assert!(of_kind(&objs, "ClusterRole").is_empty(), "no ClusterRole");
    assert!(
        of_kind(&objs, "ClusterRoleBinding").is_empty(),
        "no ClusterRoleBinding"
    );
    let bound: BTreeSet<(&str, &str)> = of_kind(&objs, "RoleBinding")
        .into_iter()
        .map(|b| {
            assert_eq!(b["subjects"][0]["namespace"], "allsource-system");
            (
                b["metadata"]["namespace"].as_str().unwrap_or_default(),
                b["roleRef"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let namespaces: BTreeSet<&str> = bound.iter().map(|(ns, _)| *ns).collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["allsource-system", "team-a", "team-b"])
    );
    assert_least_privilege(&objs);
    let a = args(deployment(&objs));
    assert!(a.contains(&"--namespaces=team-a,team-b"), "{a:?}");
}

#[test]
fn values_schema_rejects_bad_values() {
    for (set, why) in [
        ("replicas=-1", "negative replicas"),
        ("replicas=two", "wrong type"),
        ("logging.level=verbose", "unknown log level"),
        ("image.pullPolicy=Sometimes", "unknown pull policy"),
        ("watchNamespaces={Team_A}", "not a namespace name"),
        ("replicaCount=3", "unknown top-level key"),
        ("metrics.port=70000", "port out of range"),
    ] {
        let out = run(Command::new(helm())
            .args(["template", RELEASE, "--kube-version", &kube_version()])
            .arg(chart_dir())
            .args(["--set", set]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} ({why}) was accepted");
        assert!(
            stderr.contains("schema") || stderr.contains("values don't meet"),
            "--set {set}: not a schema error: {stderr}"
        );
    }
    // Sanity: the same keys with good values pass.
    let objs = helm_template(&["--set", "replicas=3,logging.level=debug,metrics.port=9090"]);
    assert_eq!(env_var(deployment(&objs), "RUST_LOG"), "debug,kube=warn");
    assert!(args(deployment(&objs)).contains(&"--http-addr=0.0.0.0:9090"));
}

#[test]
fn chart_refuses_several_replicas_without_leader_election() {
    let out = run(Command::new(helm())
        .args(["template", RELEASE, "--kube-version", &kube_version()])
        .arg(chart_dir())
        .args(["--set", "leaderElection.enabled=false"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaderElection"));
    let objs = helm_template(&["--set", "leaderElection.enabled=false,replicas=1"]);
    assert!(args(deployment(&objs)).contains(&"--leader-elect=false"));
    assert!(
        of_kind(&objs, "Role").is_empty(),
        "no Lease Role without leader election"
    );
    assert!(
        of_kind(&objs, "PodDisruptionBudget").is_empty(),
        "no PDB for one replica"
    );
}

#[test]
fn optional_templates_render_when_enabled() {
    let objs = helm_template(&[
        "--set",
        "crds.templated=true,metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,dashboards.enabled=true",
        "--set",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/allsource",
    ]);
    let crds = of_kind(&objs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 3, "templated CRDs");
    for c in crds {
        assert_eq!(
            c["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        assert_eq!(
            c["metadata"]["labels"]["app.kubernetes.io/instance"],
            RELEASE
        );
    }
    assert_eq!(of_kind(&objs, "ServiceMonitor").len(), 1);
    let rule = of_kind(&objs, "PrometheusRule");
    assert_eq!(rule.len(), 1);
    let alerts: Value =
        serde_yaml::from_str(&read("deploy/prometheus/alerts.yaml")).expect("alerts");
    assert_eq!(
        rule[0]["spec"], alerts,
        "PrometheusRule differs from deploy/prometheus/alerts.yaml"
    );
    let cm = of_kind(&objs, "ConfigMap");
    assert_eq!(cm.len(), 1);
    let dash: Value =
        serde_json::from_str(cm[0]["data"]["allsource.json"].as_str().expect("dashboard"))
            .expect("json");
    assert_eq!(dash["uid"], "allsource-overview");
    let sa = of_kind(&objs, "ServiceAccount");
    assert_eq!(
        sa[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/allsource"
    );
}

#[test]
fn chart_version_follows_the_workspace_and_copies_match_their_sources() {
    let chart: Value =
        serde_yaml::from_str(&read("charts/allsource-operator/Chart.yaml")).expect("Chart.yaml");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(
        read("charts/allsource-operator/files/prometheus-alerts.yaml"),
        read("deploy/prometheus/alerts.yaml"),
        "chart copy of the alert rules is stale: cp deploy/prometheus/alerts.yaml charts/allsource-operator/files/prometheus-alerts.yaml"
    );
    assert_eq!(
        read("charts/allsource-operator/files/grafana-allsource.json"),
        read("deploy/grafana/allsource.json"),
        "chart copy of the dashboard is stale: cp deploy/grafana/allsource.json charts/allsource-operator/files/grafana-allsource.json"
    );
    // The kustomize ClusterRole and the chart use the same generated rules.
    let role: Value = serde_yaml::from_str(&read("config/rbac/role.yaml")).expect("role.yaml");
    let rules: Value =
        serde_yaml::from_str(&read("charts/allsource-operator/files/rbac-rules.yaml"))
            .expect("rules");
    assert_eq!(role["rules"], rules);
    // The PrometheusRule of config/prometheus embeds the same groups.
    let pr: Value = serde_yaml::from_str(&read("config/prometheus/prometheusrule.yaml"))
        .expect("prometheusrule");
    let alerts: Value =
        serde_yaml::from_str(&read("deploy/prometheus/alerts.yaml")).expect("alerts");
    assert_eq!(
        pr["spec"], alerts,
        "config/prometheus/prometheusrule.yaml is stale"
    );
}

fn kustomize(dir: &str) -> Vec<Value> {
    parse_docs(&stdout_ok(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join(dir)),
    ))
}

#[test]
fn kustomize_default_builds_into_allsource_system() {
    let objs = kustomize("config/default");
    let ns = of_kind(&objs, "Namespace");
    assert_eq!(ns.len(), 1);
    assert_eq!(name(ns[0]), "allsource-system");
    for o in &objs {
        if matches!(
            kind(o),
            "Deployment" | "ServiceAccount" | "Role" | "RoleBinding" | "Service"
        ) {
            assert_eq!(
                o["metadata"]["namespace"],
                "allsource-system",
                "{} {}",
                kind(o),
                name(o)
            );
        }
        if matches!(kind(o), "RoleBinding" | "ClusterRoleBinding") {
            assert_eq!(
                o["subjects"][0]["namespace"],
                "allsource-system",
                "{}",
                name(o)
            );
        }
    }
    assert_eq!(of_kind(&objs, "CustomResourceDefinition").len(), 3);
    assert_least_privilege(&objs);
    let dep = deployment(&objs);
    assert_eq!(
        container(dep)["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    // kustomize and Helm run the operator with the same arguments and log filter by default.
    let helm_objs = helm_template(&[]);
    let helm_dep = deployment(&helm_objs);
    assert_eq!(args(dep), args(helm_dep));
    assert_eq!(env_var(dep, "RUST_LOG"), env_var(helm_dep, "RUST_LOG"));

    let prom = kustomize("config/prometheus");
    assert_eq!(of_kind(&prom, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&prom, "PrometheusRule").len(), 1);
}

#[test]
fn samples_cover_every_backend_and_build_with_kustomize() {
    let objs = kustomize("config/samples");
    let backends: BTreeSet<&str> = of_kind(&objs, "EventStore")
        .into_iter()
        .filter_map(|e| e["spec"]["backend"].as_str())
        .collect();
    assert_eq!(
        backends,
        BTreeSet::from(["dynamodb", "firestore", "postgres", "selfHosted"])
    );
    let placements: BTreeSet<&str> = of_kind(&objs, "Tenant")
        .into_iter()
        .filter_map(|t| t["spec"]["placement"].as_str())
        .collect();
    assert_eq!(placements, BTreeSet::from(["pooled", "siloed"]));
    let destinations: BTreeSet<String> = of_kind(&objs, "ArchivePolicy")
        .into_iter()
        .flat_map(|a| {
            a["spec"]["destination"]
                .as_object()
                .map(|d| d.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        destinations,
        BTreeSet::from(["gcs".to_string(), "s3".to_string()])
    );
    // Tenants and policies point at an EventStore of the samples.
    let stores: BTreeSet<&str> = of_kind(&objs, "EventStore").into_iter().map(name).collect();
    for o in objs
        .iter()
        .filter(|o| matches!(kind(o), "Tenant" | "ArchivePolicy"))
    {
        let target = o["spec"]["eventStoreRef"]["name"]
            .as_str()
            .unwrap_or_default();
        assert!(
            stores.contains(target),
            "{} {} refers to unknown EventStore {target}",
            kind(o),
            name(o)
        );
    }
}

mod argocd {
    //! Argo CD health checks: each .lua file runs with `obj` set to a sample object, like Argo
    //! CD's resource_customizations tests, twice: in gopher-lua, the Lua 5.1 that Argo CD embeds,
    //! with the libraries it opens (tests/env/go/luahealth, built by tests/env/install.sh), and in
    //! a Lua 5.4 interpreter; both must give the expected health.
    use super::*;
    use mlua::{Lua, LuaSerdeExt, SerializeOptions, Table};

    #[derive(Deserialize)]
    struct Suite {
        tests: Vec<Case>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Case {
        script: String,
        input_path: String,
        health_status: Expected,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Expected {
        status: String,
        message: String,
    }

    const DIR: &str = "deploy/argocd/health";
    /// The kinds the one health script serves, with the file every kind uses.
    const KINDS: [(&str, &str); 3] = [
        ("EventStore", SCRIPT),
        ("Tenant", SCRIPT),
        ("ArchivePolicy", SCRIPT),
    ];
    const SCRIPT: &str = "allsource";

    fn health(script: &str, obj: &Value) -> Expected {
        let lua = Lua::new();
        // Argo CD hands the object over as plain tables: JSON null becomes nil.
        let opts = SerializeOptions::new()
            .serialize_none_to_null(false)
            .serialize_unit_to_null(false);
        let value = lua.to_value_with(obj, opts).expect("object to Lua");
        lua.globals().set("obj", value).expect("set obj");
        let hs: Table = lua.load(script).eval().expect("health script runs");
        Expected {
            status: hs.get("status").expect("hs.status"),
            message: hs.get("message").expect("hs.message"),
        }
    }

    /// The health Argo CD's own Lua (gopher-lua, through `luahealth`) computes for `obj`.
    fn gopher_health(bin: &Path, script_path: &Path, obj: &Value) -> Expected {
        use std::io::Write as _;
        let mut child = Command::new(bin)
            .arg(script_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(obj.to_string().as_bytes())
            .expect("write the object");
        let out = child.wait_with_output().expect("luahealth");
        assert!(
            out.status.success(),
            "gopher-lua failed on {}: {}",
            script_path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("luahealth output")
    }

    /// The gopher-lua runner the env installs, from the env file (None only when skips are
    /// allowed; a missing runner fails the test otherwise).
    fn gopher_lua() -> Option<PathBuf> {
        match env_file_value("LUAHEALTH").map(PathBuf::from) {
            Some(p) if p.exists() => Some(p),
            other if allsource_tests::env::allow_no_env() => {
                eprintln!("SKIPPED gopher-lua health runs: runner {other:?} missing");
                None
            }
            other => panic!(
                "the gopher-lua runner {other:?} is missing: run tests/env/install.sh luahealth \
                 and tests/env/up.sh (make test does both)"
            ),
        }
    }

    #[test]
    fn health_checks_map_status_samples_to_argo_health() {
        let gopher = gopher_lua();
        let suite: Suite = serde_yaml::from_str(&read(&format!("{DIR}/health_test.yaml")))
            .expect("health_test.yaml");
        let mut seen = BTreeSet::new();
        for case in &suite.tests {
            let script = read(&format!("{DIR}/{}", case.script));
            let obj: Value =
                serde_yaml::from_str(&read(&format!("{DIR}/{}", case.input_path))).expect("sample");
            let got = health(&script, &obj);
            assert_eq!(
                got, case.health_status,
                "Lua 5.4: {} on {}",
                case.script, case.input_path
            );
            if let Some(bin) = &gopher {
                let path = root().join(DIR).join(&case.script);
                assert_eq!(
                    gopher_health(bin, &path, &obj),
                    case.health_status,
                    "gopher-lua (Argo CD's Lua): {} on {}",
                    case.script,
                    case.input_path
                );
            }
            let kind = obj["kind"].as_str().expect("sample kind").to_string();
            seen.insert((kind, got.status));
        }
        for (kind, _) in KINDS {
            for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
                assert!(
                    seen.contains(&(kind.to_string(), status.to_string())),
                    "no {status} case for {kind}"
                );
            }
        }
    }

    /// The argocd-cm patch embeds the .lua files verbatim; regenerate with ALLSOURCE_BLESS=1.
    #[test]
    fn argocd_cm_patch_embeds_the_health_checks() {
        let mut want = String::from(
            "# Patch for Argo CD's argocd-cm ConfigMap: health checks of the AllSource kinds.\n\
             # Each value is a byte-for-byte copy of health/allsource.lua (tests/tests/chart.rs checks this;\n\
             # regenerate with ALLSOURCE_BLESS=1 cargo test -p allsource-tests --test suites chart::).\n\
             # Apply: kubectl -n argocd patch configmap argocd-cm --type merge --patch-file deploy/argocd/argocd-cm-patch.yaml\n\
             data:\n",
        );
        for (kind, file) in KINDS {
            want.push_str(&format!(
                "  resource.customizations.health.allsource.io_{kind}: |\n"
            ));
            for line in read(&format!("{DIR}/{file}.lua")).lines() {
                if line.is_empty() {
                    want.push('\n');
                } else {
                    want.push_str(&format!("    {line}\n"));
                }
            }
        }
        let path = "deploy/argocd/argocd-cm-patch.yaml";
        if std::env::var("ALLSOURCE_BLESS").as_deref() == Ok("1") {
            std::fs::write(root().join(path), &want).expect("write patch");
        }
        assert_eq!(
            read(path),
            want,
            "{path} is stale; rerun with ALLSOURCE_BLESS=1"
        );
        // And it parses back to the scripts.
        let patch: Value = serde_yaml::from_str(&want).expect("patch YAML");
        for (kind, file) in KINDS {
            assert_eq!(
                patch["data"][format!("resource.customizations.health.allsource.io_{kind}")],
                read(&format!("{DIR}/{file}.lua"))
            );
        }
    }
}

mod observability {
    //! Alert rules and dashboard: structure, promtool, and metric names that exist in the code.
    use super::*;

    fn rules() -> Vec<Value> {
        let doc: Value =
            serde_yaml::from_str(&read("deploy/prometheus/alerts.yaml")).expect("alerts");
        doc["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules").clone())
            .collect()
    }

    #[test]
    fn every_alert_has_expr_for_severity_and_annotations() {
        let rules = rules();
        let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
        assert_eq!(names.len(), rules.len(), "alert names are unique");
        for r in &rules {
            let n = r["alert"].as_str().expect("alert name");
            assert!(
                r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{n}: expr"
            );
            assert!(r["for"].as_str().is_some(), "{n}: for");
            assert!(
                matches!(
                    r["labels"]["severity"].as_str(),
                    Some("warning" | "critical")
                ),
                "{n}: labels.severity"
            );
            for a in ["summary", "description"] {
                assert!(
                    r["annotations"][a].as_str().is_some(),
                    "{n}: annotations.{a}"
                );
            }
        }
        // The four situations the runbook names.
        for needle in [
            "ReconcileErrors",
            "NodesNotReady",
            "ArchivalFailing",
            "QuotaPressure",
        ] {
            assert!(
                names.iter().any(|n| n.contains(needle)),
                "no alert for {needle}"
            );
        }
    }

    /// `allsource_*` names in `text`; with `quoted`, only those written as a string literal.
    fn metric_names(text: &str, quoted: bool) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("allsource_") {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let is_word_start = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if is_word_start && (!quoted || before == Some('"')) {
                let name = &tail[..end];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                names.insert(base.to_string());
            }
            rest = &tail[end.max(1)..];
        }
        names
    }

    fn rust_sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).expect("read source"));
            }
        }
    }

    /// Every allsource_* metric a dashboard panel or an alert queries is registered by the
    /// operator or the store node, so no panel stays empty because of a typo or a rename.
    #[test]
    fn dashboard_and_alerts_query_only_registered_metrics() {
        let mut code = String::new();
        rust_sources(&root().join("operator/src"), &mut code);
        rust_sources(&root().join("store-node/src"), &mut code);
        let registered = metric_names(&code, true);
        let dashboard = read("deploy/grafana/allsource.json");
        let _: Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
        for (what, text) in [
            ("dashboard", dashboard),
            ("alerts", read("deploy/prometheus/alerts.yaml")),
        ] {
            let queried = metric_names(&text, false);
            assert!(!queried.is_empty(), "{what} queries no allsource metric");
            let unknown: Vec<&String> = queried.difference(&registered).collect();
            assert!(
                unknown.is_empty(),
                "{what} queries unregistered metrics {unknown:?}; registered: {registered:?}"
            );
        }
    }

    /// promtool is Debian's `prometheus` package, which tests/env/install.sh installs: a missing
    /// promtool fails this test (unless skips are allowed with ALLSOURCE_ALLOW_NO_ENV=1).
    #[test]
    fn promtool_accepts_and_unit_tests_the_rules() {
        let out = match Command::new("promtool")
            .args(["check", "rules"])
            .arg(root().join("deploy/prometheus/alerts.yaml"))
            .output()
        {
            Ok(out) => out,
            Err(e) if allsource_tests::env::allow_no_env() => {
                eprintln!("SKIPPED promtool check: promtool: {e} (apt-get install prometheus)");
                return;
            }
            Err(e) => panic!(
                "promtool: {e}; install it with tests/env/install.sh (Debian package prometheus)"
            ),
        };
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The rules' unit tests: each alert fires on a synthetic incident (and not before `for`).
        let out = run(Command::new("promtool")
            .args(["test", "rules", "alerts_test.yaml"])
            .current_dir(root().join("deploy/prometheus")));
        assert!(
            out.status.success(),
            "promtool test rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

mod e2e {
    //! The chart on the real test cluster: `helm install` (kwok runs the Deployment's pods), the
    //! real operator process started with a token of the chart's ServiceAccount, samples applied
    //! and Ready, RBAC denials, no drift, `helm upgrade`, `helm uninstall` and what it leaves.
    use super::*;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    use allsource_tests::env::{self, TestEnv};
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    use k8s_openapi::api::core::v1::{
        PersistentVolume, PersistentVolumeClaim, Secret, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::Role;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{
        ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    };
    use kube::Api;

    const WAIT: Duration = Duration::from_secs(180);

    fn eventstores() -> ApiResource {
        ApiResource {
            group: "allsource.io".into(),
            version: "v1alpha1".into(),
            api_version: "allsource.io/v1alpha1".into(),
            kind: "EventStore".into(),
            plural: "eventstores".into(),
        }
    }

    /// The operator binary cargo built next to this test (`cargo build -p allsource-operator`),
    /// or `$ALLSOURCE_OPERATOR_BIN`.
    fn operator_bin() -> PathBuf {
        match std::env::var("ALLSOURCE_OPERATOR_BIN") {
            Ok(p) => PathBuf::from(p),
            Err(_) => allsource_tests::bins::workspace_bin("allsource-operator"),
        }
    }

    /// The operator process; killed when dropped.
    struct Operator {
        child: Child,
        http: String,
        log: PathBuf,
    }

    impl Operator {
        fn stop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        fn log_tail(&self) -> String {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
    }

    impl Drop for Operator {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }

    async fn http_get(url: &str) -> Option<(u16, String)> {
        let resp = reqwest::get(url).await.ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.text().await.ok()?))
    }

    fn kubeconfig_for_token(env: &TestEnv, token: &str, ns: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: operator\n  context:\n    cluster: test\n    user: operator\n    namespace: {ns}\ncurrent-context: operator\n",
            env.kube_apiserver(),
            env.kube_ca_file().display()
        )
    }

    fn helm_cmd(env: &TestEnv, ns: &str) -> Command {
        let mut c = Command::new(env.helm());
        c.arg("--kubeconfig")
            .arg(env.kubeconfig())
            .args(["--namespace", ns]);
        c
    }

    fn kubectl(env: &TestEnv) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(env.kubeconfig());
        c
    }

    /// Binds every Pending PVC of `ns` to a PersistentVolume made for it: the test cluster has
    /// no storage provisioner. Returns the PVs created.
    async fn bind_pending_claims(client: &kube::Client, ns: &str, made: &mut Vec<String>) {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        for pvc in claims
            .list(&ListParams::default())
            .await
            .expect("list PVCs")
        {
            let name = pvc.metadata.name.clone().unwrap_or_default();
            let bound = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .is_some();
            let pv_name = format!("{ns}-{name}");
            if bound || made.contains(&pv_name) {
                continue;
            }
            let size = pvc
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone())
                .unwrap_or_else(|| "10Gi".into());
            let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": format!("/var/tmp/allsource-e2e/{pv_name}")},
                    "claimRef": {"namespace": ns, "name": name}
                }
            }))
            .expect("PV");
            pvs.create(&PostParams::default(), &pv)
                .await
                .expect("create PV");
            made.push(pv_name);
        }
    }

    fn condition<'a>(obj: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
        obj.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
    }

    /// Applies the sample files with server-side apply into `ns`; returns the temp files.
    fn apply_samples(env: &TestEnv, ns: &str, dir: &Path, docs: &[Value]) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for (i, doc) in docs.iter().enumerate() {
            let path = dir.join(format!("sample-{i}-{}-{}.json", kind(doc), name(doc)));
            std::fs::write(&path, serde_json::to_vec_pretty(doc).expect("json"))
                .expect("write sample");
            stdout_ok(
                kubectl(env)
                    .args([
                        "apply",
                        "--server-side",
                        "--field-manager=e2e-samples",
                        "-n",
                        ns,
                        "-f",
                    ])
                    .arg(&path),
            );
            files.push(path);
        }
        files
    }

    /// Fresh places in the env's servers for the cloud samples of one run: a PostgreSQL database,
    /// a DynamoDB table name, an S3 and a GCS bucket (so runs never share state).
    struct Fixtures {
        pg: env::TestDatabase,
        table: String,
        s3_bucket: String,
        gcs_bucket: String,
    }

    impl Fixtures {
        async fn create(env: &TestEnv) -> Self {
            let pg = env.pg_test_database().await.expect("PostgreSQL database");
            let s3_bucket = env::unique_name("e2e-archive");
            let gcs_bucket = env::unique_name("e2e-archive");
            env.create_buckets(&s3_bucket, &gcs_bucket).await;
            Fixtures {
                pg,
                table: env::unique_name("e2e-orders"),
                s3_bucket,
                gcs_bucket,
            }
        }

        /// Removes the table (deletion protection lifted first), the buckets and the database.
        async fn remove(&self, env: &TestEnv) {
            let ddb = env.dynamodb_client();
            let _ = ddb
                .update_table()
                .table_name(&self.table)
                .deletion_protection_enabled(false)
                .send()
                .await;
            let _ = ddb.delete_table().table_name(&self.table).send().await;
            let s3 = env.s3_client();
            if let Ok(list) = s3.list_objects_v2().bucket(&self.s3_bucket).send().await {
                for o in list.contents() {
                    if let Some(k) = o.key() {
                        let _ = s3
                            .delete_object()
                            .bucket(&self.s3_bucket)
                            .key(k)
                            .send()
                            .await;
                    }
                }
            }
            let _ = s3.delete_bucket().bucket(&self.s3_bucket).send().await;
            let _ = reqwest::Client::new()
                .delete(format!(
                    "{}/storage/v1/b/{}",
                    env.gcs_endpoint(),
                    self.gcs_bucket
                ))
                .send()
                .await;
            if let Ok((client, conn)) =
                tokio_postgres::connect(env.pg_url(), tokio_postgres::NoTls).await
            {
                let conn = tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.pg.name
                    ))
                    .await;
                drop(client);
                let _ = conn.await;
            }
        }
    }

    /// Secret with AWS-style keys, as the samples' credentialsSecretRef expect.
    fn aws_keys_secret(name: &str, access: &str, secret: &str) -> Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "type": "Opaque",
            "stringData": {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret},
        })
    }

    /// The samples of config/samples pointed at the env's servers and at this run's fixtures:
    /// what a user edits in them (connection URL, endpoints, table and bucket names, credential
    /// Secrets), nothing else. The selfHosted store nodes run on `runner_node` (the pod runner).
    fn samples_for_env(env: &TestEnv, fx: &Fixtures, runner_node: &str) -> Vec<Value> {
        let mut docs = kustomize("config/samples");
        for d in docs.iter_mut() {
            let (k, n) = (kind(d).to_string(), name(d).to_string());
            if k == "Secret" && n == "orders-postgres-admin" {
                d["stringData"]["url"] = Value::from(fx.pg.url.clone());
            }
            let Some(spec) = d.get_mut("spec") else {
                continue;
            };
            match (k.as_str(), n.as_str()) {
                ("EventStore", _) => match spec["backend"].as_str() {
                    Some("selfHosted") => {
                        spec["selfHosted"]["podTemplate"] = serde_json::json!({
                            "nodeSelector": {"kubernetes.io/hostname": runner_node},
                            "tolerations": [podrunner::toleration()],
                        });
                    }
                    Some("dynamodb") => {
                        let ddb = &mut spec["dynamodb"];
                        ddb["endpoint"] = Value::from(env.dynamodb_endpoint());
                        ddb["tableName"] = Value::from(fx.table.clone());
                        ddb["credentialsSecretRef"] =
                            serde_json::json!({"name": "e2e-dynamodb-keys"});
                    }
                    Some("firestore") => {
                        spec["firestore"]["endpoint"] = Value::from(env.firestore_emulator_host());
                        spec["firestore"]["emulator"] = Value::from(true);
                        spec["firestore"]["projectId"] = Value::from(env.firestore_project());
                    }
                    _ => {}
                },
                ("ArchivePolicy", _) => {
                    let dest = &mut spec["destination"];
                    if dest.get("s3").is_some() {
                        let s3 = &mut dest["s3"];
                        s3["bucket"] = Value::from(fx.s3_bucket.clone());
                        s3["endpoint"] = Value::from(env.s3_endpoint());
                        s3["forcePathStyle"] = Value::from(true);
                        s3["credentialsSecretRef"] = serde_json::json!({"name": "e2e-s3-keys"});
                    }
                    if dest.get("gcs").is_some() {
                        dest["gcs"]["bucket"] = Value::from(fx.gcs_bucket.clone());
                        dest["gcs"]["endpoint"] = Value::from(env.gcs_endpoint());
                        dest["gcs"]["credentialsSecretRef"] =
                            serde_json::json!({"name": "e2e-gcs-token"});
                    }
                }
                _ => {}
            }
        }
        docs.insert(
            0,
            aws_keys_secret(
                "e2e-dynamodb-keys",
                env::AWS_TEST_ACCESS_KEY,
                env::AWS_TEST_SECRET_KEY,
            ),
        );
        docs.insert(
            0,
            aws_keys_secret("e2e-s3-keys", env.s3_access_key(), env.s3_secret_key()),
        );
        // fake-gcs-server ignores the token; a real one comes from Workload Identity or a key.
        docs.insert(
            0,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "e2e-gcs-token"}, "type": "Opaque",
                "stringData": {"GCS_OAUTH_TOKEN": "e2e-token"},
            }),
        );
        docs
    }

    /// Waits until every sample of kind EventStore, Tenant or ArchivePolicy in `ns` reports
    /// Ready=True at its generation; prints the time each got there.
    async fn wait_all_ready(
        client: &kube::Client,
        ns: &str,
        docs: &[Value],
        t0: Instant,
        op: &Operator,
    ) {
        let deadline = Instant::now() + WAIT;
        for d in docs
            .iter()
            .filter(|d| matches!(kind(d), "EventStore" | "Tenant" | "ArchivePolicy"))
        {
            let res = ApiResource {
                kind: kind(d).into(),
                plural: format!("{}s", kind(d).to_lowercase()).replace("policys", "policies"),
                ..eventstores()
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &res);
            loop {
                let obj = api.get(name(d)).await.expect("sample object");
                let observed = obj.data["status"]["observedGeneration"].as_i64();
                if observed == obj.metadata.generation
                    && condition(&obj, "Ready").is_some_and(|c| c["status"] == "True")
                {
                    eprintln!(
                        "{} {} Ready at {:?} after install",
                        kind(d),
                        name(d),
                        t0.elapsed()
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} {} not Ready: {}\noperator log:\n{}",
                    kind(d),
                    name(d),
                    obj.data["status"],
                    op.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    /// Appends an event and reads it back through the store node that holds `tenant`, with the
    /// token of its `<tenant>-credentials` Secret (the pod runner publishes each pod's loopback
    /// port; the Secret's endpoint is the owning node's in-cluster DNS name).
    async fn append_with_tenant_secret(client: &kube::Client, ns: &str, tenant: &str) {
        let secret = Api::<Secret>::namespaced(client.clone(), ns)
            .get(&format!("{tenant}-credentials"))
            .await
            .expect("credentials Secret");
        let data = secret.data.unwrap_or_default();
        let token = String::from_utf8(data["token"].0.clone()).expect("token");
        let tenants = ApiResource {
            kind: "Tenant".into(),
            plural: "tenants".into(),
            ..eventstores()
        };
        let t = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &tenants)
            .get(tenant)
            .await
            .expect("Tenant");
        let pod_name = t.data["status"]["location"]["name"]
            .as_str()
            .expect("status.location.name")
            .to_string();
        let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
            .get(&pod_name)
            .await
            .expect("store-node pod");
        let port = pod
            .metadata
            .annotations
            .unwrap_or_default()
            .get(podrunner::PORT_ANNOTATION)
            .cloned()
            .expect("runner port annotation");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let body = serde_json::json!({"events": [{
            "eventId": "00000000-0000-4000-8000-00000000e2e1",
            "eventType": "OrderPlaced",
            "data": {"total": 42}
        }]});
        let deadline = Instant::now() + WAIT;
        loop {
            // The node reloads the registry a few seconds after the ConfigMap changed.
            let code = http
                .post(format!("{url}/v1/streams/order-e2e/events"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if code == 201 {
                break;
            }
            assert!(Instant::now() < deadline, "append as {tenant}: HTTP {code}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let read: Value = http
            .get(format!("{url}/v1/streams/order-e2e/events"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        assert_eq!(read["events"][0]["eventType"], "OrderPlaced", "{read}");
        eprintln!("store node {pod_name} took an event from tenant {tenant}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn helm_install_upgrade_uninstall_with_the_operator_as_the_chart_service_account() {
        let Some(env) = env::require("kube") else {
            return;
        };
        // The samples need every test server: a missing one fails (or, opted out, skips).
        for s in ["postgres", "dynamodb", "s3", "gcs", "firestore"] {
            if env::require(s).is_none() {
                return;
            }
        }
        let admin = env.kube_client().await.expect("admin client");
        let release_ns = env.test_namespace("chart-op").await.expect("namespace");
        let watched = env.test_namespace("chart-watch").await.expect("namespace");
        let unwatched = env.test_namespace("chart-other").await.expect("namespace");
        let (rns, wns, uns) = (
            release_ns.name().to_string(),
            watched.name().to_string(),
            unwatched.name().to_string(),
        );
        let tmp = tempfile::tempdir().expect("temp dir");
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "not-yours"}, "stringData": {"k": "v"}
        }))
        .expect("secret");
        Api::<Secret>::namespaced(admin.clone(), &uns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("secret in the unwatched namespace");

        // 1. helm install, namespaced mode; kwok makes the two operator pods Ready.
        let t0 = Instant::now();
        stdout_ok(
            helm_cmd(env, &rns)
                .args(["install", RELEASE])
                .arg(chart_dir())
                .args(["--set", &format!("watchNamespaces={{{wns}}}")])
                // The operator's own pods go to the kwok nodes, never to the pod runner's.
                .args(["--set", "nodeSelector.type=kwok"])
                .args(["--wait", "--timeout", "180s"]),
        );
        let installed = t0.elapsed();
        let deploys: Api<Deployment> = Api::namespaced(admin.clone(), &rns);
        let dep = deploys.get(RELEASE).await.expect("operator Deployment");
        assert_eq!(dep.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        for c in [
            "eventstores.allsource.io",
            "tenants.allsource.io",
            "archivepolicies.allsource.io",
        ] {
            crds.get(c)
                .await
                .unwrap_or_else(|e| panic!("CRD {c} after helm install: {e}"));
        }

        // 2. The real operator, authenticated as the chart's ServiceAccount.
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &rns);
        let tr = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token = sas
            .create_token_request(RELEASE, &PostParams::default(), &tr)
            .await
            .expect("TokenRequest for the chart's ServiceAccount")
            .status
            .expect("token status")
            .token;
        let kubeconfig = tmp.path().join("operator.kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_for_token(env, &token, &rns)).expect("kubeconfig");
        let port = free_port();
        let log = tmp.path().join("operator.log");
        let child = Command::new(operator_bin())
            .args([
                "run",
                &format!("--namespaces={wns}"),
                &format!("--http-addr=127.0.0.1:{port}"),
                "--leader-elect=true",
                // The chart's default allow-list: every sample's image is from it.
                "--allowed-images=ghcr.io/allsource/store-node",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", &rns)
            .env("POD_NAME", "e2e-operator")
            .env("RUST_LOG", "info,kube=warn")
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the operator");
        let mut op = Operator {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = matches!(
                http_get(&format!("{}/readyz", op.http)).await,
                Some((200, _))
            );
            let leader = http_get(&format!("{}/metrics", op.http))
                .await
                .is_some_and(|(_, m)| m.lines().any(|l| l == "allsource_operator_leader 1"));
            if ready && leader {
                break;
            }
            if let Ok(Some(exit)) = op.child.try_wait() {
                panic!(
                    "the operator exited ({exit}) before getting ready:\n{}",
                    op.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "operator not ready/leader:\n{}",
                op.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let operator_ready = t0.elapsed();
        eprintln!("chart install (helm --wait) {installed:?}; install to operator Ready (leader, /readyz 200) {operator_ready:?}");

        // 3. Least privilege, seen by the apiserver.
        let sa_client = env.kube_client_for_token(&token).await.expect("SA client");
        match Api::<Secret>::namespaced(sa_client.clone(), &uns)
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => {
                panic!("reading Secrets of an unwatched namespace must be forbidden, got {other:?}")
            }
        }
        Api::<Secret>::namespaced(sa_client.clone(), &wns)
            .list(&ListParams::default())
            .await
            .expect("Secrets of the watched namespace are readable");
        for (verb, resource, group, ns) in [
            ("delete", "nodes", "", None),
            (
                "create",
                "clusterrolebindings",
                "rbac.authorization.k8s.io",
                None,
            ),
            ("get", "secrets", "", Some(uns.as_str())),
            ("create", "pods", "", Some(wns.as_str())),
            (
                "update",
                "leases",
                "coordination.k8s.io",
                Some(wns.as_str()),
            ),
        ] {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.into()),
                        resource: Some(resource.into()),
                        group: Some(group.into()),
                        namespace: ns.map(str::to_string),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let got = Api::<SelfSubjectAccessReview>::all(sa_client.clone())
                .create(&PostParams::default(), &review)
                .await
                .expect("SelfSubjectAccessReview");
            assert!(
                !got.status.as_ref().is_some_and(|s| s.allowed),
                "the operator's ServiceAccount may {verb} {resource} in {ns:?}"
            );
        }

        // 4. Samples, pointed at this run's fixtures in the env's servers: every one gets Ready.
        // The selfHosted store nodes are real store-node processes run by the pod runner.
        let fx = Fixtures::create(env).await;
        let runner_node = format!("runner-{wns}");
        let runner = {
            let cfg = podrunner::RunnerConfig {
                node_name: runner_node.clone(),
                binary: allsource_tests::bins::store_node(),
                image_match: "store-node".into(),
                state_dir: tmp.path().join("pods"),
            };
            let client = admin.clone();
            tokio::spawn(async move {
                if let Err(e) = podrunner::run(client, cfg).await {
                    eprintln!("pod runner stopped: {e}");
                }
            })
        };
        let docs = samples_for_env(env, &fx, &runner_node);
        let files = apply_samples(env, &wns, tmp.path(), &docs);
        let selfhosted: Vec<String> = docs
            .iter()
            .filter(|d| kind(d) == "EventStore" && d["spec"]["backend"] == "selfHosted")
            .map(|d| name(d).to_string())
            .collect();
        assert!(!selfhosted.is_empty());
        let stores: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &wns, &eventstores());
        let mut pvs = Vec::new();
        let deadline = Instant::now() + WAIT;
        for es in &selfhosted {
            loop {
                bind_pending_claims(&admin, &wns, &mut pvs).await;
                let obj = stores.get(es).await.expect("EventStore");
                if obj.data["status"]["observedGeneration"].as_i64() == obj.metadata.generation
                    && condition(&obj, "Ready").is_some_and(|c| c["status"] == "True")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "EventStore {es} not Ready: {}\noperator log:\n{}",
                    obj.data["status"],
                    op.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        wait_all_ready(&admin, &wns, &docs, t0, &op).await;
        let backends: Vec<String> = docs
            .iter()
            .filter(|d| kind(d) == "EventStore")
            .map(|d| {
                d["spec"]["backend"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        for b in ["selfHosted", "postgres", "dynamodb", "firestore"] {
            assert!(
                backends.iter().any(|x| x == b),
                "no {b} sample: {backends:?}"
            );
        }
        eprintln!("all samples Ready at {:?} after install", t0.elapsed());

        // A real store node takes an event with the pooled tenant's credentials Secret.
        append_with_tenant_secret(&admin, &wns, "acme").await;

        // What NOTES.txt tells the user to run lists every sample through the short names.
        let listed = stdout_ok(kubectl(env).args(["get", "es,tn,ap", "-n", &wns, "-o", "name"]));
        for d in docs
            .iter()
            .filter(|d| matches!(kind(d), "EventStore" | "Tenant" | "ArchivePolicy"))
        {
            let want = format!("{}.allsource.io/{}", kind(d).to_lowercase(), name(d));
            assert!(
                listed.lines().any(|l| l == want),
                "{want} not in `kubectl get es,tn,ap`: {listed}"
            );
        }

        // 5. No drift: a server-side dry-run apply of each sample changes nothing. kubectl reads the
        // live object and then dry-runs; a status write in between shows up as a diff, so a file
        // gets three tries (real drift, the operator rewriting our fields, shows every time).
        for f in &files {
            let mut last = String::new();
            let clean = (0..3).any(|_| {
                let out = run(kubectl(env)
                    .args([
                        "diff",
                        "--server-side",
                        "--field-manager=e2e-samples",
                        "-n",
                        &wns,
                        "-f",
                    ])
                    .arg(f));
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                out.status.success()
            });
            assert!(clean, "drift for {}: {last}", f.display());
        }

        // 6. helm upgrade with another log level rolls the Deployment.
        let before = deploys.get(RELEASE).await.expect("Deployment");
        stdout_ok(
            helm_cmd(env, &rns)
                .args(["upgrade", RELEASE])
                .arg(chart_dir())
                .args([
                    "--reuse-values",
                    "--set",
                    "logging.level=debug",
                    "--wait",
                    "--timeout",
                    "180s",
                ]),
        );
        let after = deploys.get(RELEASE).await.expect("Deployment");
        assert!(
            after.metadata.generation > before.metadata.generation,
            "upgrade did not change the Deployment"
        );
        let rust_log = after
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| {
                p.containers[0]
                    .env
                    .as_ref()?
                    .iter()
                    .find(|e| e.name == "RUST_LOG")?
                    .value
                    .clone()
            });
        assert_eq!(rust_log.as_deref(), Some("debug,kube=warn"));

        // 7. helm uninstall: the operator's objects go; CRDs, custom resources and what the
        // operator built for them stay (the store nodes keep serving).
        op.stop();
        stdout_ok(helm_cmd(env, &rns).args(["uninstall", RELEASE, "--wait", "--timeout", "180s"]));
        assert!(
            deploys.get_opt(RELEASE).await.expect("get").is_none(),
            "Deployment left"
        );
        assert!(
            sas.get_opt(RELEASE).await.expect("get").is_none(),
            "ServiceAccount left"
        );
        let roles: Api<Role> = Api::namespaced(admin.clone(), &wns);
        assert!(
            roles.get_opt(RELEASE).await.expect("get").is_none(),
            "Role in the watched namespace left"
        );
        for c in [
            "eventstores.allsource.io",
            "tenants.allsource.io",
            "archivepolicies.allsource.io",
        ] {
            crds.get(c)
                .await
                .unwrap_or_else(|e| panic!("CRD {c} removed by helm uninstall: {e}"));
        }
        let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), &wns);
        for es in &selfhosted {
            stores
                .get(es)
                .await
                .expect("EventStore kept after uninstall");
            sts.get(es)
                .await
                .expect("store-node StatefulSet kept after uninstall");
        }

        // Clean up: without an operator the finalizers would keep the namespace forever.
        for ar in ["eventstores", "tenants", "archivepolicies"] {
            let res = ApiResource {
                plural: ar.into(),
                kind: String::new(),
                ..eventstores()
            };
            let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &wns, &res);
            for o in api
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let n = o.metadata.name.clone().unwrap_or_default();
                let _ = api
                    .patch(
                        &n,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
        }
        // Stop the store-node pods while the runner still plays their kubelet, then the runner.
        let _ = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), &wns)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        runner.abort();
        let _ = Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone())
            .delete(&runner_node, &DeleteParams::default())
            .await;
        fx.remove(env).await;
        let pv_api: Api<PersistentVolume> = Api::all(admin.clone());
        for pv in pvs {
            let _ = pv_api.delete(&pv, &DeleteParams::default()).await;
        }
        for ns in [release_ns, watched, unwatched] {
            let _ = ns.cleanup().await;
        }
    }
}
