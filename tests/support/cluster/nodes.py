"""The fake nodes and the pod handlers the test kubelet hands pods to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .paths import GPU

if TYPE_CHECKING:
    from .kubelet import TestKubelet


@dataclass(frozen=True)
class NodeSpec:
    """A fake node: its capacity (= allocatable), labels and taints."""

    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    gpus: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()

    def capacity(self) -> dict[str, str]:
        cap = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods)}
        cap["ephemeral-storage"] = "500Gi"
        if self.gpus:
            cap[GPU] = str(self.gpus)
        return cap

    def all_labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "rlhf.dev/test-node": "true",
        }
        if self.gpus:
            # What NVIDIA's GPU feature discovery puts on a GPU node.
            labels |= {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(self.gpus),
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            }
        return labels | dict(self.labels)


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("cpu-0"),
    NodeSpec("cpu-1"),
    NodeSpec("gpu-0", cpu="64", memory="512Gi", gpus=8),
    NodeSpec("gpu-1", cpu="64", memory="512Gi", gpus=8),
)


class PodHandler(Protocol):
    """What the test kubelet does with the pods bound to its nodes.

    Each method is called once per pod (by uid). `start` runs on the kubelet's
    watch thread and must return quickly (start a thread or process for long
    work); it reports through `kubelet.mark_running` / `kubelet.finish_pod` /
    `kubelet.mark_waiting`. `stop` goes to the handler that started the pod
    (even if `TestKubelet.using` has switched handlers since) on a thread of its
    own: it may block until the pod's containers are gone, as a kubelet does
    before it confirms a deletion, but must be bounded.
    """

    def start(self, kubelet: TestKubelet, pod: Any) -> None:
        """A pod was bound to one of the kubelet's nodes and is Pending."""

    def stop(self, kubelet: TestKubelet, pod: Any) -> None:
        """The pod is being deleted; the kubelet removes it once this returns."""


class MarkRunning:
    """Default: every container starts at once and keeps running until a test
    calls `kubelet.finish_pod` (or the pod is deleted)."""

    def start(self, kubelet: TestKubelet, pod: Any) -> None:
        kubelet.mark_running(pod.metadata.namespace, pod.metadata.name)

    def stop(self, kubelet: TestKubelet, pod: Any) -> None:
        pass


class Hold:
    """Leave bound pods Pending (as if images were still pulling); a test moves
    them on with `kubelet.mark_running` / `kubelet.finish_pod`."""

    def start(self, kubelet: TestKubelet, pod: Any) -> None:
        pass

    def stop(self, kubelet: TestKubelet, pod: Any) -> None:
        pass
