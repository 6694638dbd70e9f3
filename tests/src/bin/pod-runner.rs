//! `pod-runner`: runs store-node pods of the test control plane as local processes (see
//! `podrunner`). Usage:
//! `pod-runner --store-node-bin PATH --state-dir DIR [--node-name allsource-runner] [--image-match store-node]`
//! with `KUBECONFIG` pointing at the cluster.

use allsource_tests::podrunner;

use std::path::PathBuf;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let binary = arg(&args, "--store-node-bin").ok_or("--store-node-bin is required")?;
    let state_dir = arg(&args, "--state-dir").ok_or("--state-dir is required")?;
    let cfg = podrunner::RunnerConfig {
        node_name: arg(&args, "--node-name").unwrap_or_else(|| "allsource-runner".to_string()),
        binary: PathBuf::from(binary),
        image_match: arg(&args, "--image-match").unwrap_or_else(|| "store-node".to_string()),
        state_dir: PathBuf::from(state_dir),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    eprintln!(
        "pod-runner: node {} runs pods with images matching {:?} that tolerate {}",
        cfg.node_name,
        cfg.image_match,
        podrunner::toleration()
    );
    podrunner::run(client, cfg).await
}
