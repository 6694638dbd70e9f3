//! The controller runtime shared by every kind: the [`Context`] handed to reconcilers (client,
//! metrics, event recorder, watched namespaces, backoff bookkeeping), server-side apply that skips
//! no-op writes, the error classes, and [`run`], which starts one kube-runtime `Controller` per kind
//! and namespace. Adding a controller is one module (exposing `pub async fn run(Arc<Context>)`)
//! plus one line in [`run`]. It must never hold kind-specific logic.

pub mod apply;
pub mod archivepolicy;
pub mod eventstore;
pub mod images;
pub mod nodetls;
pub mod tenant;
pub mod trigger;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use parking_lot::Mutex;

use crate::telemetry::Metrics;

/// Which namespaces the operator watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    #[default]
    All,
    /// Only these namespaces.
    Namespaces(Vec<String>),
}

impl Scope {
    /// Parses `--namespaces a,b` (empty means all).
    pub fn parse(list: &str) -> Self {
        let names: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if names.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(names)
        }
    }

    /// One Api per watched namespace (or one cluster-wide Api).
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match self {
            Scope::All => vec![Api::all(client.clone())],
            Scope::Namespaces(ns) => ns
                .iter()
                .map(|n| Api::namespaced(client.clone(), n))
                .collect(),
        }
    }
}

/// Everything a reconciler needs besides the object.
pub struct Context {
    /// API client (the operator's ServiceAccount in a cluster).
    pub client: Client,
    /// Metrics shared with `/metrics`.
    pub metrics: Metrics,
    /// Watched namespaces.
    pub scope: Scope,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// Base URLs of store nodes the operator cannot reach by their in-cluster name (an operator
    /// run outside the cluster), mapped to addresses it can reach; empty in a cluster.
    node_urls: parking_lot::RwLock<HashMap<String, String>>,
    /// Interval between drift checks of a healthy cloud store or siloed tenant.
    drift_interval: Duration,
    /// Image repositories the pods the operator makes (store nodes, gateways, archivers) may
    /// run ([`images::allowed`]); any image when empty.
    allowed_images: Vec<String>,
}

impl Context {
    /// Builds the context.
    pub fn new(client: Client, metrics: Metrics, scope: Scope, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: crate::api::FIELD_MANAGER.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            scope,
            failures: Mutex::new(HashMap::new()),
            node_urls: parking_lot::RwLock::new(HashMap::new()),
            drift_interval: eventstore::cloud::DEFAULT_DRIFT_INTERVAL,
            allowed_images: Vec::new(),
        }
    }

    /// Restricts the images of the pods the operator makes to `repositories` (the
    /// `--allowed-images` flag; the chart's `storeNodeImages`). Empty: any image.
    pub fn with_allowed_images(mut self, repositories: Vec<String>) -> Self {
        self.allowed_images = repositories;
        self
    }

    /// Err with the reason's message when `image` (of `field`) is not one the operator may run.
    pub fn check_image(&self, field: &str, image: &str) -> Result<(), ReconcileError> {
        if images::allowed(&self.allowed_images, image) {
            return Ok(());
        }
        Err(ReconcileError::Refused {
            reason: "ImageNotAllowed",
            message: format!(
                "{field} {image:?} is not from an allowed repository ({}); the operator's \
                 --allowed-images (Helm value storeNodeImages) lists what store nodes, gateways \
                 and archivers may run",
                self.allowed_images.join(", ")
            ),
        })
    }

    /// Sets the interval between drift checks (the `--drift-interval-seconds` flag; tests
    /// shorten it). At least one second.
    pub fn with_drift_interval(mut self, d: Duration) -> Self {
        self.drift_interval = d.max(Duration::from_secs(1));
        self
    }

    /// The interval between drift checks of a healthy cloud store or siloed tenant.
    pub fn drift_interval(&self) -> Duration {
        self.drift_interval
    }

    /// Makes the operator reach the store node published as `published` (a base URL of the
    /// registry's `nodes`) at `reachable` instead.
    pub fn set_node_url(&self, published: &str, reachable: &str) {
        self.node_urls
            .write()
            .insert(published.to_string(), reachable.to_string());
    }

    /// The base URL to call a store node published as `published` at.
    pub fn node_url(&self, published: &str) -> String {
        self.node_urls
            .read()
            .get(published)
            .cloned()
            .unwrap_or_else(|| published.to_string())
    }

    /// Publishes a Kubernetes Event about `obj` (best effort: a failure is logged, not returned).
    /// Repeats of one note fold into one Event series; a different note is a new Event (see
    /// [`event_action`]).
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            action: event_action(action, &note),
            note: Some(note),
            secondary: None,
        };
        self.metrics.wrote("Event", "POST");
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }

    /// Forgets the failure count of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// Counts a failure of `key` and returns the backoff before the next attempt:
    /// 1s, 2s, 4s ... capped at 5 minutes.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock();
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_for(*n)
    }
}

/// The `action` of an Event with `note`: `action` and a digest of the note. kube's recorder
/// folds every Event of one (type, reason, action, object) into a series that keeps its first
/// note, so without the digest a second, different drift of the same object within the
/// recorder's cache time would show only the first one's note.
pub fn event_action(action: &str, note: &str) -> String {
    // FNV-1a: stable across runs and builds (the std hasher is not).
    let digest = note.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{action}-{:08x}", digest >> 32)
}

/// Exponential backoff for the `n`th consecutive failure (n >= 1).
pub fn backoff_for(n: u32) -> Duration {
    let secs = 1u64 << n.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

/// How long a reconcile waits for a cache's first list before it is retried later.
pub const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (at most [`CACHE_WAIT`]) until the cache `store` of `kind` holds its first list.
pub async fn cache_ready<K>(
    store: &kube::runtime::reflector::Store<K>,
    kind: &'static str,
) -> Result<(), ReconcileError>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::time::timeout(CACHE_WAIT, store.wait_until_ready())
        .await
        .map_err(|_| ReconcileError::CacheNotReady(kind))?
        .map_err(|_| ReconcileError::CacheClosed(kind))
}

/// Errors a reconcile can end with.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed; retried with backoff.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The object has no namespace (a namespaced kind always has one).
    #[error("object has no namespace")]
    NoNamespace,
    /// A cloud backend is unreachable or throttling; retried with backoff (the status carries
    /// the service's error).
    #[error("backend: {0}")]
    Backend(#[from] crate::provision::ProvisionError),
    /// The watch feeding a cache of this kind stopped (the operator is shutting down).
    #[error("the {0} cache is closed")]
    CacheClosed(&'static str),
    /// A cache of this kind has not finished its first list within [`CACHE_WAIT`]; the
    /// reconcile gives its slot back and is retried, instead of waiting without a bound.
    #[error("the {0} cache is not filled yet")]
    CacheNotReady(&'static str),
    /// An object the operator would write exists and is not its own; reported in the owner's
    /// status (`ResourceConflict`), never taken over.
    #[error("{0}")]
    NotOwned(String),
    /// The apiserver refused an object built from the spec as invalid; reported in the owner's
    /// status (`InvalidSpec`).
    #[error("{0}")]
    Invalid(String),
    /// The spec asks for something that cannot be done (for example a volume shrink); reported in
    /// the owner's status with `reason`, re-checked when the spec changes.
    #[error("{message}")]
    Refused {
        /// Condition reason.
        reason: &'static str,
        /// What was refused and what to do.
        message: String,
    },
}

impl From<apply::ApplyError> for ReconcileError {
    fn from(e: apply::ApplyError) -> Self {
        match e {
            apply::ApplyError::Kube(e) => ReconcileError::Kube(e),
            e @ apply::ApplyError::NotOwned { .. } => ReconcileError::NotOwned(e.to_string()),
            e @ apply::ApplyError::Invalid { .. } => ReconcileError::Invalid(e.to_string()),
        }
    }
}

impl ReconcileError {
    /// Short class used as a metric label.
    pub fn class(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "Kube",
            ReconcileError::Finalizer(_) => "Finalizer",
            ReconcileError::NoNamespace => "NoNamespace",
            ReconcileError::Backend(_) => "Backend",
            ReconcileError::CacheClosed(_) => "CacheClosed",
            ReconcileError::CacheNotReady(_) => "CacheNotReady",
            ReconcileError::NotOwned(_) => "NotOwned",
            ReconcileError::Invalid(_) => "Invalid",
            ReconcileError::Refused { .. } => "Refused",
        }
    }
}

/// How often an object parked on a name conflict looks again (the foreign object's deletion
/// wakes nothing: it is not ours to watch).
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// The requeue after a failed reconcile (permanent spec errors never get here: reconcilers park
/// them in a Degraded condition and wait for a change).
pub fn error_action(ctx: &Context, key: &str, err: &ReconcileError) -> Action {
    let wait = ctx.backoff(key);
    tracing::warn!(error = %err, object = key, backoff_s = wait.as_secs(), "reconcile failed");
    Action::requeue(wait)
}

/// Starts every controller and returns when the first one stops.
pub async fn run(ctx: Arc<Context>) {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(eventstore::run(ctx.clone()));
    set.spawn(archivepolicy::run(ctx.clone()));
    set.spawn(tenant::run(ctx.clone()));
    // One line per further controller.
    if set.join_next().await.is_some() {
        tracing::error!("a controller stopped; shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_with_other_notes_get_other_actions() {
        let a = event_action("Provision", "global secondary index by-position missing");
        let b = event_action("Provision", "global secondary index by-tenant missing");
        assert_ne!(a, b);
        assert_eq!(
            a,
            event_action("Provision", "global secondary index by-position missing")
        );
        assert!(
            a.starts_with("Provision-") && a.len() == "Provision-".len() + 8,
            "{a}"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(5), Duration::from_secs(16));
        assert_eq!(backoff_for(30), Duration::from_secs(300));
    }

    #[test]
    fn scope_parsing() {
        assert_eq!(Scope::parse(""), Scope::All);
        assert_eq!(
            Scope::parse("a, b"),
            Scope::Namespaces(vec!["a".into(), "b".into()])
        );
    }
}
