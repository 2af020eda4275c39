"""Per-rule observability: counters per rule and outcome that add up to the filter's totals,
made Prometheus labels by the sample configuration's `stats_tags` (envoy/envoy.yaml, read
here as shipped); the access log's cache state and fetch duration; and the Grafana dashboard
(envoy/grafana/custom-error-pages.json), every query of which must find its metrics, with the
labels it selects and groups by, in Envoy's /stats/prometheus. Both builds; one and two
workers (`make e2e-workers`)."""

import json
import re
import time

import yaml
from harness import BUILD, ROOT

SAMPLE = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
DASHBOARD = json.loads((ROOT / "envoy/grafana/custom-error-pages.json").read_text())
# The dashboard's build switch: Envoy names the two builds' counters differently.
BUILD_OPTION = {"wasm": "proxy-wasm", "native": "dynamic module"}[BUILD]

POLICY = {
    "errorService": {"cluster": "error_pages", "prewarm": False},
    "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"name": "missing", "matchResponseCodes": ["404"], "path": "/404.html"},
        {"name": "api-errors", "matchResponseCodes": ["403"], "passthrough": True},
        {"matchResponseCodes": ["410"], "body": "gone"},  # counts as default_rule2
        {"name": "down", "matchResponseCodes": ["503"], "path": "/absent.html"},  # the service answers 404
    ]},
}
SENT = {404: 5, 403: 2, 410: 3, 503: 2}
OUTCOMES = {"cache", "fetched", "stale", "inline", "fallback", "passthrough"}
REASONS = {"dispatch", "unreachable", "timeout", "status", "too_large", "malformed"}


def with_sample_tags(cfg):
    cfg["stats_config"] = SAMPLE["stats_config"]


def metrics_name():
    """What the dashboard's `metrics` variable stands for with this build."""
    var = next(v for v in DASHBOARD["templating"]["list"] if v["name"] == "metrics")
    options = dict(o.split(" : ") for o in var["query"].split(","))
    return options[BUILD_OPTION]


SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus(e):
    """Envoy's /stats/prometheus as (name, labels, value) rows."""
    rows = []
    for line in e.admin("/stats/prometheus").splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_LINE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        rows.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return rows


def send_traffic(e):
    for status, n in SENT.items():
        for i in range(n):
            r = e.request(f"/status/{status}?n={i}")
            assert r.status == status, r


def decisions(e, name):
    return {(labels["rule"], labels["outcome"]): v for n, labels, v in prometheus(e) if n == f"{name}_decisions"}


def wait_decisions(e, name, total, timeout=5.0):
    """Counts reach Envoy on the filter's tick (wasm) or as streams end (native): poll."""
    deadline = time.monotonic() + timeout
    while True:
        d = decisions(e, name)
        if sum(d.values()) >= total or time.monotonic() > deadline:
            return d
        time.sleep(0.05)


def test_each_rule_counts_its_outcomes_and_they_add_up_to_the_filters_totals(start_envoy, errors):
    errors.pages["/404.html"] = {"body": "page 404"}
    e = start_envoy(POLICY, customize=with_sample_tags)
    send_traffic(e)
    name = metrics_name()
    d = wait_decisions(e, name, sum(SENT.values()))
    assert {rule for rule, _ in d} == {"missing", "api-errors", "default_rule2", "down"}, d
    assert {outcome for _, outcome in d} == OUTCOMES
    # Deterministic whatever the worker: each rule's replies under its own outcome.
    assert d[("missing", "fetched")] + d[("missing", "cache")] == SENT[404], d
    assert d[("missing", "fetched")] >= 1
    assert (d[("api-errors", "passthrough")], d[("default_rule2", "inline")], d[("down", "fallback")]) == (2, 3, 2), d
    assert sum(d.values()) == sum(SENT.values()), "each response counted once"
    # Together they are the filter's own counters.
    totals = {n[len(name) + 1:]: v for n, labels, v in prometheus(e) if n.startswith(f"{name}_") and not labels}

    def by_outcome(o):
        return sum(v for (_, outcome), v in d.items() if outcome == o)

    for outcome in ("inline", "fallback", "stale", "passthrough"):
        assert by_outcome(outcome) == totals[outcome], (outcome, d, totals)
    assert sum(v for (_, o), v in d.items() if o != "passthrough") == totals["intercepted"], (d, totals)
    failed = {labels["reason"]: v for n, labels, v in prometheus(e) if n == f"{name}_fetch_failed"}
    assert set(failed) == REASONS and failed["status"] >= 1, failed

    # The access log: where each page came from, and how long the fetch waited on took.
    first = e.wait_access_line("GET /status/404?n=0 ", timeout=20)  # Envoy writes the file on a timer
    assert re.search(r" outcome=fetched rule=\S+ cache=miss fetch_ms=\d+$", first), first
    later = [e.wait_access_line(f"GET /status/404?n={i} ") for i in range(1, SENT[404])]
    # What each build promises with prewarm off, whichever worker the kernel hands each
    # connection: a wasm VM fetches its own copy on its first 404 and hits from then on; a
    # dynamic-module worker thread fetches its own (before another thread's copy is
    # shelved) or takes the shelved one, which it logs from then on as fetched ahead.
    rule = re.escape("defaultCustomErrorResponsePolicy.errorResponseRules[0]")
    shapes = {"hit": rf" outcome=cache rule={rule} cache=hit$",
              "shelved": rf" outcome=cache rule={rule} cache=prewarmed$",
              "fetched": rf" outcome=fetched rule={rule} cache=miss fetch_ms=\d+$"}
    kinds = [next((k for k, shape in shapes.items() if re.search(shape, line)), line) for line in later]
    assert set(kinds) <= set(shapes), later
    workers = int(e.concurrency)
    assert kinds.count("fetched") <= workers - 1, later  # the first 404 was one worker's fetch
    if BUILD == "wasm":
        assert "shelved" not in kinds, later  # a VM shares nothing
    fetches = len(errors.requests_to("/404.html"))
    assert 1 <= fetches <= workers and d[("missing", "fetched")] == fetches, (fetches, d)
    inline = e.wait_access_line("GET /status/410?n=0 ", timeout=20)
    assert "outcome=inline" in inline and "cache=" not in inline and "fetch_ms=" not in inline, inline
    fallback = e.wait_access_line("GET /status/503?n=0 ", timeout=20)
    assert re.search(r" outcome=fallback rule=\S+ cache=miss fetch_ms=\d+$", fallback), fallback


def test_without_the_tags_the_counters_keep_their_flat_names(start_envoy, errors):
    """The twin: without `stats_tags` Envoy shows one counter per rule and outcome, no labels."""
    e = start_envoy(POLICY)
    send_traffic(e)
    name = metrics_name()
    assert wait_decisions(e, name, 1, timeout=0.5) == {}
    deadline = time.monotonic() + 5
    while True:
        rows = {n: v for n, _, v in prometheus(e)}
        if rows.get(f"{name}_decisions_default_rule2_inline") == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rows[f"{name}_decisions_default_rule2_inline"] == 3
    assert rows[f"{name}_decisions_api-errors_passthrough".replace("-", "_")] == 2


SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{([^}]*)\})?\s*\[")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPED = re.compile(r"\bby\s*\(([^)]*)\)")


def dashboard_queries():
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_every_dashboard_query_finds_its_metrics_and_labels_in_envoys_prometheus_output(start_envoy, errors):
    errors.pages["/404.html"] = {"body": "page 404"}
    e = start_envoy(POLICY, customize=with_sample_tags)
    send_traffic(e)
    name = metrics_name()
    wait_decisions(e, name, sum(SENT.values()))
    rows = prometheus(e)
    queries = list(dashboard_queries())
    assert len(queries) >= 8
    for title, expr in queries:
        q = (expr.replace("${metrics}", name).replace("$error_cluster", "error_pages")
             .replace("$__rate_interval", "1m"))
        assert "$" not in q, f"{title}: a variable the test does not know: {q}"
        selectors = SELECTOR.findall(q)
        assert selectors, f"{title}: no metric read over a range: {q}"
        grouped = {label.strip() for g in GROUPED.findall(q) for label in g.split(",") if label.strip()}
        for metric, matchers in selectors:
            found = [labels for n, labels, _ in rows if n == metric]
            assert found, f"{title}: {metric} is not in /stats/prometheus"
            for label, op, value in MATCHER.findall(matchers):
                assert all(label in labels for labels in found), f"{title}: {metric} has no label {label}"
                if op == "=":
                    assert any(labels[label] == value for labels in found), f"{title}: no {metric}{{{label}={value!r}}}"
            for label in grouped - {"le"} if not metric.endswith("_bucket") else grouped:
                assert all(label in labels for labels in found), f"{title}: {metric} cannot be grouped by {label}"
