//! A loopback Firestore Admin API for the operator tests (the env's emulator answers 404 to the
//! Admin API): it records every Admin API call and serves it from memory (composite indexes and
//! field configurations under `/collectionGroups/`, and databases: `projects.databases.get`,
//! `create`, `delete`), and forwards every other request (the data API) to the emulator, which
//! creates a named database on its first write. Used by the operator_cloud
//! and operator_siloed suites.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};

/// What the recording server saw: method, decoded path with query, authorization, body.
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, Value)>>>;

/// In-memory Admin API state.
#[derive(Default)]
pub struct AdminState {
    /// Composite indexes of every database (`name` says whose).
    pub indexes: Vec<Value>,
    /// Field configurations by path (`/v1/projects/p/databases/d/collectionGroups/g/fields/f`).
    pub fields: BTreeMap<String, Value>,
    /// Databases by path (`/v1/projects/p/databases/d`): what a `GET` answers.
    pub databases: BTreeMap<String, Value>,
}

/// The shared state of a recording server.
pub type State = std::sync::Arc<std::sync::Mutex<AdminState>>;

fn not_found(what: &str) -> (StatusCode, String) {
    let body = json!({"error": {"code": 404, "status": "NOT_FOUND",
                                "message": format!("{what} not found")}});
    (StatusCode::NOT_FOUND, body.to_string())
}

/// The answer to a database call (`.../databases` or `.../databases/{d}`); None when `base` is
/// no database path.
fn database_call(
    s: &mut AdminState,
    method: &str,
    base: &str,
    query: &str,
    body: &Value,
) -> Option<(StatusCode, String)> {
    let rest = base.strip_prefix("/v1/projects/")?;
    let (project, tail) = rest.split_once('/')?;
    if tail == "databases" && method == "POST" {
        let id = query.strip_prefix("databaseId=")?;
        let path = format!("/v1/projects/{project}/databases/{id}");
        if s.databases.contains_key(&path) {
            let body = json!({"error": {"code": 409, "status": "ALREADY_EXISTS",
                                        "message": "database already exists"}});
            return Some((StatusCode::CONFLICT, body.to_string()));
        }
        let db = json!({"name": format!("projects/{project}/databases/{id}"),
                        "locationId": body["locationId"], "type": body["type"]});
        s.databases.insert(path, db);
        return Some((
            StatusCode::OK,
            json!({"name": "operations/db-1"}).to_string(),
        ));
    }
    let db = tail.strip_prefix("databases/")?;
    if db.contains('/') {
        return None;
    }
    Some(match method {
        "GET" => match s.databases.get(base) {
            Some(d) => (StatusCode::OK, d.to_string()),
            None => not_found(base),
        },
        "DELETE" => match s.databases.remove(base) {
            Some(_) => (
                StatusCode::OK,
                json!({"name": "operations/db-2"}).to_string(),
            ),
            None => not_found(base),
        },
        _ => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
    })
}

/// The answer to a `/collectionGroups/` call.
fn collection_group_call(
    s: &mut AdminState,
    method: &str,
    base: &str,
    query: &str,
    body: &Value,
) -> (StatusCode, String) {
    // An index's name is `<list path>/<id>`: a database lists only its own.
    let list = base.trim_start_matches("/v1/");
    let answer = match (method, base.ends_with("/indexes")) {
        ("GET", true) => {
            let own: Vec<&Value> = s
                .indexes
                .iter()
                .filter(|i| i["name"].as_str().is_some_and(|n| n.starts_with(list)))
                .collect();
            json!({ "indexes": own })
        }
        ("POST", true) => {
            let mut idx = body.clone();
            idx["state"] = "READY".into();
            idx["name"] = format!("{list}/idx-{}", s.indexes.len() + 1).into();
            s.indexes.push(idx);
            json!({"name": "operations/index-1"})
        }
        ("GET", false) => s.fields.get(base).cloned().unwrap_or_else(|| {
            json!({"name": base, "indexConfig": {
                "usesAncestorConfig": true,
                "indexes": [{"order": "ASCENDING", "queryScope": "COLLECTION"}]}})
        }),
        ("PATCH", false) => {
            let f = s
                .fields
                .entry(base.to_string())
                .or_insert_with(|| json!({"name": base}));
            if query.contains("ttlConfig") {
                f["ttlConfig"] = json!({"state": "ACTIVE"});
            } else {
                f["indexConfig"] = body["indexConfig"].clone();
            }
            json!({"name": "operations/field-1"})
        }
        _ => return (StatusCode::METHOD_NOT_ALLOWED, String::new()),
    };
    (StatusCode::OK, answer.to_string())
}

/// Starts the server; returns its `host:port`, what it saw and its state.
pub async fn recording_server(emulator: String) -> (String, Seen, State) {
    let seen: Seen = Default::default();
    let state: State = Default::default();
    let (rec, st) = (seen.clone(), state.clone());
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let (rec, st, http, emulator) =
                (rec.clone(), st.clone(), http.clone(), emulator.clone());
            async move {
                let raw = uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let path = raw.replace("%28", "(").replace("%29", ")");
                let (base, query) = path.split_once('?').unwrap_or((&path, ""));
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let record = |rec: &Seen| {
                    rec.lock().unwrap().push((
                        method.to_string(),
                        path.clone(),
                        auth.clone(),
                        json.clone(),
                    ));
                };
                if path.contains("/collectionGroups/") {
                    record(&rec);
                    let mut s = st.lock().unwrap();
                    return collection_group_call(&mut s, method.as_str(), base, query, &json);
                }
                let answer = {
                    let mut s = st.lock().unwrap();
                    database_call(&mut s, method.as_str(), base, query, &json)
                };
                if let Some(answer) = answer {
                    record(&rec);
                    return answer;
                }
                let mut req = http
                    .request(method, format!("http://{emulator}{raw}"))
                    .body(body.to_vec());
                for h in ["authorization", "content-type"] {
                    if let Some(v) = headers.get(h) {
                        req = req.header(h, v.clone());
                    }
                }
                let Ok(resp) = req.send().await else {
                    return (StatusCode::BAD_GATEWAY, String::new());
                };
                let code = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                (code, resp.text().await.unwrap_or_default())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("127.0.0.1:{}", addr.port()), seen, state)
}

/// The Admin API writes (everything but `GET`) the server saw: method, path, body.
pub fn writes(seen: &Seen) -> Vec<(String, String, Value)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(m, ..)| m != "GET")
        .map(|(m, p, _, b)| (m.clone(), p.clone(), b.clone()))
        .collect()
}

/// A loopback TCP forwarder to `target` that can be cut (listener and every open connection)
/// and started again on the same port: an outage of the emulator for one client only.
pub struct Forwarder {
    port: u16,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    /// A forwarder on 127.0.0.1:`port` (not listening yet).
    pub fn new(port: u16, target: String) -> Self {
        Self {
            port,
            target,
            task: None,
        }
    }

    /// Listens and forwards.
    pub async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
    }

    /// Cuts the listener and all connections (the JoinSet aborts them when dropped).
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}
