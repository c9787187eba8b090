"""deploy/grafana/corral.json is a Grafana dashboard over a Prometheus datasource variable, and every metric
its PromQL names is one that a real ``corral serve`` (the tiny random-weight model) or a gateway in front of it
exposes at ``/metrics``: a renamed metric fails here, not on someone's empty panel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import start_gateway

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "corral.json"

# Words of PromQL that are not metric names when not followed by "(" (functions and aggregations always are).
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_CALLED = {"(", "by", "without"}  # a function's or an aggregation's name comes before these
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|\d[\w.]*|[A-Za-z_:][\w:]*|\S')
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s*,\s*\w+\s*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside label matchers (``{...}``), ranges
    (``[...]``), label lists (``by (...)``) and Grafana variables, that name no function or aggregation."""
    tokens = _TOKEN.findall(expr)
    names: set[str] = set()
    depth = {"{": 0, "[": 0}
    closing = {"}": "{", "]": "["}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in depth:
            depth[token] += 1
        elif token in closing:
            depth[closing[token]] -= 1
        elif any(depth.values()):
            pass
        elif token == "$":  # $var or ${var}
            i += 3 if following == "{" else 1
        elif token in _LABEL_LISTS and following == "(":
            i = tokens.index(")", i)
        elif re.fullmatch(r"[A-Za-z_:][\w:]*", token) and token not in _KEYWORDS and following not in _CALLED:
            names.add(token)
        i += 1
    return names


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard's panels (rows' nested panels too) and its template queries."""
    panels = [*dashboard["panels"], *(p for row in dashboard["panels"] for p in row.get("panels", []))]
    exprs = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            exprs.append(_LABEL_VALUES.sub(r"\1", query))
    return exprs


def exposed_names(text: str) -> set[str]:
    """The series names a /metrics text offers to PromQL: its samples', and those of every declared family,
    labelled ones without children yet included (a counter as ``_total``; a histogram as ``_bucket``, ``_sum``,
    ``_count``)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                        "summary": ("", "_sum", "_count")}.get(kind, ("",))
            names.update((name.removesuffix("_total") if kind == "counter" else name) + s for s in suffixes)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_the_extractor_finds_metric_names_and_nothing_else():
    expr = ('histogram_quantile(0.99, sum by (le, group) (rate(corral_gateway_time_to_first_byte_seconds_bucket'
            '{group=~"$group", status!="500"}[$__rate_interval]))) / on (instance) group_left '
            'sum without (job) (corral:num_requests_running offset 5m) > bool 1e-9 or vector(0) and up')
    assert metric_names(expr) == {"corral_gateway_time_to_first_byte_seconds_bucket", "corral:num_requests_running",
                                  "up"}
    assert metric_names("sum(rate(corral:prompt_tokens_total[${__range}])) * $scale") == {"corral:prompt_tokens_total"}


def test_the_exposed_names_follow_the_exposition_format():
    text = ("# HELP a_total A.\n# TYPE a_total counter\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n"
            "# TYPE g gauge\ng 1\n")
    assert exposed_names(text) == {"a_total", "h_bucket", "h_sum", "h_count", "g"}


def test_the_dashboard_is_a_grafana_model_over_a_prometheus_datasource_variable():
    dashboard = load_dashboard()
    (datasource,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{datasource['name']}}}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    titles = {p["title"] for p in panels}
    for wanted in ("Time to first token", "Inter-token latency (TPOT)", "Throughput", "Waiting queue",
                   "Running requests", "KV-cache usage", "Prefix-cache hit rate", "Requests by status",
                   "Time to first byte", "Healthy backends", "In flight per backend"):
        assert wanted in titles


@pytest.fixture(scope="module")
def metrics_texts(tiny_model_dir, corral_serve_module) -> Iterator[tuple[str, str]]:
    """The /metrics of a real replica and of a gateway in front of it, after one request through both."""
    replica = corral_serve_module("--model", tiny_model_dir, "--served-model-name", "tiny", "--max-model-len", "256",
                                  "--kv-cache-memory", str(16 * 1024**2))
    gateway = start_gateway({"groups": {"tiny": {"backends": [{"url": replica, "name": "a"}],
                                                 "health": {"interval_s": 0.2, "metrics_interval_s": 0.1}}}})
    try:
        gateway.wait_available("tiny", 1)
        answer = httpx.post(gateway.base_url + "/v1/completions", timeout=60,
                            json={"model": "tiny", "prompt": "Hello", "max_tokens": 3, "temperature": 0})
        assert answer.status_code == 200, answer.text
        yield httpx.get(replica + "/metrics", timeout=10).text, httpx.get(gateway.base_url + "/metrics", timeout=10).text
    finally:
        gateway.stop()


def test_every_metric_the_dashboard_queries_is_exposed(metrics_texts):
    replica_text, gateway_text = metrics_texts
    exposed = exposed_names(replica_text) | exposed_names(gateway_text)
    used = set().union(*(metric_names(expr) for expr in dashboard_queries(load_dashboard())))
    assert {"corral:time_to_first_token_seconds_bucket", "corral_gateway_requests_total"} <= used
    assert not used - exposed, f"the dashboard queries metrics no /metrics exposes: {sorted(used - exposed)}"
