"""rlhfjob_operator never imports torch (the operator image has none)."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import rlhfjob_operator


def _all_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(rlhfjob_operator.__path__, prefix="rlhfjob_operator.")
        if info.name != "rlhfjob_operator.__main__"
    )


def test_every_operator_module_imports_without_torch() -> None:
    modules = ["rlhfjob_operator", *_all_modules(), "rlhfjob_operator.__main__"]
    assert "rlhfjob_operator.kube.handlers" in modules and "rlhfjob_operator.plan" in modules
    code = (
        "import importlib, sys\n"
        # Make any attempt fail loudly instead of silently loading torch.
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('rlhfjob_operator imported torch')\n"
        "sys.meta_path.insert(0, _Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "assert not [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "print('ok', len(sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_operator_source_never_names_torch() -> None:
    root = Path(rlhfjob_operator.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert len(sources) > 5
    for path in sources:
        found = re.search(r"^\s*(import|from)\s+torch\b", path.read_text(), re.MULTILINE)
        assert found is None, f"{path}: {found.group(0) if found else ''}"
