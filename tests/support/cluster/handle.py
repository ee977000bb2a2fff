"""`Cluster`: what tests see, for our control plane or one named by KUBECONFIG."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from .kubelet import TestKubelet
from .paths import tool
from .processes import wait_until

if TYPE_CHECKING:
    from .control_plane import ControlPlane


@dataclass
class Cluster:
    """A cluster to test against: ours (`control_plane` set) or KUBECONFIG's."""

    kubeconfig: Path
    server: str
    api_client: k8s.ApiClient
    kubectl: Path
    helm: Path
    kubelet: TestKubelet | None
    control_plane: ControlPlane | None
    # HOME-like dirs for kubectl's discovery cache and helm's config/cache.
    tool_home: Path

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, tool_home: Path) -> Cluster:
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        return cls(
            kubeconfig=kubeconfig,
            server=api.configuration.host,
            api_client=api,
            kubectl=tool("kubectl"),
            helm=tool("helm"),
            kubelet=None,
            control_plane=None,
            tool_home=tool_home,
        )

    def new_api_client(self) -> k8s.ApiClient:
        """Another admin client (e.g. for a thread of its own)."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        """os.environ for subprocesses (kubectl, helm, an operator): KUBECONFIG
        set, and tool caches kept out of $HOME."""
        h = self.tool_home
        return os.environ | {
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(h / "kube-cache"),
            "HELM_CACHE_HOME": str(h / "helm-cache"),
            "HELM_CONFIG_HOME": str(h / "helm-config"),
            "HELM_DATA_HOME": str(h / "helm-data"),
        }

    def kubectl_run(
        self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl; raises CalledProcessError (with stderr) if check."""
        return self._run(self.kubectl, args, input=input, timeout=timeout, check=check)

    def helm_run(
        self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.helm, args, input=input, timeout=timeout, check=check)

    def _run(
        self, exe: Path, args: Sequence[str], *, input: str | None, timeout: float, check: bool
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(exe), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr
            )
        return proc

    def create_namespace(self, prefix: str = "t-", *, timeout: float = 30) -> str:
        """A new namespace (generated name) whose `default` ServiceAccount exists,
        so pods can be created in it at once."""
        core = k8s.CoreV1Api(self.api_client)
        ns = core.create_namespace({"metadata": {"generateName": prefix}})
        name: str = ns.metadata.name
        wait_until(
            lambda: core.read_namespaced_service_account("default", name),
            timeout=timeout,
            what=f"ServiceAccount {name}/default (controller-manager)",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Start deleting a namespace; does not wait for it to be gone."""
        with contextlib.suppress(ApiException):
            k8s.CoreV1Api(self.api_client).delete_namespace(name)

    @contextlib.contextmanager
    def namespace(self, prefix: str = "t-") -> Iterator[str]:
        """A new namespace (see create_namespace), deleted on the way out."""
        name = self.create_namespace(prefix)
        try:
            yield name
        finally:
            self.delete_namespace(name)
