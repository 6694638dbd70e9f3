//! How durable WAL records reach a tenant's state without one tenant stalling the others.
//!
//! The WAL writer thread applies each durable group record by record, and a record needs its
//! tenant's write lock. If it waited for that lock, whoever holds a tenant's lock (a long read,
//! a checkpoint copying it) would stall the apply, and so the acknowledgement, of every tenant
//! whose records come after it. So the writer waits at most [`APPLY_WAIT`]: when the lock stays
//! busy, the record goes to the tenant's queue of deferred records and a thread of the tenant's
//! own applies the queue, in LSN order, once it gets the lock. Records of a tenant are applied in
//! LSN order in every case: while its queue is not empty (or its applier runs), later records
//! queue behind.
//!
//! A write is acknowledged only once its record is applied, never when it is merely durable:
//! writers wait with [`Tenant::wait_applied`] after the WAL's fsync. The checkpoint applies a
//! tenant's queue ([`Tenant::apply_deferred`]) before it copies the tenant, so a manifest
//! written for LSN `n` holds every record up to `n`.
//!
//! This module must never reorder a tenant's records, apply one twice (the state ignores an
//! LSN it has already applied) or publish `applied` before the state includes the record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, Notify};

use super::tenant::{CommittedBatch, TenantState};
use crate::wal::WalRecord;

/// How long the WAL writer waits for a busy tenant lock before it defers the record to the
/// tenant's own applier.
pub const APPLY_WAIT: Duration = Duration::from_micros(500);

/// One tenant: its state, its broadcast of committed batches, and its deferred records.
pub(crate) struct Tenant {
    pub(crate) state: RwLock<TenantState>,
    pub(crate) tx: broadcast::Sender<CommittedBatch>,
    deferred: Mutex<Deferred>,
    /// LSN of the last record applied to `state`, stored after the state holds it.
    applied: AtomicU64,
    /// Woken when deferred records were applied.
    applied_notify: Notify,
}

#[derive(Default)]
struct Deferred {
    records: VecDeque<(u64, WalRecord)>,
    /// The tenant's applier thread runs (it clears this, under this lock, when it finds the
    /// queue empty).
    applier: bool,
}

impl Tenant {
    pub(crate) fn new(state: TenantState, buffer: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Arc::new(Self {
            applied: AtomicU64::new(state.applied_lsn),
            state: RwLock::new(state),
            tx,
            deferred: Mutex::new(Deferred::default()),
            applied_notify: Notify::new(),
        })
    }

    /// Applies a record during recovery (nothing else runs yet).
    pub(crate) fn replay(&self, lsn: u64, rec: WalRecord) {
        let mut st = self.state.write();
        st.apply(lsn, rec, true);
        self.applied.store(st.applied_lsn, Ordering::Release);
    }

    /// Called by the WAL writer thread for each durable record of this tenant, in LSN order:
    /// applies it now, or defers it when the tenant's lock stays busy (see the module docs).
    pub(crate) fn commit(self: &Arc<Self>, lsn: u64, rec: WalRecord) {
        // Only this thread adds to the queue, so an empty queue without an applier stays so
        // until this thread adds to it.
        let rec = {
            let mut d = self.deferred.lock();
            if d.applier || !d.records.is_empty() {
                d.records.push_back((lsn, rec));
                if !d.applier {
                    d.applier = true;
                    drop(d);
                    self.start_applier();
                }
                return;
            }
            rec
        };
        match self.state.try_write_for(APPLY_WAIT) {
            Some(mut st) => self.apply_locked(&mut st, lsn, rec),
            None => {
                let mut d = self.deferred.lock();
                d.records.push_back((lsn, rec));
                d.applier = true;
                drop(d);
                self.start_applier();
            }
        }
    }

    fn apply_locked(&self, st: &mut TenantState, lsn: u64, rec: WalRecord) {
        if let Some(batch) = st.apply(lsn, rec, false) {
            // Sent under the tenant lock: subscribers hand off on this lock.
            if self.tx.receiver_count() > 0 {
                let _ = self.tx.send(batch);
            }
        }
        self.applied.store(st.applied_lsn, Ordering::Release);
    }

    fn start_applier(self: &Arc<Self>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("wal-apply".into())
            .spawn(move || me.run_applier());
        if let Err(e) = spawned {
            // No thread to spare: apply here, waiting for the lock like a writer without
            // deferral would.
            tracing::warn!(error = %e, "could not start a tenant applier thread; applying inline");
            self.run_applier();
        }
    }

    /// Applies the queue until it is empty, then ends (clearing `applier`).
    fn run_applier(&self) {
        let mut st = self.state.write();
        loop {
            let next = {
                let mut d = self.deferred.lock();
                match d.records.pop_front() {
                    Some(r) => r,
                    None => {
                        d.applier = false;
                        break;
                    }
                }
            };
            self.apply_locked(&mut st, next.0, next.1);
        }
        drop(st);
        self.applied_notify.notify_waiters();
    }

    /// Applies every deferred record now (blocking for the tenant's lock), so that the state
    /// holds every record the WAL acknowledged so far. The applier thread, if one runs, then
    /// finds an empty queue and ends.
    pub(crate) fn apply_deferred(&self) {
        if self.deferred.lock().records.is_empty() {
            return;
        }
        let mut st = self.state.write();
        loop {
            let Some((lsn, rec)) = self.deferred.lock().records.pop_front() else {
                break;
            };
            self.apply_locked(&mut st, lsn, rec);
        }
        drop(st);
        self.applied_notify.notify_waiters();
    }

    /// Waits until the record at `lsn` (already durable) is applied to the state.
    pub(crate) async fn wait_applied(&self, lsn: u64) {
        loop {
            let notified = self.applied_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.applied.load(Ordering::Acquire) >= lsn {
                return;
            }
            notified.await;
        }
    }
}
