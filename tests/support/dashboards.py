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


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL ``expr`` in the dashboard: panels' targets and query variables."""
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


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
