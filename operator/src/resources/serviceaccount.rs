//! Builds the ServiceAccount the store-node pods run as. Pure: no I/O.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;

use super::child_meta;
use crate::api::EventStore;

/// The store nodes' ServiceAccount (named like the EventStore); it needs no API access, so its token is not mounted.
pub fn build(es: &EventStore) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(es, es.name_any()),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshot() {
        let es = super::super::fixtures::selfhosted();
        insta::assert_yaml_snapshot!(super::build(&es));
    }
}
