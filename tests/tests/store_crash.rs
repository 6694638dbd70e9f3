//! Crash loop on the real `store-node serve` binary (embedded engine, `--durability fsync`):
//! concurrent HTTP writers append batches, the process is SIGKILLed at a random moment, then
//! restarted, and a ledger of what the writers sent is checked against what the node serves:
//! every acknowledged event is present exactly once and in order, positions are gap-free, and a
//! batch whose response was lost in the crash is either entirely present or entirely absent
//! (never half), and once present stays present. A hostile tenant shares the node meanwhile
//! (maximal metadata, near-maximal events and snapshots, keys no WAL length field can hold,
//! largest pages, overflowing positions): its own acknowledged events survive too, and nothing
//! it does costs the other tenant an event.
//!
//! Cycles: 50 by default, `ALLSOURCE_CRASH_CYCLES=<n>` for a longer local run;
//! `ALLSOURCE_CRASH_SEED=<n>` replays a run (the seed is printed). Needs no external server.
//! The binary is built with `cargo build -p store-node` on first use (`STORE_NODE_BIN` to use a
//! prebuilt one), the same way `store_api.rs` does.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use store_node::tenant::sha256_hex;
use uuid::Uuid;

const TOKEN: &str = "t-crash";
const WRITERS: u64 = 6;

use allsource_tests::bins::{free_port, store_node as binary, workspace_bin};

fn crash_writer() -> PathBuf {
    workspace_bin("crash-writer")
}

/// A number from the environment (cycle counts, seeds), when set and valid.
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `ALLSOURCE_CRASH_SEED` to replay a run, else a fresh seed (printed by each test).
fn crash_seed() -> u64 {
    env_u64("ALLSOURCE_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// A tiny deterministic generator (no extra dependency); the seed is printed for replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The node answered 200: the batch must be present forever.
    Acked,
    /// The request failed in the crash: all or nothing.
    Unknown,
}

#[derive(Debug, Clone)]
struct Batch {
    ids: Vec<Uuid>,
    outcome: Outcome,
}

/// What each writer sent to its stream, in send order (one writer per stream).
type Ledger = Arc<Mutex<HashMap<String, Vec<Batch>>>>;

/// One served event: position, stream, event id.
type Served = (u64, String, Uuid);

struct Node {
    child: Child,
    base: String,
}

fn start(dir: &Path) -> Node {
    start_with(dir, &[])
}

fn start_with(dir: &Path, extra: &[String]) -> Node {
    let port = free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    let child = Command::new(binary())
        // metrics on a free port: parallel nodes would all claim the default
        .env("STORE_NODE_METRICS_ADDR", "127.0.0.1:0")
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--registry")
        .arg(dir.join("registry.json"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--durability", "fsync", "--log-format", "text"])
        .args(["--registry-poll-ms", "50"])
        .args(extra)
        .env_remove("POD_NAME")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn store-node");
    Node {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_ready(node: &mut Node, client: &reqwest::Client, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", node.base)).send().await {
            if r.status() == StatusCode::OK {
                return;
            }
        }
        if let Some(st) = node.child.try_wait().unwrap() {
            panic!(
                "store-node exited early ({st}); log:\n{}",
                std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "store-node not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event the node serves for the tenant, in position order.
async fn read_everything(client: &reqwest::Client, base: &str) -> Vec<Served> {
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let r = client
            .get(format!("{base}/v1/events?from={from}&limit=1000"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "read_all failed");
        let page: Value = r.json().await.unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        from = events.last().unwrap()["position"].as_u64().unwrap() + 1;
        out.extend(events.iter().map(|e| {
            (
                e["position"].as_u64().unwrap(),
                e["stream"].as_str().unwrap().to_string(),
                e["eventId"].as_str().unwrap().parse().unwrap(),
            )
        }));
    }
}

/// Checks the served events against the ledger; settles unknown batches (present -> acked,
/// absent -> forgotten). Returns the number of events checked.
fn check(events: &[Served], ledger: &Ledger, cycle: u64) -> usize {
    let mut seen = HashSet::new();
    for (i, (position, _, id)) in events.iter().enumerate() {
        assert_eq!(
            *position, i as u64,
            "cycle {cycle}: positions must be gap-free from 0"
        );
        assert!(seen.insert(*id), "cycle {cycle}: event {id} served twice");
    }
    let mut per_stream: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (_, stream, id) in events {
        per_stream.entry(stream.clone()).or_default().push(*id);
    }
    let mut ledger = ledger.lock().unwrap();
    let mut known = 0usize;
    for (w, batches) in ledger.iter_mut() {
        let mut expected = Vec::new();
        batches.retain_mut(|b| {
            let present = b.ids.iter().filter(|id| seen.contains(*id)).count();
            match b.outcome {
                Outcome::Acked => {
                    assert_eq!(
                        present,
                        b.ids.len(),
                        "cycle {cycle}: an acknowledged batch of writer {w} is missing events"
                    );
                }
                Outcome::Unknown => {
                    assert!(
                        present == 0 || present == b.ids.len(),
                        "cycle {cycle}: a batch of writer {w} is half present ({present} of {})",
                        b.ids.len()
                    );
                    if present == 0 {
                        return false;
                    }
                    b.outcome = Outcome::Acked;
                }
            }
            expected.extend(b.ids.iter().copied());
            true
        });
        known += expected.len();
        let got = per_stream.remove(w).unwrap_or_default();
        assert_eq!(
            got, expected,
            "cycle {cycle}: stream {w} does not hold exactly the acknowledged batches in order"
        );
    }
    assert!(
        per_stream.is_empty(),
        "cycle {cycle}: events nobody sent: {per_stream:?}"
    );
    assert_eq!(known, events.len());
    known
}

async fn writer(
    client: reqwest::Client,
    base: String,
    ledger: Ledger,
    w: u64,
    cycle: u64,
    seed: u64,
) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut acked = 0;
    for seq in 0u64.. {
        let n = 1 + rng.below(5);
        let ids: Vec<Uuid> = (0..n)
            .map(|i| {
                Uuid::from_u128(
                    ((cycle as u128) << 96) | ((w as u128) << 64) | (seq * 8 + i) as u128,
                )
            })
            .collect();
        let events: Vec<Value> = ids
            .iter()
            .map(|id| json!({"eventId": id, "eventType": "crash-test", "data": {"w": w, "seq": seq}}))
            .collect();
        ledger
            .lock()
            .unwrap()
            .entry(format!("w{w}"))
            .or_default()
            .push(Batch {
                ids: ids.clone(),
                outcome: Outcome::Unknown,
            });
        let r = client
            .post(format!("{base}/v1/streams/w{w}/events"))
            .bearer_auth(TOKEN)
            .json(&json!({"events": events}))
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {
                let body: Value = match resp.json().await {
                    Ok(b) => b,
                    Err(_) => return acked, // body lost in the crash: stays unknown
                };
                assert_eq!(body["deduplicated"], json!(false));
                let mut l = ledger.lock().unwrap();
                if let Some(b) = l.get_mut(&format!("w{w}")).and_then(|v| v.last_mut()) {
                    b.outcome = Outcome::Acked;
                }
                acked += 1;
            }
            Ok(resp) => {
                let status = resp.status();
                // The node is shutting down under us or refused: the batch stays unknown.
                assert!(
                    status.is_server_error(),
                    "writer {w}: unexpected answer {status}"
                );
                return acked;
            }
            Err(_) => return acked,
        }
    }
    acked
}

const HOSTILE_TOKEN: &str = "t-hostile";

/// Event ids of the hostile tenant's acknowledged appends.
type HostileLedger = Arc<Mutex<HashSet<Uuid>>>;

/// Metadata at the node's default limits: 64 entries, 256-byte keys.
fn maximal_metadata(tag: u64) -> Value {
    let mut m = serde_json::Map::new();
    for k in 0..64u64 {
        let key = format!("{k:02}{}", "k".repeat(254));
        m.insert(key, Value::String(format!("{tag}-{}", "v".repeat(120))));
    }
    Value::Object(m)
}

/// A tenant doing its worst while the node is killed under it: appends with maximal metadata,
/// near-maximal events, snapshots with maximal metadata, keys beyond the WAL's 16-bit fields
/// (must be refused with a 4xx, never written), reads of the largest page and overflowing
/// positions. Returns the number of requests the node answered.
async fn hostile_tenant(
    client: reqwest::Client,
    base: String,
    acked: HostileLedger,
    cycle: u64,
) -> u64 {
    let mut answered = 0u64;
    for seq in 0u64.. {
        let id = |i: u64| {
            Uuid::from_u128((0xdead_u128 << 112) | ((cycle as u128) << 64) | (seq * 8 + i) as u128)
        };
        let ids: Vec<Uuid> = (0..3).map(id).collect();
        let mut events: Vec<Value> = ids[..2]
            .iter()
            .map(|e| json!({"eventId": e, "eventType": "h".repeat(256), "data": {"seq": seq}, "metadata": maximal_metadata(seq)}))
            .collect();
        // Close to the 1 MiB event limit (first round of every fifth cycle, to keep the ledger
        // checks quick).
        let blob = if seq == 0 && cycle.is_multiple_of(5) {
            900_000
        } else {
            1_000
        };
        events.push(
            json!({"eventId": ids[2], "eventType": "big", "data": {"blob": "x".repeat(blob)}}),
        );
        let stream = format!("{}-{}", "s".repeat(240), seq % 4);
        let requests = [
            client
                .post(format!("{base}/v1/streams/{stream}/events"))
                .bearer_auth(HOSTILE_TOKEN)
                .json(&json!({"events": events})),
            // A metadata key longer than any WAL length field.
            client
                .post(format!("{base}/v1/streams/evil/events"))
                .bearer_auth(HOSTILE_TOKEN)
                .json(
                    &json!({"events": [{"eventId": Uuid::new_v4(), "eventType": "evil",
                    "data": {}, "metadata": {"k".repeat(70_000): "v"}}]}),
                ),
            client
                .put(format!("{base}/v1/streams/{stream}/snapshot"))
                .bearer_auth(HOSTILE_TOKEN)
                .json(
                    &json!({"version": 0, "data": {"state": "y".repeat(200_000)},
                    "metadata": maximal_metadata(seq)}),
                ),
            client
                .put(format!("{base}/v1/streams/evil/snapshot"))
                .bearer_auth(HOSTILE_TOKEN)
                .json(&json!({"version": 0, "data": {}, "metadata": {"k".repeat(70_000): "v"}})),
            client
                .get(format!("{base}/v1/events?from=0&limit=10000"))
                .bearer_auth(HOSTILE_TOKEN),
            client
                .get(format!("{base}/v1/events?from={}&limit=10000", u64::MAX))
                .bearer_auth(HOSTILE_TOKEN),
        ];
        for (kind, req) in requests.into_iter().enumerate() {
            if kind == 4 && seq > 0 {
                continue; // the largest page once per cycle
            }
            let Ok(resp) = req.send().await else {
                return answered; // the node was killed
            };
            let status = resp.status();
            if status.is_server_error() {
                return answered; // shutting down under us
            }
            let ok = match kind {
                0 => {
                    if status.is_success() && resp.bytes().await.is_ok() {
                        acked.lock().unwrap().extend(ids.iter().copied());
                    }
                    status.is_success()
                }
                1 | 3 => status.is_client_error(),
                2 => status.is_success(),
                _ => status == StatusCode::OK,
            };
            assert!(
                ok,
                "cycle {cycle}: hostile request {kind} answered {status}"
            );
            answered += 1;
        }
    }
    answered
}

/// Every acknowledged event of the hostile tenant is still served. Returns how many.
async fn check_hostile(
    client: &reqwest::Client,
    base: &str,
    acked: &HostileLedger,
    cycle: u64,
) -> usize {
    let mut found = HashSet::new();
    let mut from = 0u64;
    loop {
        let r = client
            .get(format!("{base}/v1/events?from={from}&limit=100"))
            .bearer_auth(HOSTILE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "hostile read_all failed");
        let page: Value = r.json().await.unwrap();
        let events = page["events"].as_array().unwrap();
        let Some(last) = events.last() else { break };
        from = last["position"].as_u64().unwrap() + 1;
        found.extend(
            events
                .iter()
                .map(|e| e["eventId"].as_str().unwrap().parse::<Uuid>().unwrap()),
        );
    }
    let acked = acked.lock().unwrap();
    let missing = acked.difference(&found).count();
    assert_eq!(
        missing, 0,
        "cycle {cycle}: {missing} acknowledged events of the hostile tenant are gone"
    );
    acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_crash_loop_keeps_every_acknowledged_event_once_and_in_order() {
    let cycles = env_u64("ALLSOURCE_CRASH_CYCLES").unwrap_or(50);
    let seed = crash_seed();
    println!("crash loop: {cycles} cycles, ALLSOURCE_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("registry.json"),
        serde_json::to_vec(&json!({"version": 1, "tenants": [
            {"id": "crash", "tokenSha256": [sha256_hex(TOKEN)]},
            {"id": "hostile", "tokenSha256": [sha256_hex(HOSTILE_TOKEN)]}
        ]}))
        .unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ledger: Ledger = Arc::new(Mutex::new(HashMap::new()));
    let hostile_acked: HostileLedger = Arc::new(Mutex::new(HashSet::new()));
    let mut hostile_requests = 0u64;
    let mut total_acked = 0u64;
    let mut killed_with_unknown = 0u64;
    for cycle in 0..cycles {
        let mut node = start(dir);
        wait_ready(&mut node, &client, dir).await;
        let served = read_everything(&client, &node.base).await;
        check(&served, &ledger, cycle);
        check_hostile(&client, &node.base, &hostile_acked, cycle).await;

        let hostile = tokio::spawn(hostile_tenant(
            client.clone(),
            node.base.clone(),
            hostile_acked.clone(),
            cycle,
        ));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    client.clone(),
                    node.base.clone(),
                    ledger.clone(),
                    w,
                    cycle,
                    rng.next(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20 + rng.below(250))).await;
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        for h in writers {
            total_acked += h.await.unwrap();
        }
        hostile_requests += hostile.await.unwrap();
        killed_with_unknown += ledger
            .lock()
            .unwrap()
            .values()
            .flatten()
            .filter(|b| b.outcome == Outcome::Unknown)
            .count() as u64;
    }
    // Final restart: the last crash is checked too.
    let mut node = start(dir);
    wait_ready(&mut node, &client, dir).await;
    let served = read_everything(&client, &node.base).await;
    let n = check(&served, &ledger, cycles);
    let h = check_hostile(&client, &node.base, &hostile_acked, cycles).await;
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    println!(
        "crash loop: {cycles} SIGKILLs, {total_acked} acknowledged batches, {killed_with_unknown} \
         batches in flight at a kill, {n} events verified; hostile tenant: {hostile_requests} \
         requests answered, {h} of its acknowledged events verified"
    );
    assert!(
        hostile_requests >= cycles,
        "the hostile tenant barely ran ({hostile_requests} requests answered)"
    );
    assert!(
        total_acked >= cycles,
        "the load barely ran ({total_acked} acknowledged batches)"
    );
    assert!(n as u64 >= total_acked);
}

/// Runs `crash-writer dump` and parses its events.
fn dump(dir: &Path) -> Vec<Served> {
    let out = Command::new(crash_writer())
        .arg("dump")
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run crash-writer dump");
    assert!(out.status.success(), "crash-writer dump failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("EV ")?.split(' ');
            let position = f.next()?.parse().ok()?;
            let stream = f.next()?.to_string();
            let _version = f.next()?;
            let id = f.next()?.parse().ok()?;
            Some((position, stream, id))
        })
        .collect()
}

/// The same ledger check on a process that appends through the engine directly with tiny
/// checkpoint, WAL-file and compaction thresholds, so SIGKILL also lands inside Parquet
/// flushes, manifest renames, WAL trims and compactions.
#[test]
fn sigkill_during_checkpoints_and_compaction_keeps_the_ledger() {
    use std::io::BufRead;
    let cycles = env_u64("ALLSOURCE_CRASH_CYCLES").unwrap_or(50);
    let seed = crash_seed();
    println!("engine crash loop: {cycles} cycles, ALLSOURCE_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ledger: Ledger = Arc::new(Mutex::new(HashMap::new()));
    let mut acked_total = 0u64;
    for cycle in 0..cycles {
        let served = dump(&data);
        check(&served, &ledger, cycle);
        let mut child = Command::new(crash_writer())
            .arg("write")
            .arg(&data)
            .arg(cycle.to_string())
            .arg("3")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash-writer");
        let stdout = child.stdout.take().unwrap();
        let l2 = ledger.clone();
        let reader = std::thread::spawn(move || {
            let mut acked = 0u64;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("SEND"), Some(stream), Some(ids)) => {
                        let ids = ids.split(',').map(|i| i.parse().unwrap()).collect();
                        l2.lock()
                            .unwrap()
                            .entry(stream.to_string())
                            .or_default()
                            .push(Batch {
                                ids,
                                outcome: Outcome::Unknown,
                            });
                    }
                    (Some("ACK"), Some(stream), None) => {
                        let mut l = l2.lock().unwrap();
                        let b = l.get_mut(stream).and_then(|v| v.last_mut()).unwrap();
                        b.outcome = Outcome::Acked;
                        acked += 1;
                    }
                    _ => {}
                }
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(30 + rng.below(300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked_total += reader.join().unwrap();
    }
    let served = dump(&data);
    let n = check(&served, &ledger, cycles);
    let segments = std::fs::read_dir(data.join("segments").join("crash"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!(
        "engine crash loop: {cycles} SIGKILLs, {acked_total} acknowledged batches, {n} events verified, {segments} segment files"
    );
    assert!(
        acked_total >= cycles,
        "the load barely ran ({acked_total} acknowledged batches)"
    );
    assert!(
        segments > 0,
        "no checkpoint ever ran, the loop did not test what it claims"
    );
}

/// Token of the tenant the purge loop erases.
const GONE_TOKEN: &str = "t-gone";

/// Writes the registry of the purge loop: "crash" active, "gone" in `gone_state`.
fn write_purge_registry(dir: &Path, gone_state: &str) {
    let tmp = dir.join("registry.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(&json!({"version": 1, "tenants": [
            {"id": "crash", "tokenSha256": [sha256_hex(TOKEN)]},
            {"id": "gone", "tokenSha256": [sha256_hex(GONE_TOKEN)], "state": gone_state},
        ]}))
        .unwrap(),
    )
    .unwrap();
    std::fs::rename(tmp, dir.join("registry.json")).unwrap();
}

/// How many events the node serves to `token`.
async fn count_events(client: &reqwest::Client, base: &str, token: &str) -> usize {
    let r = client
        .get(format!("{base}/v1/events?from=0&limit=1000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "read_all failed");
    let page: Value = r.json().await.unwrap();
    page["events"].as_array().unwrap().len()
}

fn segment_files(dir: &Path, tenant: &str) -> usize {
    std::fs::read_dir(dir.join("data").join("segments").join(tenant))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A registry-driven purge under SIGKILL: each cycle fills tenant "gone" (and has it
/// checkpointed into Parquet by a clean stop), marks it `purging`, SIGKILLs the node at a random
/// moment while writers append to tenant "crash" (during or after the purge), restarts it until
/// it reports `tenant_purged`, SIGKILLs it again, and reactivates "gone": the ledger of "crash"
/// holds (no acknowledged event lost, none doubled) and "gone" never serves an event again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_and_after_a_purge_keeps_the_other_tenant_and_resurrects_nothing() {
    let cycles = env_u64("ALLSOURCE_PURGE_CYCLES").unwrap_or(6);
    let seed = crash_seed();
    println!("purge crash loop: {cycles} cycles, ALLSOURCE_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ledger: Ledger = Arc::new(Mutex::new(HashMap::new()));
    let (mut gone_acked, mut crash_acked, mut verified) = (0u64, 0u64, 0usize);
    for cycle in 0..cycles {
        // Fill "gone", then stop cleanly: the final checkpoint puts its events into Parquet.
        write_purge_registry(dir, "active");
        let mut node = start(dir);
        wait_ready(&mut node, &client, dir).await;
        let before = check(&read_everything(&client, &node.base).await, &ledger, cycle);
        assert!(
            before >= verified,
            "cycle {cycle}: the other tenant lost events"
        );
        verified = before;
        assert_eq!(
            count_events(&client, &node.base, GONE_TOKEN).await,
            0,
            "cycle {cycle}: events of the purged tenant came back"
        );
        for b in 0..4u128 {
            let id = |i: u128| Uuid::from_u128((cycle as u128) << 64 | b << 8 | i);
            let events: Vec<Value> = (0..3)
                .map(|i| json!({"eventId": id(i), "eventType": "gone", "data": {"b": b as u64}}))
                .collect();
            let r = client
                .post(format!("{}/v1/streams/g{b}/events", node.base))
                .bearer_auth(GONE_TOKEN)
                .json(&json!({"events": events}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            gone_acked += 3;
        }
        let pid = node.child.id().to_string();
        let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(term.success());
        node.child.wait().unwrap();
        assert!(
            segment_files(dir, "gone") > 0,
            "cycle {cycle}: no segment of the tenant to purge was written"
        );

        // Purge under load, SIGKILL at a random moment (before, during or after the purge).
        write_purge_registry(dir, "purging");
        let mut node = start(dir);
        wait_ready(&mut node, &client, dir).await;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    client.clone(),
                    node.base.clone(),
                    ledger.clone(),
                    w,
                    cycle,
                    rng.next(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        for h in writers {
            crash_acked += h.await.unwrap();
        }

        // Restart until the node reports the purge done, then SIGKILL right after it.
        let mut node = start(dir);
        wait_ready(&mut node, &client, dir).await;
        let after = check(&read_everything(&client, &node.base).await, &ledger, cycle);
        assert!(
            after >= verified,
            "cycle {cycle}: the other tenant lost events"
        );
        verified = after;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = client
                .get(format!("{}/v1/stats", node.base))
                .bearer_auth(GONE_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::GONE);
            let body: Value = r.json().await.unwrap();
            if body["code"] == "tenant_purged" {
                break;
            }
            assert!(Instant::now() < deadline, "cycle {cycle}: no purge: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            segment_files(dir, "gone"),
            0,
            "cycle {cycle}: segment files of the purged tenant remain"
        );
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
    }
    // Final restart: the last crash is checked too.
    write_purge_registry(dir, "active");
    let mut node = start(dir);
    wait_ready(&mut node, &client, dir).await;
    let n = check(&read_everything(&client, &node.base).await, &ledger, cycles);
    assert_eq!(count_events(&client, &node.base, GONE_TOKEN).await, 0);
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    println!(
        "purge crash loop: {cycles} purges, {gone_acked} events of the purged tenant acknowledged \
         and none served again; other tenant: {verified} events verified before the last purge, \
         {n} after, {crash_acked} batches acknowledged during purges"
    );
    assert!(n >= verified, "the other tenant lost events");
    assert!(crash_acked > 0, "no write raced a purge");
}

const VICTIM_TOKEN: &str = "t-victim";

/// Writes the registry of the purge crash loop atomically: the other tenant `crash` is always
/// active, `victim` is `active` or `purging` (how the operator deletes a tenant with its data).
fn write_registry(dir: &Path, victim_purging: bool) {
    let mut victim = json!({"id": "victim", "tokenSha256": [sha256_hex(VICTIM_TOKEN)]});
    if victim_purging {
        victim["state"] = json!("purging");
    }
    let body = serde_json::to_vec(&json!({"version": 1, "tenants": [
        {"id": "crash", "tokenSha256": [sha256_hex(TOKEN)]},
        victim
    ]}))
    .unwrap();
    let tmp = dir.join("registry.json.tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join("registry.json")).unwrap();
}

/// The incarnation a victim event id was written in.
fn incarnation_of(id: &Uuid) -> u64 {
    ((id.as_u128() >> 64) & 0xffff_ffff) as u64
}

/// What the test knows about the victim tenant: the incarnation it writes (one more after
/// each purge it saw finish), whether a purge is requested, and the ids of the current
/// incarnation's acknowledged appends.
#[derive(Debug, Default)]
struct Victim {
    incarnation: u64,
    purging: bool,
    acked: HashSet<Uuid>,
    seq: u64,
    purges_done: u64,
    checks: u64,
}

type SharedVictim = Arc<Mutex<Victim>>;

/// Why a step of the victim's script stopped: the node died under it (the kill), or answered
/// a server error (shown when that happens outside a kill).
struct NodeGone(String);

/// One GET as the victim: the status and the error code, if any.
async fn victim_get(
    client: &reqwest::Client,
    url: &str,
) -> Result<(StatusCode, Option<Value>), NodeGone> {
    let resp = client
        .get(url)
        .bearer_auth(VICTIM_TOKEN)
        .send()
        .await
        .map_err(|e| NodeGone(format!("GET {url}: {e}")))?;
    let status = resp.status();
    if status.is_server_error() {
        let body = resp.text().await.unwrap_or_default();
        return Err(NodeGone(format!("GET {url}: {status} {body}")));
    }
    let body: Value = resp
        .json()
        .await
        .map_err(|e| NodeGone(format!("GET {url}: body: {e}")))?;
    Ok((status, Some(body)))
}

/// Appends one batch of the current incarnation; false when the victim is refused (410).
async fn victim_append(
    client: &reqwest::Client,
    base: &str,
    victim: &SharedVictim,
) -> Result<bool, NodeGone> {
    let (ids, stream) = {
        let mut v = victim.lock().unwrap();
        v.seq += 1;
        let ids: Vec<Uuid> = (0..3u128)
            .map(|i| {
                Uuid::from_u128(
                    (0x71c7_u128 << 112)
                        | ((v.incarnation as u128) << 64)
                        | ((v.seq as u128) << 8)
                        | i,
                )
            })
            .collect();
        // Few streams: a re-created tenant reuses the erased streams' names and versions.
        (ids, format!("s{}", v.seq % 3))
    };
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"eventId": id, "eventType": "victim", "data": {"pad": "p".repeat(200)}}))
        .collect();
    let resp = client
        .post(format!("{base}/v1/streams/{stream}/events"))
        .bearer_auth(VICTIM_TOKEN)
        .json(&json!({"events": events}))
        .send()
        .await
        .map_err(|e| NodeGone(format!("append: {e}")))?;
    let status = resp.status();
    if status == StatusCode::GONE {
        return Ok(false);
    }
    if status.is_server_error() {
        let body = resp.text().await.unwrap_or_default();
        return Err(NodeGone(format!("append: {status} {body}")));
    }
    assert!(status.is_success(), "victim append answered {status}");
    resp.bytes()
        .await
        .map_err(|e| NodeGone(format!("append body: {e}")))?;
    victim.lock().unwrap().acked.extend(ids);
    Ok(true)
}

/// Polls the victim's `/v1/stats` until `done` accepts the answer (20 s at most).
async fn victim_wait(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> Result<(), NodeGone> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = victim_get(client, &format!("{base}/v1/stats")).await?;
        if done(status, body.as_ref().unwrap_or(&Value::Null)) {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "victim: {what} not reached in 20 s (last {status} {body:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn purged(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::GONE && body["code"] == json!("tenant_purged")
}

/// Requests the victim's purge and waits until the node reports it done.
async fn victim_purge(
    client: &reqwest::Client,
    base: &str,
    dir: &Path,
    victim: &SharedVictim,
) -> Result<(), NodeGone> {
    victim.lock().unwrap().purging = true;
    write_registry(dir, true);
    victim_wait(client, base, "tenant_purged", purged).await
}

/// After a purge the node finished: the tenant id is used again, as a new incarnation.
async fn victim_recreate(
    client: &reqwest::Client,
    base: &str,
    dir: &Path,
    victim: &SharedVictim,
) -> Result<(), NodeGone> {
    write_registry(dir, false);
    {
        let mut v = victim.lock().unwrap();
        v.purging = false;
        v.incarnation += 1;
        v.acked.clear();
        v.purges_done += 1;
    }
    victim_wait(client, base, "active again", |s, _| s == StatusCode::OK).await
}

/// Everything the victim is served (all events, and each stream) is of its current
/// incarnation, gap-free from position 0, and holds every acknowledged append of it.
async fn victim_check(
    client: &reqwest::Client,
    base: &str,
    victim: &SharedVictim,
    cycle: u64,
) -> Result<(), NodeGone> {
    let (incarnation, acked) = {
        let v = victim.lock().unwrap();
        (v.incarnation, v.acked.clone())
    };
    let mut served: Vec<(u64, Uuid)> = Vec::new();
    let mut from = 0u64;
    loop {
        let (status, page) =
            victim_get(client, &format!("{base}/v1/events?from={from}&limit=1000")).await?;
        assert_eq!(
            status,
            StatusCode::OK,
            "cycle {cycle}: victim read_all {page:?}"
        );
        let page = page.unwrap_or(Value::Null);
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let Some(last) = events.last() else { break };
        from = last["position"].as_u64().unwrap() + 1;
        served.extend(events.iter().map(|e| {
            (
                e["position"].as_u64().unwrap(),
                e["eventId"].as_str().unwrap().parse::<Uuid>().unwrap(),
            )
        }));
    }
    for s in 0..3 {
        let (status, page) = victim_get(
            client,
            &format!("{base}/v1/streams/s{s}/events?from=0&limit=1000"),
        )
        .await?;
        if status == StatusCode::NOT_FOUND {
            continue;
        }
        assert_eq!(
            status,
            StatusCode::OK,
            "cycle {cycle}: victim stream read {page:?}"
        );
        let page = page.unwrap_or(Value::Null);
        for e in page["events"].as_array().cloned().unwrap_or_default() {
            let id: Uuid = e["eventId"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                incarnation_of(&id),
                incarnation,
                "cycle {cycle}: stream s{s} serves event {id} of purged incarnation {} \
                 (current {incarnation})",
                incarnation_of(&id)
            );
        }
    }
    let stale: Vec<_> = served
        .iter()
        .filter(|(_, id)| incarnation_of(id) != incarnation)
        .collect();
    assert!(
        stale.is_empty(),
        "cycle {cycle}: {} events of purged incarnations served to the re-created tenant \
         (current incarnation {incarnation}), e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    for (i, (p, _)) in served.iter().enumerate() {
        assert_eq!(
            *p, i as u64,
            "cycle {cycle}: victim positions not gap-free from 0"
        );
    }
    let ids: HashSet<Uuid> = served.iter().map(|(_, id)| *id).collect();
    let missing = acked.difference(&ids).count();
    assert_eq!(
        missing, 0,
        "cycle {cycle}: {missing} acknowledged events of the victim's current incarnation lost"
    );
    victim.lock().unwrap().checks += 1;
    Ok(())
}

/// The victim's life while the node runs, until the node is killed: write, purge (checkpoints
/// run every few milliseconds meanwhile), re-create, write again, check, and so on.
async fn victim_script(
    client: reqwest::Client,
    base: String,
    dir: PathBuf,
    victim: SharedVictim,
    cycle: u64,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    let _ = async {
        loop {
            // Appends racing the purge request: the last ones are still hot when it comes.
            let writes = 1 + rng.below(12);
            let writer = {
                let (client, base, victim) = (client.clone(), base.clone(), victim.clone());
                tokio::spawn(async move {
                    for _ in 0..writes {
                        if !victim_append(&client, &base, &victim).await? {
                            break;
                        }
                    }
                    Ok::<(), NodeGone>(())
                })
            };
            tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
            victim_purge(&client, &base, &dir, &victim).await?;
            writer.await.unwrap()?;
            victim_recreate(&client, &base, &dir, &victim).await?;
            for _ in 0..1 + rng.below(4) {
                assert!(
                    victim_append(&client, &base, &victim).await?,
                    "re-created victim refused"
                );
            }
            victim_check(&client, &base, &victim, cycle).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), NodeGone>(())
    }
    .await;
}

/// A tenant purged (registry `purging`, as the operator does it) while checkpoints run every
/// few milliseconds, the node SIGKILLed at random moments (before, during or after the purge,
/// or after the tenant id was used again), restarted: no event of a purged incarnation is ever
/// served to the re-created tenant, live or after a restart, and the other tenant keeps every
/// acknowledged event. `ALLSOURCE_PURGE_CRASH_CYCLES` (default 30) and `ALLSOURCE_CRASH_SEED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_purges_and_checkpoints_never_serves_purged_events() {
    let cycles = env_u64("ALLSOURCE_PURGE_CRASH_CYCLES").unwrap_or(30);
    let seed = crash_seed();
    println!("purge crash loop: {cycles} cycles, ALLSOURCE_CRASH_SEED={seed}");
    let started = Instant::now();
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    write_registry(&dir, false);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ledger: Ledger = Arc::new(Mutex::new(HashMap::new()));
    let victim: SharedVictim = Arc::new(Mutex::new(Victim::default()));
    let mut total_acked = 0u64;
    for cycle in 0..=cycles {
        // Checkpoints as often as every few milliseconds, or less often than the registry
        // poll (so that a purge meets a tenant with unflushed events).
        let interval = [3, 10, 40, 120][rng.below(4) as usize];
        let extra = [
            "--checkpoint-interval-ms".to_string(),
            interval.to_string(),
            "--checkpoint-wal-bytes".to_string(),
            "1".to_string(),
        ];
        let mut node = start_with(&dir, &extra);
        wait_ready(&mut node, &client, &dir).await;
        // A purge requested before the kill is finished by the restarted node.
        if victim.lock().unwrap().purging {
            let r = victim_wait(&client, &node.base, "tenant_purged after restart", purged).await;
            if let Err(e) = r {
                panic!(
                    "cycle {cycle}: waiting for the purge after a restart: {}",
                    e.0
                );
            }
            let r = victim_recreate(&client, &node.base, &dir, &victim).await;
            if let Err(e) = r {
                panic!(
                    "cycle {cycle}: re-creating the victim after a restart: {}",
                    e.0
                );
            }
        }
        check(&read_everything(&client, &node.base).await, &ledger, cycle);
        if let Err(e) = victim_check(&client, &node.base, &victim, cycle).await {
            panic!("cycle {cycle}: victim check after a restart: {}", e.0);
        }
        if cycle == cycles {
            node.child.kill().unwrap();
            node.child.wait().unwrap();
            break;
        }
        let writers: Vec<_> = (0..2)
            .map(|w| {
                tokio::spawn(writer(
                    client.clone(),
                    node.base.clone(),
                    ledger.clone(),
                    w,
                    cycle,
                    rng.next(),
                ))
            })
            .collect();
        let script = tokio::spawn(victim_script(
            client.clone(),
            node.base.clone(),
            dir.clone(),
            victim.clone(),
            cycle,
            rng.next(),
        ));
        tokio::time::sleep(Duration::from_millis(50 + rng.below(900))).await;
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        for h in writers {
            total_acked += h.await.unwrap();
        }
        script.await.unwrap();
    }
    let v = victim.lock().unwrap();
    println!(
        "purge crash loop: {cycles} SIGKILLs in {:?}, {} purges finished, {} victim checks, \
         {total_acked} acknowledged batches of the other tenant",
        started.elapsed(),
        v.purges_done,
        v.checks
    );
    assert!(
        v.purges_done >= cycles / 2,
        "too few purges ran: {}",
        v.purges_done
    );
    assert!(total_acked >= cycles, "the other tenant barely wrote");
}
