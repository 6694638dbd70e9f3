//! Watches that feed a controller both a cache and its triggers, from one watch connection.
//! [`reflected_changes`] keeps a reflector [`Store`] of every object and passes on only the
//! objects whose *inputs* changed (a hash chosen by the caller: the fields the reconciler of the
//! other kind reads) plus every deletion, including deletions that happened while the watch was
//! down and are only noticed by the relist. The store is updated before the object is passed on,
//! so a reconcile triggered by an object always reads that object (or a newer one) from the store.
//! It must never decide which objects of the controlled kind to reconcile: that is the mapper's job.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Hash of `v`'s JSON form (for the inputs functions; `None` fields hash as null).
pub fn hash_json<T: Serialize + ?Sized>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(v).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// What the filter remembers between events: the inputs hash of every live object, and the last
/// object itself (so a deletion noticed by a relist can still be passed on).
struct Seen<K: Resource<DynamicType = ()>> {
    live: HashMap<ObjectRef<K>, (u64, K)>,
    /// Objects listed since the last `Init` (None outside a relist).
    relisted: Option<HashSet<ObjectRef<K>>>,
}

impl<K> Seen<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    /// The objects to pass on for one watch event. Pure apart from `self`.
    fn on_event(&mut self, ev: watcher::Event<K>, inputs: fn(&K) -> u64) -> Vec<K> {
        match ev {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                let key = ObjectRef::from_obj(&o);
                if let Some(r) = self.relisted.as_mut() {
                    r.insert(key.clone());
                }
                let h = inputs(&o);
                match self.live.insert(key, (h, o.clone())) {
                    Some((old, _)) if old == h => Vec::new(),
                    _ => vec![o],
                }
            }
            watcher::Event::Delete(o) => {
                self.live.remove(&ObjectRef::from_obj(&o));
                vec![o]
            }
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.relisted.take().unwrap_or_default();
                let gone: Vec<ObjectRef<K>> = self
                    .live
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .filter_map(|k| self.live.remove(&k).map(|(_, o)| o))
                    .collect()
            }
        }
    }
}

/// A watch of `api` reflected into a new [`Store`], and the stream of objects whose `inputs`
/// changed (first sight included) or that were deleted. The stream must be polled (hand it to
/// `Controller::watches_stream`) for the store to fill.
pub fn reflected_changes<K>(
    api: Api<K>,
    config: watcher::Config,
    inputs: fn(&K) -> u64,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let mut seen = Seen {
        live: HashMap::new(),
        relisted: None,
    };
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .flat_map(move |ev| {
            let out: Vec<Result<K, watcher::Error>> = match ev {
                Ok(ev) => seen.on_event(ev, inputs).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(out)
        });
    (reader, stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str, v: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "data": {"k": v},
        }))
        .unwrap()
    }

    fn data(c: &ConfigMap) -> u64 {
        hash_json(&c.data)
    }

    fn names(v: &[ConfigMap]) -> Vec<String> {
        v.iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn passes_changes_of_inputs_and_deletions_only() {
        let mut s = Seen {
            live: HashMap::new(),
            relisted: None,
        };
        assert_eq!(
            names(&s.on_event(watcher::Event::Apply(cm("a", "1")), data)),
            ["a"]
        );
        // Same inputs (e.g. only the resourceVersion or another field changed): nothing.
        let mut same = cm("a", "1");
        same.metadata.resource_version = Some("9".into());
        assert!(s.on_event(watcher::Event::Apply(same), data).is_empty());
        assert_eq!(
            names(&s.on_event(watcher::Event::Apply(cm("a", "2")), data)),
            ["a"]
        );
        assert_eq!(
            names(&s.on_event(watcher::Event::Delete(cm("a", "2")), data)),
            ["a"]
        );
        // After a deletion the same object is new again.
        assert_eq!(
            names(&s.on_event(watcher::Event::Apply(cm("a", "2")), data)),
            ["a"]
        );
    }

    #[test]
    fn a_relist_reports_objects_deleted_while_the_watch_was_down() {
        let mut s = Seen {
            live: HashMap::new(),
            relisted: None,
        };
        s.on_event(watcher::Event::Apply(cm("a", "1")), data);
        s.on_event(watcher::Event::Apply(cm("b", "1")), data);
        assert!(s.on_event(watcher::Event::Init, data).is_empty());
        // b unchanged: not passed on; a not listed: reported as gone at InitDone.
        assert!(s
            .on_event(watcher::Event::InitApply(cm("b", "1")), data)
            .is_empty());
        assert_eq!(
            names(&s.on_event(watcher::Event::InitApply(cm("c", "1")), data)),
            ["c"]
        );
        assert_eq!(names(&s.on_event(watcher::Event::InitDone, data)), ["a"]);
        assert_eq!(s.live.len(), 2);
    }
}
