//! A siloed Firestore tenant's own database: [`SiloProvisioner`] creates it in the store's project
//! and location (`projects.databases.create`, adopted when it exists: 409 or a `GET` that finds
//! it), then prepares it exactly like the store's database with the store's own
//! [`FirestoreProvisioner`] (marker document, the tenant as its only member, composite index,
//! exemptions, TTL policies: same layout, so the gateway only opens another database id). Under
//! `deletionPolicy: Delete` it removes the tenant's documents, its membership and the marker, then
//! deletes the database; `Retain` touches nothing.
//!
//! **Emulator rule** (the store's, see the parent module): the emulator answers 404 to every
//! database call of the Admin API and creates a database on its first write, so on an emulator
//! endpoint the database calls are skipped and the marker write creates it; indexes and TTL are
//! "not verified" notes. It must never log a token.

use async_trait::async_trait;

use super::{admin, silo_plan, FirestoreProvisioner, Probe, Sent};
use crate::api::DeletionPolicy;
use crate::provision::{Deleted, EnsureAction, Ensured, Observed, ProvisionError, Provisioner};

/// Provisioner of one siloed tenant's database. Holds a bearer token: no `Debug`.
pub struct SiloProvisioner {
    /// The provisioner of the tenant's database (the store's plan on the silo's database id).
    inner: FirestoreProvisioner,
    /// The store's database, whose location a new database takes.
    store_database: String,
    tenant_id: String,
    /// `<namespace>/<name>` of the Tenant, written into its member document.
    tenant: String,
}

impl SiloProvisioner {
    /// The provisioner of `tenant_id`'s database next to `store`'s (no call is made).
    pub fn new(
        store: &FirestoreProvisioner,
        tenant_id: &str,
        tenant: &str,
    ) -> Result<Self, ProvisionError> {
        let plan = silo_plan(store.plan(), tenant_id);
        Ok(Self {
            inner: store.with_plan(plan)?,
            store_database: store.plan().database.clone(),
            tenant_id: tenant_id.to_string(),
            tenant: tenant.to_string(),
        })
    }

    /// The tenant's database id.
    pub fn database(&self) -> &str {
        &self.inner.plan().database
    }

    fn path(&self, database: &str) -> String {
        admin::database_path(&self.inner.plan().project, database)
    }

    /// Creates the database where the store's database is. Ok also when it exists already.
    async fn create(&self) -> Result<(), ProvisionError> {
        let store_path = self.path(&self.store_database);
        let location = match self.inner.admin_probe(&store_path).await? {
            Probe::Found(db) => admin::location_of(&db).map(str::to_string),
            Probe::NotServed | Probe::Missing(_) => None,
        }
        .ok_or_else(|| {
            ProvisionError::InvalidSpec(format!(
                "the location of the store's database {store_path} is unknown, so the tenant's \
                 database {} cannot be created next to it",
                self.database()
            ))
        })?;
        let plan = self.inner.plan();
        let request = admin::create_database(&plan.project, &plan.database, &location);
        match self.inner.admin_call(&request).await? {
            Sent::Applied | Sent::NotServed => {
                tracing::info!(
                    request = %format!("{} {}", admin::verb(&request), request.path),
                    "firestore admin request sent"
                );
                Ok(())
            }
            Sent::Missing(m) => Err(ProvisionError::InvalidSpec(m)),
        }
    }

    /// Deletes the database; Ok(true) when it was deleted now.
    async fn drop_database(&self) -> Result<bool, ProvisionError> {
        let plan = self.inner.plan();
        let request = admin::delete_database(&plan.project, &plan.database);
        Ok(self.inner.admin_call(&request).await? == Sent::Applied)
    }
}

#[async_trait]
impl Provisioner for SiloProvisioner {
    async fn ensure(&self) -> Result<Ensured, ProvisionError> {
        match self.inner.admin_probe(&self.path(self.database())).await? {
            // Emulator: its first write (the marker) creates the database.
            Probe::NotServed | Probe::Found(_) => {}
            Probe::Missing(_) => {
                self.create().await?;
                // Creating a database is a long-running operation: usable on a later round.
                return Ok(Ensured {
                    action: EnsureAction::Pending,
                    resources: self.inner.resources(),
                });
            }
        }
        let marker = self.inner.ensure().await?;
        self.inner
            .register_tenant(&self.tenant_id, &self.tenant)
            .await?;
        Ok(marker)
    }

    async fn observe(&self) -> Result<Observed, ProvisionError> {
        self.inner.observe().await
    }

    async fn delete(&self, policy: DeletionPolicy) -> Result<Deleted, ProvisionError> {
        if policy == DeletionPolicy::Retain {
            return Ok(Deleted::Retained);
        }
        Ok(self.erase().await?.deleted())
    }
}

/// What [`SiloProvisioner::erase`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    /// Documents of the tenant deleted (its subtree and its tenant document).
    pub documents: u64,
    /// The marker or the membership was there and is gone.
    pub marker: bool,
    /// The database itself was deleted through the Admin API.
    pub database: bool,
}

impl Erased {
    /// The provisioner's verdict: deleted when anything was there.
    pub fn deleted(&self) -> Deleted {
        if self.documents > 0 || self.marker || self.database {
            Deleted::Deleted
        } else {
            Deleted::AlreadyGone
        }
    }
}

impl SiloProvisioner {
    /// Erases the tenant's database: its documents, membership and marker, then the database
    /// itself where the Admin API is served (not on an emulator endpoint). Idempotent.
    pub async fn erase(&self) -> Result<Erased, ProvisionError> {
        let served = match self.inner.admin_probe(&self.path(self.database())).await? {
            Probe::Missing(_) => return Ok(Erased::default()),
            Probe::Found(_) => true,
            Probe::NotServed => false,
        };
        // Documents first: on an emulator they are all there is to erase.
        let documents = self.inner.delete_tenant_documents(&self.tenant_id).await?;
        let marker = self.inner.delete(DeletionPolicy::Delete).await? == Deleted::Deleted;
        let database = served && self.drop_database().await?;
        tracing::info!(
            database = %self.database(),
            documents,
            dropped = database,
            "siloed firestore tenant erased"
        );
        Ok(Erased {
            documents,
            marker,
            database,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::firestore::{plan, silo_database_name, Credentials};

    #[test]
    fn erased_is_deleted_when_anything_went() {
        assert_eq!(Erased::default().deleted(), Deleted::AlreadyGone);
        for e in [
            Erased {
                documents: 3,
                ..Erased::default()
            },
            Erased {
                marker: true,
                ..Erased::default()
            },
            Erased {
                database: true,
                ..Erased::default()
            },
        ] {
            assert_eq!(e.deleted(), Deleted::Deleted, "{e:?}");
        }
    }

    #[tokio::test]
    async fn the_tenant_database_sits_next_to_the_store_database() {
        let spec = crate::api::eventstore::FirestoreSpec {
            project_id: "proj".into(),
            database_id: "events-eu".into(),
            endpoint: Some("https://firestore.example".into()),
            emulator: false,
            credentials_secret_ref: None,
            ttl_field: Some("expires_at".into()),
        };
        let store_plan = plan("shop", "orders", &spec).unwrap();
        // A static token: no call is made to build either provisioner.
        let store =
            FirestoreProvisioner::connect(store_plan.clone(), &Credentials::Static("t".into()))
                .await
                .unwrap();
        let silo = SiloProvisioner::new(&store, "acme", "shop/acme").unwrap();
        assert_eq!(
            silo.database(),
            silo_database_name("events-eu", "shop", "orders", "acme")
        );
        assert_eq!(silo.store_database, "events-eu");
        let p = silo.inner.plan();
        assert_eq!(
            (p.project.as_str(), p.endpoint.as_str(), p.ttl, &p.owner),
            ("proj", "https://firestore.example", true, &store_plan.owner)
        );
    }
}
