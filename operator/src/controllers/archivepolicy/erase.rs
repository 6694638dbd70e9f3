//! Erasing a tenant's archived events from an ArchivePolicy's destination, when the Tenant is
//! deleted with `deletionPolicy: Delete`: every object under
//! `<prefix>/tenant=<id>/store=<store uid>/` (all incarnations: manifests and Parquet files),
//! with the credentials the operator uses for the bucket's lifecycle. The archive layout is the
//! archiver's (`store_node::archive::manifest::ArchiveScope::dir`). This module deletes nothing
//! else: other tenants, other stores and the runs' reports stay.

use std::sync::Arc;
use std::time::Duration;

use allsource_objstore::objstore::{Destination, GcsStore, ObjectStore, Provider, S3Store};
use kube::Client;

use super::build::destination_url;
use super::lifecycle::{gcs_auth, s3_options, LifecycleError};
use crate::api::ArchivePolicy;

/// Longest an erasure of one destination may take before it is retried.
const ERASE_TIMEOUT: Duration = Duration::from_secs(120);

/// The key prefix under which the archive of `tenant` from the store `store_uid` lives in the
/// destination `dest`. Pure.
pub fn tenant_prefix(dest: &Destination, tenant: &str, store_uid: &str) -> String {
    dest.key(&format!("tenant={tenant}/store={store_uid}/"))
}

/// Deletes every archived object of `tenant` from the store `store_uid` in `p`'s destination;
/// returns how many objects went.
pub async fn erase_tenant(
    client: &Client,
    ns: &str,
    p: &ArchivePolicy,
    tenant: &str,
    store_uid: &str,
) -> Result<usize, LifecycleError> {
    let url = destination_url(p).unwrap_or_default();
    let dest = Destination::parse(&url).map_err(|source| LifecycleError::Bucket {
        bucket: url.clone(),
        source,
    })?;
    let wrap = |source| LifecycleError::Bucket {
        bucket: dest.bucket.clone(),
        source,
    };
    let call = async {
        let objects: Arc<dyn ObjectStore> = match dest.provider {
            Provider::S3 => {
                let opts = s3_options(client, ns, p).await?;
                Arc::new(S3Store::connect(&dest.bucket, &opts).await)
            }
            Provider::Gcs => {
                let endpoint = p
                    .spec
                    .destination
                    .gcs
                    .as_ref()
                    .and_then(|g| g.endpoint.clone());
                let auth = gcs_auth(client, ns, p).await?;
                Arc::new(GcsStore::new(&dest.bucket, endpoint.as_deref(), auth).map_err(wrap)?)
            }
        };
        let listed = objects
            .list(&tenant_prefix(&dest, tenant, store_uid))
            .await
            .map_err(wrap)?;
        for o in &listed {
            objects.delete(&o.key).await.map_err(wrap)?;
        }
        Ok(listed.len())
    };
    tokio::time::timeout(ERASE_TIMEOUT, call)
        .await
        .map_err(|_| LifecycleError::Timeout(dest.bucket.clone()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_archive_is_its_own_prefix() {
        let d = Destination::parse("s3://acme/es/orders").unwrap();
        assert_eq!(
            tenant_prefix(&d, "acme", "5b0c"),
            "es/orders/tenant=acme/store=5b0c/"
        );
        let root = Destination::parse("gs://acme").unwrap();
        assert_eq!(
            tenant_prefix(&root, "ac", "u1"),
            "tenant=ac/store=u1/",
            "the trailing slash keeps tenant ac from matching tenant acme"
        );
    }
}
