//! The gateway's routing backend: one `EventStore` in front of the pooled store and of every
//! siloed tenant's own schema, table or Firestore database. Each call looks the tenant up in the
//! registry in force ([`crate::tenant::Registry`], so a reload takes effect on the next call): no
//! `location` means the pooled store, a `location` means the instance opened for that schema,
//! table or database, created on first use by the opener the gateway supplies and kept for later
//! calls. This module decides only where a call goes; it must never look into the data, and it
//! never answers for a tenant from another tenant's place.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{EventStore, EventSubscription, StoreResult, SubscriptionTarget};
use crate::model::{
    AppendResult, Capabilities, Direction, ExpectedVersion, Limits, NewEvent, ReadFrom,
    RecordedEvent, Snapshot, StreamId, StreamInfo, TenantId, TenantStats,
};
use crate::tenant::{Location, Registry, TenantInfo};

/// Opens the store of one siloed location (no I/O expected: clients connect lazily).
pub type Opener = Arc<dyn Fn(&Location) -> StoreResult<Arc<dyn EventStore>> + Send + Sync>;

/// Where a tenant's calls go. Pure: the registry entry decides, absent entries are pooled.
pub fn route(info: Option<&TenantInfo>) -> Option<&Location> {
    info.and_then(|i| i.location.as_ref())
}

/// Delegates every call to the pooled store or to the tenant's own (see the module docs).
pub struct RoutingStore {
    pooled: Arc<dyn EventStore>,
    registry: Arc<Registry>,
    open: Opener,
    silos: Mutex<HashMap<Location, Arc<dyn EventStore>>>,
}

impl RoutingStore {
    /// A router over `pooled` that opens siloed locations with `open`.
    pub fn new(pooled: Arc<dyn EventStore>, registry: Arc<Registry>, open: Opener) -> Self {
        Self {
            pooled,
            registry,
            open,
            silos: Mutex::new(HashMap::new()),
        }
    }

    /// Number of siloed instances opened so far.
    pub fn silo_count(&self) -> usize {
        self.silos.lock().len()
    }

    /// The store serving `tenant` now.
    pub fn store_for(&self, tenant: &TenantId) -> StoreResult<Arc<dyn EventStore>> {
        let snap = self.registry.snapshot();
        let info = snap.tenant(tenant);
        let Some(loc) = route(info.as_deref()) else {
            return Ok(self.pooled.clone());
        };
        let mut silos = self.silos.lock();
        if let Some(s) = silos.get(loc) {
            return Ok(s.clone());
        }
        let s = (self.open)(loc)?;
        tracing::info!(tenant = %tenant, location = ?loc, "serving a siloed tenant from its own place");
        silos.insert(loc.clone(), s.clone());
        Ok(s)
    }
}

#[async_trait::async_trait]
impl EventStore for RoutingStore {
    fn capabilities(&self) -> Capabilities {
        self.pooled.capabilities()
    }

    fn limits(&self) -> Limits {
        // Every location is the same backend kind, so the pooled store's limits hold for all.
        self.pooled.limits()
    }

    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> StoreResult<AppendResult> {
        self.store_for(tenant)?
            .append(tenant, stream, expected, events)
            .await
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        from: ReadFrom,
        direction: Direction,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        self.store_for(tenant)?
            .read_stream(tenant, stream, from, direction, limit)
            .await
    }

    async fn read_all(
        &self,
        tenant: &TenantId,
        from_position: u64,
        limit: usize,
    ) -> StoreResult<Vec<RecordedEvent>> {
        self.store_for(tenant)?
            .read_all(tenant, from_position, limit)
            .await
    }

    async fn subscribe(
        &self,
        tenant: &TenantId,
        target: SubscriptionTarget,
        after: Option<u64>,
    ) -> StoreResult<EventSubscription> {
        self.store_for(tenant)?
            .subscribe(tenant, target, after)
            .await
    }

    async fn save_snapshot(&self, tenant: &TenantId, snapshot: Snapshot) -> StoreResult<()> {
        self.store_for(tenant)?
            .save_snapshot(tenant, snapshot)
            .await
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> StoreResult<Option<Snapshot>> {
        self.store_for(tenant)?.load_snapshot(tenant, stream).await
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<StreamInfo>> {
        self.store_for(tenant)?
            .list_streams(tenant, after, limit)
            .await
    }

    async fn count_streams(&self, tenant: &TenantId) -> StoreResult<u64> {
        self.store_for(tenant)?.count_streams(tenant).await
    }

    async fn delete_stream(&self, tenant: &TenantId, stream: &StreamId) -> StoreResult<()> {
        self.store_for(tenant)?.delete_stream(tenant, stream).await
    }

    async fn truncate_before(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> StoreResult<u64> {
        self.store_for(tenant)?
            .truncate_before(tenant, stream, before)
            .await
    }

    async fn trim_tenant_before(
        &self,
        tenant: &TenantId,
        before: u64,
        incarnation: Option<u64>,
    ) -> StoreResult<u64> {
        self.store_for(tenant)?
            .trim_tenant_before(tenant, before, incarnation)
            .await
    }

    async fn stats(&self, tenant: &TenantId) -> StoreResult<TenantStats> {
        self.store_for(tenant)?.stats(tenant).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryStore;
    use crate::error::StoreError;
    use crate::tenant::{LocationEntry, Quotas, RegistryFile, TenantEntry, TenantState};

    fn entry(id: &str, location: Option<LocationEntry>) -> TenantEntry {
        TenantEntry {
            id: TenantId::new(id).unwrap(),
            token_sha256: vec![],
            state: TenantState::Active,
            quotas: Quotas::default(),
            node: None,
            location,
        }
    }

    fn table(t: &str) -> Option<LocationEntry> {
        Some(LocationEntry {
            table: Some(t.into()),
            ..LocationEntry::default()
        })
    }

    fn ev() -> Vec<NewEvent> {
        vec![NewEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: "x".into(),
            payload: b"{}".to_vec(),
            metadata: Default::default(),
        }]
    }

    /// A router whose siloed instances are memory stores kept in `opened` by location name.
    fn router(
        tenants: Vec<TenantEntry>,
    ) -> (
        RoutingStore,
        MemoryStore,
        Arc<Mutex<HashMap<String, MemoryStore>>>,
    ) {
        let file = RegistryFile {
            version: 1,
            tenants,
            nodes: Default::default(),
        };
        let registry = Arc::new(Registry::fixed(&file).unwrap());
        let pooled = MemoryStore::default();
        let opened: Arc<Mutex<HashMap<String, MemoryStore>>> = Arc::default();
        let seen = opened.clone();
        let open: Opener = Arc::new(move |loc: &Location| match loc {
            Location::Table(t) => {
                let s = MemoryStore::default();
                seen.lock().insert(t.clone(), s.clone());
                Ok(Arc::new(s) as Arc<dyn EventStore>)
            }
            Location::Schema(_) | Location::Database(_) => {
                Err(StoreError::Internal("only tables here".into()))
            }
        });
        (
            RoutingStore::new(Arc::new(pooled.clone()), registry, open),
            pooled,
            opened,
        )
    }

    #[test]
    fn routing_choice_follows_the_entry() {
        let file = RegistryFile {
            version: 1,
            tenants: vec![
                entry("a", None),
                entry("b", table("tb")),
                entry(
                    "c",
                    Some(LocationEntry {
                        database: Some("orders-c-1a2b3c4d".into()),
                        ..LocationEntry::default()
                    }),
                ),
            ],
            nodes: Default::default(),
        };
        let snap = crate::tenant::RegistrySnapshot::compile(&file).unwrap();
        let a = snap.tenant(&TenantId::new("a").unwrap());
        let b = snap.tenant(&TenantId::new("b").unwrap());
        let c = snap.tenant(&TenantId::new("c").unwrap());
        assert_eq!(route(a.as_deref()), None);
        assert_eq!(route(b.as_deref()), Some(&Location::Table("tb".into())));
        assert_eq!(
            route(c.as_deref()),
            Some(&Location::Database("orders-c-1a2b3c4d".into()))
        );
        assert_eq!(route(None), None);
    }

    #[tokio::test]
    async fn siloed_calls_go_to_their_own_store_and_instances_are_kept() {
        let (r, pooled, opened) = router(vec![
            entry("a", None),
            entry("b", table("tb")),
            entry("c", table("tc")),
        ]);
        let (a, b, c) = (
            TenantId::new("a").unwrap(),
            TenantId::new("b").unwrap(),
            TenantId::new("c").unwrap(),
        );
        let s = StreamId::new("s").unwrap();
        for t in [&a, &b, &b, &c] {
            r.append(t, &s, ExpectedVersion::Any, ev()).await.unwrap();
        }
        assert_eq!(r.silo_count(), 2, "one instance per location, reused");
        assert_eq!(pooled.stats(&a).await.unwrap().events, 1);
        assert_eq!(pooled.stats(&b).await.unwrap().events, 0);
        let tb = opened.lock().get("tb").cloned().unwrap();
        assert_eq!(tb.stats(&b).await.unwrap().events, 2);
        assert_eq!(tb.stats(&c).await.unwrap().events, 0);
        assert_eq!(r.stats(&b).await.unwrap().events, 2);
        assert_eq!(r.read_all(&c, 0, 10).await.unwrap().len(), 1);
        // A tenant the registry does not list (cannot authenticate anyway) is pooled.
        let z = TenantId::new("z").unwrap();
        assert_eq!(r.stats(&z).await.unwrap().events, 0);
    }

    #[tokio::test]
    async fn an_unopenable_location_is_an_error_not_the_pooled_store() {
        let schema = Some(LocationEntry {
            schema: Some("s".into()),
            ..LocationEntry::default()
        });
        let (r, pooled, _) = router(vec![entry("a", schema)]);
        let a = TenantId::new("a").unwrap();
        let s = StreamId::new("s").unwrap();
        assert!(r.append(&a, &s, ExpectedVersion::Any, ev()).await.is_err());
        assert_eq!(pooled.stats(&a).await.unwrap().events, 0);
    }
}
