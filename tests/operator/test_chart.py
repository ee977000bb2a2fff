"""The Helm chart with the real helm and kubectl: it lints, renders objects that
Kubernetes' own schemas accept, installs into the test control plane, and its
ServiceAccount is enough for the operator to run a job, and no more than that.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from operator_proc import REPO, apply, pods, running_operator, wait_established, wait_phase

from cluster import Cluster

CHART = REPO / "helm" / "rlhfjob"
K8S_VERSION = "1.35.0"
# Prometheus Operator kinds: not in Kubernetes' schemas, so checked by hand (the
# PrometheusRule's expressions by promtool and the real Prometheus: tests/e2e).
MONITOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
ALL_ON = [
    "--set",
    "monitoring.serviceMonitor.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true",
    "--set",
    "monitoring.podMonitor.enabled=true",
    "--set",
    "grafana.dashboard.enabled=true",
    "--set",
    "watchNamespaces={team-a,team-b}",
    "--set",
    "resources.requests.cpu=100m",
    "--set",
    "operator.verbose=true",
]


def render(cluster: Cluster, *values: str) -> list[dict[str, Any]]:
    out = cluster.helm_run(
        "template", "rel", str(CHART), "-n", "rlhfjob-system", "--include-crds", *values
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_crd_is_the_generated_one() -> None:
    """`make chart-crds` (run by `make crds`) keeps the chart's copy in step."""
    generated = REPO / "crds"
    copied = CHART / "crds"
    names = sorted(p.name for p in generated.glob("*.yaml"))
    assert names == sorted(p.name for p in copied.glob("*.yaml")), "run make chart-crds"
    for name in names:
        assert (copied / name).read_text() == (generated / name).read_text(), (
            f"helm/rlhfjob/crds/{name} differs from crds/{name}: run make chart-crds"
        )


@pytest.mark.parametrize("values", [[], ALL_ON], ids=["defaults", "all-on"])
def test_chart_lints(control_plane: Cluster, values: list[str]) -> None:
    out = control_plane.helm_run("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in out.stdout, out.stdout


def test_values_schema_is_closed(control_plane: Cluster) -> None:
    for key in ("replicas=2", "operator.port=1", "monitoring.serviceMonitor.scrape=1"):
        proc = control_plane.helm_run("template", "rel", str(CHART), "--set", key, check=False)
        assert proc.returncode != 0, key
        assert "additional properties" in proc.stderr, proc.stderr


def test_two_replicas_without_leader_election_are_refused_by_name(control_plane: Cluster) -> None:
    values = ("operator.replicas=2", "operator.leaderElection.enabled=false")
    proc = control_plane.helm_run(
        "template", "rel", str(CHART), *(a for v in values for a in ("--set", v)), check=False
    )
    assert proc.returncode != 0
    assert "operator.replicas above 1 needs operator.leaderElection.enabled" in proc.stderr


def _check_monitor(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "rlhfjob-system"
    spec = doc["spec"]
    if doc["kind"] == "PrometheusRule":
        rules = [rule for group in spec["groups"] for rule in group["rules"]]
        assert rules and all(r["alert"] and r["expr"] and r["annotations"] for r in rules)
        return
    assert set(spec) == {
        "selector",
        "namespaceSelector",
        "endpoints" if doc["kind"] == "ServiceMonitor" else "podMetricsEndpoints",
    }
    assert spec["selector"]["matchLabels"]
    endpoints = spec.get("endpoints") or spec["podMetricsEndpoints"]
    for ep in endpoints:
        assert ep["port"] == "metrics" and ep["path"] == "/metrics"
        assert ep["interval"].endswith("s")


@pytest.mark.parametrize("values", [[], ALL_ON], ids=["defaults", "all-on"])
def test_rendered_objects_match_kubernetes_schemas(
    control_plane: Cluster, values: list[str]
) -> None:
    docs = render(control_plane, *values)
    for doc in docs:
        if doc["kind"] in MONITOR_KINDS:
            _check_monitor(doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {e.message}") from e

    kinds = {d["kind"] for d in docs}
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deploy["spec"]["replicas"] == 1
    assert container["command"] == ["python", "-m", "rlhfjob_operator"]
    assert "--standalone" in container["args"]
    # Leader election on by default: a second replica, or a rolling update's new pod,
    # stands by on the Lease instead of reconciling beside the first.
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    assert {"--leader-elect", "--leader-elect-resource-name=rel-rlhfjob"} <= set(container["args"])
    (lease_role,) = by_kind(docs, "Role")
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["rel-rlhfjob"],
            "verbs": ["get", "update"],
        },
    ]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    (crd,) = by_kind(docs, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "rlhfjobs.rlhf.dev"

    if not values:
        # Optional features are off; the operator gets no default resources; cluster-wide.
        assert not kinds & (MONITOR_KINDS | {"ConfigMap"})
        # The one RoleBinding: the Lease's, in the release's namespace.
        assert [
            (b["metadata"]["name"], b["metadata"]["namespace"])
            for b in by_kind(docs, "RoleBinding")
        ] == [("rel-rlhfjob-leader-election", lease_role["metadata"]["namespace"])]
        assert "resources" not in container
        assert "--all-namespaces" in container["args"]
        assert {b["metadata"]["name"] for b in by_kind(docs, "ClusterRoleBinding")} == {
            "rel-rlhfjob",
            "rel-rlhfjob-cluster-read",
        }
    else:
        assert kinds >= MONITOR_KINDS | {"ConfigMap", "RoleBinding"}
        assert "--namespace=team-a" in container["args"]
        assert "--all-namespaces" not in container["args"]
        # Namespaced: RoleBindings in the watched namespaces only.
        assert {
            b["metadata"]["namespace"]
            for b in by_kind(docs, "RoleBinding")
            if b["metadata"]["name"] == "rel-rlhfjob"
        } == {"team-a", "team-b"}
        assert [b["metadata"]["name"] for b in by_kind(docs, "ClusterRoleBinding")] == [
            "rel-rlhfjob-cluster-read"
        ]
        (cm,) = by_kind(docs, "ConfigMap")
        shipped = (CHART / "dashboards" / "rlhfjob.json").read_text()
        assert json.loads(cm["data"]["rlhfjob.json"]) == json.loads(shipped)
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    # PodGroups (runPolicy.schedulingPolicy.podGroup): create only. Checked here, not
    # with can-i: kubectl cannot name a resource whose CRD is not installed.
    (main,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("rlhfjob")]
    groups = [r for r in main["rules"] if "podgroups" in r["resources"]]
    assert groups == [
        {
            "apiGroups": ["scheduling.volcano.sh", "scheduling.x-k8s.io"],
            "resources": ["podgroups"],
            "verbs": ["create"],
        }
    ]
    for role in by_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            # Secrets: create the job's rendezvous token, and nothing else.
            if "secrets" in rule["resources"]:
                assert rule["resources"] == ["secrets"] and rule["verbs"] == ["create"], rule
            assert "*" not in rule["resources"]
            assert "*" not in rule["verbs"]


# -- installed ---------------------------------------------------------------


def _sa_kubeconfig(cluster: Cluster, namespace: str, name: str) -> Path:
    if cluster.control_plane is None:
        pytest.skip("mints ServiceAccount tokens through the test control plane")
    return cluster.control_plane.kubeconfig_for_service_account(namespace, name, seconds=1800)


def _can_i(cluster: Cluster, kubeconfig: Path, *args: str) -> bool:
    proc = cluster.kubectl_run("--kubeconfig", str(kubeconfig), "auth", "can-i", *args, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), f"can-i {args}: {proc.stdout} {proc.stderr}"
    return answer == "yes"


@pytest.fixture
def release(control_plane: Cluster) -> Iterator[Any]:
    """Installs the chart (releases named by the test), uninstalls it afterwards."""
    installed: list[tuple[str, str]] = []
    made: list[str] = []

    def install(name: str, *values: str) -> str:
        ns = control_plane.create_namespace("rlhfjob-sys-")
        made.append(ns)
        control_plane.helm_run("install", name, str(CHART), "-n", ns, *values, timeout=120)
        installed.append((name, ns))
        wait_established(control_plane)
        return ns

    try:
        yield install
    finally:
        for name, ns in installed:
            control_plane.helm_run("uninstall", name, "-n", ns, "--wait", "--timeout=60s")
            left = control_plane.kubectl_run(
                "get", "clusterroles,clusterrolebindings", "-l",
                f"app.kubernetes.io/instance={name}", "-o", "name",
            ).stdout  # fmt: skip
            assert not left.strip(), f"uninstall left {left}"
        for ns in made:
            control_plane.delete_namespace(ns)


def test_chart_service_account_runs_a_job_and_no_more(
    control_plane: Cluster, namespace: str, release: Any
) -> None:
    other = control_plane.create_namespace("t-other-")
    try:
        sys_ns = release("rbac", "--set", f"watchNamespaces={{{namespace}}}")
        kubeconfig = _sa_kubeconfig(control_plane, sys_ns, "rbac-rlhfjob")

        def can(*args: str) -> bool:
            return _can_i(control_plane, kubeconfig, *args)

        # What it needs, in the watched namespace only.
        for verb, what in (
            ("watch", "rlhfjobs.rlhf.dev"),
            ("patch", "rlhfjobs.rlhf.dev"),
            ("create", "pods"),
            ("delete", "pods"),
            ("patch", "pods"),
            ("create", "networkpolicies.networking.k8s.io"),
            ("create", "secrets"),
        ):
            assert can(verb, what, "-n", namespace), f"{verb} {what}"
            assert not can(verb, what, "-n", other), f"{verb} {what} outside its namespace"
        assert can("patch", "rlhfjobs.rlhf.dev", "--subresource=status", "-n", namespace)
        assert not can("update", "rlhfjobs.rlhf.dev", "--subresource=status", "-n", namespace)
        # And not more.
        for args in (
            ("get", "secrets"),
            ("list", "secrets"),
            ("watch", "secrets"),
            ("update", "secrets"),
            ("patch", "secrets"),
            ("delete", "secrets"),
            ("create", "rlhfjobs.rlhf.dev"),
            ("update", "pods"),
            ("patch", "pods", "--subresource=status"),
            ("create", "pods", "--subresource=exec"),
            ("get", "configmaps"),
            ("delete", "services"),
            ("create", "rolebindings.rbac.authorization.k8s.io"),
            ("create", "serviceaccounts", "--subresource=token"),
            ("create", "persistentvolumeclaims"),
        ):
            assert not can(*args, "-n", namespace), " ".join(args)
        for args in (
            ("delete", "nodes"),
            ("list", "namespaces"),
            ("list", "secrets", "--all-namespaces"),
            ("create", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
            ("list", "nodes"),
        ):
            assert not can(*args), " ".join(args)
        # Cluster-scoped, so bound cluster-wide even for a namespaced install.
        assert can("get", "nodes")

        # Enough: the operator, with the chart's credentials, runs the example job.
        if control_plane.kubelet is None:
            pytest.skip("needs the test kubelet to mark pods Running")
        # The Lease: its own name in the release's namespace, nothing more.
        assert can("update", "leases.coordination.k8s.io/rbac-rlhfjob", "-n", sys_ns)
        assert not can("update", "leases.coordination.k8s.io/other", "-n", sys_ns)
        assert not can("delete", "leases.coordination.k8s.io/rbac-rlhfjob", "-n", sys_ns)
        assert not can("create", "leases.coordination.k8s.io", "-n", namespace)
        election = (
            "--leader-elect",
            f"--leader-elect-resource-namespace={sys_ns}",
            "--leader-elect-resource-name=rbac-rlhfjob",
        )
        with running_operator(
            control_plane, namespace, kubeconfig=kubeconfig, extra_args=election
        ) as op:
            apply(control_plane, namespace, REPO / "examples" / "k8s" / "ppo-sort.yaml")
            wait_phase(control_plane, namespace, "ppo-sort", "Running", timeout=90)
            assert len(pods(control_plane, namespace, "ppo-sort")) == 6
            kinds = control_plane.kubectl_run(
                "get", "services,configmaps,networkpolicies,secrets", "-n", namespace,
                "-l", "rlhf.dev/job=ppo-sort", "-o", "name",
            ).stdout.split()  # fmt: skip
            assert {k.split("/")[0] for k in kinds} >= {
                "service",
                "configmap",
                "networkpolicy.networking.k8s.io",
                "secret",
            }, kinds
            assert "secret/ppo-sort-rendezvous" in kinds, kinds
            log = op.log()
        # A 403 status, not the milliseconds of a log line's time (",403").
        assert not re.search(r"(?<![,\d])403\b", log) and "Forbidden" not in log, log[-5000:]
    finally:
        control_plane.delete_namespace(other)


def test_cluster_wide_install_reaches_every_namespace_but_no_secrets(
    control_plane: Cluster, namespace: str, release: Any
) -> None:
    sys_ns = release("wide")
    kubeconfig = _sa_kubeconfig(control_plane, sys_ns, "wide-rlhfjob")
    for ns in (namespace, "default"):
        assert _can_i(control_plane, kubeconfig, "create", "pods", "-n", ns)
        assert _can_i(control_plane, kubeconfig, "list", "rlhfjobs.rlhf.dev", "-n", ns)
        assert not _can_i(control_plane, kubeconfig, "get", "secrets", "-n", ns)
    assert _can_i(control_plane, kubeconfig, "watch", "rlhfjobs.rlhf.dev", "--all-namespaces")
    assert not _can_i(control_plane, kubeconfig, "list", "secrets", "--all-namespaces")
    assert not _can_i(control_plane, kubeconfig, "delete", "nodes")
    # A node's Ready condition, for pods stuck terminating on it; nothing more of nodes.
    assert _can_i(control_plane, kubeconfig, "get", "nodes")
    assert not _can_i(control_plane, kubeconfig, "list", "nodes")
    # The Deployment points at the ServiceAccount the token came from.
    deploy = json.loads(
        control_plane.kubectl_run(
            "get", "deployment", "wide-rlhfjob", "-n", sys_ns, "-o", "json"
        ).stdout
    )
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "wide-rlhfjob"


def test_helm_ignores_nothing_it_should_ship(control_plane: Cluster, tmp_path: Path) -> None:
    """The packaged chart holds the CRD, the dashboard and the schema."""
    control_plane.helm_run("package", str(CHART), "-d", str(tmp_path))
    (tgz,) = tmp_path.glob("rlhfjob-*.tgz")
    names = subprocess.run(
        ["tar", "-tzf", str(tgz)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    for want in (
        "rlhfjob/crds/rlhfjobs.rlhf.dev.yaml",
        "rlhfjob/dashboards/rlhfjob.json",
        "rlhfjob/values.schema.json",
        "rlhfjob/templates/NOTES.txt",
    ):
        assert want in names, names
