# Versions of every tool the test environment builds or fetches. Bumping one is a one-line change;
# the build cache is keyed by these, so a bump rebuilds only that tool.
# shellcheck shell=bash
K8S_VERSION=1.34.4          # k8s.io/kubernetes; staging modules are tagged v0.<minor>.<patch>
ETCD_VERSION=3.6.16         # go.etcd.io/etcd/server/v3
KWOK_VERSION=0.8.0          # sigs.k8s.io/kwok
HELM_VERSION=3.19.2         # helm.sh/helm/v3
FAKE_GCS_VERSION=1.56.1     # github.com/fsouza/fake-gcs-server
MOTO_VERSION=5.1.18         # PyPI moto[server]
DYNAMODB_LOCAL_VERSION=3.1.0  # software.amazon.dynamodb:DynamoDBLocal (also in dynamodb/pom.xml)
COREDNS_VERSION=1.14.7      # github.com/coredns/coredns: the real node's cluster DNS
