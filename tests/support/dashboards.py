"""The Grafana dashboard's PromQL, reduced to the metric names it reads (for the tests
that check each one against what the driver serves)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "helm/rlhfjob/dashboards/rlhfjob.json"

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
_KEYWORDS |= {"unless", "offset", "le"}


OPERATOR_PREFIX = "rlhfjob_operator_"


def panel_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL ``expr``) of every panel's every target."""
    dash = json.loads(path.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def dashboard_exprs(path: Path = DASHBOARD, *, source: str = "driver") -> list[str]:
    """The PromQL a ``source`` serves the data of: ``driver`` (panels on the job's
    series, and the query variables) or ``operator`` (the Operator row's panels, on
    ``rlhfjob_operator_*``)."""
    dash = json.loads(path.read_text())
    exprs = [e for _, e in panel_exprs(path)]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    on_operator = [e for e in exprs if OPERATOR_PREFIX in e]
    return on_operator if source == "operator" else [e for e in exprs if e not in on_operator]


def metric_names(expr: str) -> set[str]:
    """The metric families an expression reads: label matchers, strings, ranges and
    ``by (...)`` label lists removed, function names (followed by ``(``) and keywords
    dropped, and ``_bucket``/``_sum``/``_count`` mapped to their histogram."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][\w:]*(?!\w)(\s*\()?", expr):
        word = match.group(0).rstrip("( \t")
        if match.group(1) or word in _KEYWORDS:
            continue
        names.add(re.sub(r"_(bucket|sum|count)$", "", word))
    return names


def served_families(text: str) -> dict[str, object]:
    """Families on a /metrics page by name; counters are listed with ``_total`` too."""
    out: dict[str, object] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = family
        if family.type == "counter":
            out[f"{family.name}_total"] = family
    return out
