# The two images of AllSource: the operator and the store node. They package binaries built
# beforehand (hack/images.sh builds them with `cargo build --release`, or takes an existing
# directory of binaries), so no compiler runs inside the image build:
#
#   hack/images.sh                      # or: make images
#   docker build --target operator   -t <registry>/allsource-operator:<tag> <context>
#   docker build --target store-node -t <registry>/store-node:<tag> <context>
#
# where <context> holds bin/allsource-operator and bin/store-node (stripped). Both run as the
# numeric non-root user 65532 (the chart and the operator's StatefulSets set runAsUser 65532 and a
# read-only root file system), need no shell and write only to mounted volumes (/tmp, the data
# dir). BASE_IMAGE must provide glibc, libgcc_s and OpenSSL 3 (the binaries link them dynamically)
# and CA certificates, as distroless/cc does; `hack/images.sh` with BASE_IMAGE=local makes one from Debian
# packages for machines without registry access.
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BASE_IMAGE} AS base
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/allsource/allsource-operator
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="AllSource"
USER 65532:65532
WORKDIR /

FROM base AS operator
LABEL org.opencontainers.image.title="allsource-operator" \
      org.opencontainers.image.description="Kubernetes operator for AllSource event stores"
COPY bin/allsource-operator /usr/local/bin/allsource-operator
ENTRYPOINT ["/usr/local/bin/allsource-operator"]
CMD ["run"]

FROM base AS store-node
LABEL org.opencontainers.image.title="store-node" \
      org.opencontainers.image.description="AllSource event store node"
COPY bin/store-node /usr/local/bin/store-node
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/store-node"]
