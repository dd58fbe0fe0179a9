"""deploy/: the Prometheus rules and the Grafana dashboard.

The rules pass ``promtool check rules`` and their unit tests (``promtool test rules``), every alert
has a test where it fires and one where it does not, and the rules and the dashboard use only
series the service exports (read from its /metrics), series the rules record, and ``up``. A real
Prometheus evaluates the rules against the running service.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from orders_service.causes import UnavailableCause
from orders_service.config import Settings
from tests.conftest import Catalog, unavailable
from tests.support.granian import start_granian
from tests.support.prometheus_server import JOB, Prometheus, prometheus_binary, running_prometheus

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted(PROMETHEUS.glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "orders.json"

# Series Prometheus makes itself, which the rules may use.
PROMETHEUS_SERIES = frozenset({"up"})
SEVERITIES = frozenset({"critical", "warning"})
ANNOTATIONS = frozenset({"summary", "description", "runbook"})
# What a panel's Grafana variables stand for when its expression is checked as PromQL.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
# The series of a metric family of each type (prometheus_client's parser names counters without `_total`).
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


# --- PromQL: which metric names an expression reads ---------------------------------------

_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")  # ranges and subqueries: [5m], [1h:1m], [$__rate_interval]
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{\w+(?::\w+)?\}|\w+)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?")
KEYWORDS = frozenset(
    {
        # binary and set operators, modifiers
        "and", "or", "unless", "atan2", "bool", "offset",
        "by", "without", "on", "ignoring", "group_left", "group_right",
        # aggregation operators (may be followed by `by (...)` rather than their argument list)
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
        # numbers
        "inf", "nan",
    }
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers that are not functions, keywords, labels or numbers."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("0", text)
    text = _LABEL_MATCHERS.sub("{}", text)
    text = _BRACKETS.sub("[]", text)
    text = _LABEL_LIST.sub(r"\1", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match[1], match[2]
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_are_what_an_expression_selects() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (path, le) (rate(http_request_duration_seconds_bucket{service="orders",'
        ' path!~"/schema.*|by"}[$__rate_interval])))'
    ) == {"http_request_duration_seconds_bucket"}
    assert metric_names(
        "sum without (instance) (rate(a_total[5m] offset 1h)) / on (job) group_left (cause) b:c:rate5m"
        " > 0.05 and ignoring(x) avg_over_time(c[1h:1m]) unless count by (job) (d) > bool 1e3"
    ) == {"a_total", "b:c:rate5m", "c", "d"}
    assert metric_names('label_replace(up{job="$job"}, "status_class", "${1}xx", "status", "sum(x)")') == {"up"}
    assert metric_names("sum(rate(x[${__range}])) * 2 + Inf - NaN + 0x1F") == {"x"}
    assert metric_names("topk (3, max by(le) (y)) or vector(1) or absent(z)") == {"y", "z"}


# --- the rules ------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> Iterator[dict[str, Any]]:
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            yield from group["rules"]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded_series() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        unavailable("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    assert binary is not None
    return binary


def run_promtool(promtool: str, *args: str | Path) -> None:
    result = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"


def test_there_are_rule_files_and_rule_tests() -> None:
    assert RULE_FILES
    assert RULE_TESTS
    assert alerts()
    assert recorded_series()


def test_the_rules_pass_promtool_check(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", *RULE_FILES)


def test_the_rules_pass_their_unit_tests(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", *RULE_TESTS)


def test_every_rule_test_loads_all_the_rule_files() -> None:
    for path in RULE_TESTS:
        loaded = {(path.parent / name).resolve() for name in load_yaml(path)["rule_files"]}
        assert loaded == {rule_file.resolve() for rule_file in RULE_FILES}, path.name


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    not_firing: set[str] = set()
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else not_firing).add(case["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names - firing == set(), "alerts without a test where they fire"
    assert names - not_firing == set(), "alerts without a test where they do not fire"
    assert (firing | not_firing) - names == set(), "tests of alerts that do not exist"


def test_every_recording_rule_is_unit_tested() -> None:
    tested = {
        name
        for path in RULE_TESTS
        for test in load_yaml(path)["tests"]
        for case in test.get("promql_expr_test", [])
        for name in metric_names(case["expr"])
    }
    assert recorded_series() - tested == set()


def test_every_alert_has_a_severity_a_duration_and_what_to_do() -> None:
    for alert in alerts():
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        assert set(alert["annotations"]) >= ANNOTATIONS, alert["alert"]
        assert alert.get("for"), alert["alert"]


# --- the dashboard --------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def panel_expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def variable_expressions() -> list[str]:
    """The PromQL inside the dashboard's query variables (``label_values(<series>, <label>)``)."""
    expressions = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert match, f"variable {variable['name']}: not label_values(<series>, <label>): {query}"
        expressions.append(match[1])
    return expressions


def test_the_dashboard_is_a_grafana_dashboard_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"]
    assert board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", datasource) == datasource, panel["title"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == datasource, variable["name"]


def test_the_dashboards_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def test_the_dashboards_expressions_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each expression (Grafana's variables replaced) as a recording rule."""

    def substitute(match: re.Match[str]) -> str:
        name = match[0].strip("${}").split(":")[0]
        return GRAFANA_VARIABLES.get(name, ".+")

    expressions = [_GRAFANA_VARIABLE.sub(substitute, expr) for expr in panel_expressions() + variable_expressions()]
    rules_file = tmp_path / "dashboard.yml"
    recorded = [{"record": f"panel:{number}", "expr": expr} for number, expr in enumerate(expressions)]
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    run_promtool(promtool, "check", "rules", rules_file)


# --- both against what the service exports ---------------------------------------------------


@pytest.fixture
async def exposition(client: AsyncTestClient[Litestar]) -> dict[str, set[str]]:
    """The service's /metrics: each metric family with the names of its series (``_total``, ``_bucket``...)."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    families = {}
    for family in text_string_to_metric_families(response.text):
        # A labelled metric without children yet has no samples: its series' names follow from its type.
        names = {f"{family.name}{suffix}" for suffix in SERIES_SUFFIXES.get(family.type, ("",))}
        families[family.name] = names | {sample.name for sample in family.samples}
    # prometheus_client's creation timestamps (`orders_created_created`) come as families of their own
    return {
        name: names for name, names in families.items() if not (name.endswith("_created") and name[:-8] in families)
    }


@pytest.fixture
def exported(exposition: dict[str, set[str]]) -> set[str]:
    return set().union(*exposition.values())


def _unknown(expressions: list[str], known: set[str]) -> dict[str, set[str]]:
    return {expr: names - known for expr in expressions if (names := metric_names(expr)) - known}


def test_the_rules_use_only_exported_and_recorded_series(exported: set[str]) -> None:
    expressions = [rule["expr"] for rule in rules()]
    assert _unknown(expressions, exported | recorded_series() | PROMETHEUS_SERIES) == {}


def test_the_dashboard_uses_only_exported_and_recorded_series(exported: set[str]) -> None:
    assert _unknown(panel_expressions() + variable_expressions(), exported | recorded_series()) == {}


def test_the_dashboard_shows_every_metric_of_the_service(exposition: dict[str, set[str]]) -> None:
    """Each of the service's own metric families (not the client library's process_/python_ ones) is on a panel.

    A panel may show a family through a recording rule.
    """
    used = {name for expr in panel_expressions() for name in metric_names(expr)}
    used |= {name for rule in rules() if rule.get("record") in used for name in metric_names(rule["expr"])}
    ours = {family: names for family, names in exposition.items() if not family.startswith(("process_", "python_"))}
    assert ours
    assert {family for family, names in ours.items() if not names & used} == set()


# --- a real Prometheus evaluates the rules against the running service ------------------------


def _rules_once_evaluated(prometheus: Prometheus, within: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        response = httpx.get(f"{prometheus.base_url}/api/v1/rules", timeout=10)
        evaluated = [rule for group in response.json()["data"]["groups"] for rule in group["rules"]]
        if all(rule["health"] != "unknown" for rule in evaluated) or time.monotonic() > deadline:
            return evaluated
        time.sleep(0.25)  # polling an outside process


def place_orders(client: httpx.Client) -> None:
    for _ in range(5):
        assert client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}).status_code == 200


def test_a_real_prometheus_evaluates_every_rule_against_the_service(
    settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    """What promtool cannot see: label names and values as the service really exports them.

    Prometheus scrapes the 2-worker service as job ``orders`` and evaluates the rule files: every rule
    evaluates without error, every recording rule has series with the service's labels, and
    nothing fires on a healthy service.
    """
    binary = prometheus_binary()
    if binary is None:
        unavailable("prometheus is not installed (Debian package prometheus)")
    assert binary is not None
    catalog.add(1, stock=100)
    with start_granian(settings, workers=2, metrics_dir=tmp_path / "metrics") as server:
        target = urlsplit(server.base_url).netloc
        with running_prometheus(binary, target, tmp_path, rule_files=RULE_FILES) as prometheus:
            prometheus.wait_for(f'up{{job="{JOB}"}}', 1)
            with httpx.Client(base_url=server.base_url, headers={"X-User": "monitored"}) as client:
                place_orders(client)
                # A route's histogram series appear with its first request: rate() needs a second batch.
                buckets = 'orders:http_request_duration_seconds_bucket:rate5m{path="/orders", le="+Inf"}'
                prometheus.wait_for(f"count({buckets})", 1)
                place_orders(client)
            prometheus.wait_for('count(orders:http_request_duration_seconds:p99_5m{path="/orders"} >= 0)', 1)

            evaluated = _rules_once_evaluated(prometheus)
            assert len(evaluated) == len(list(rules()))
            assert [(rule["name"], rule.get("lastError")) for rule in evaluated if rule["health"] != "ok"] == []
            # Evaluated once is not evaluated since the last scrape: a rate may still have had a single sample.
            for name in recorded_series():
                prometheus.wait_for(f"count({name}) > bool 0", 1)

            by_status = prometheus.query("orders:http_requests:rate5m")
            assert {series["metric"]["status_class"] for series in by_status} <= {"2xx", "4xx", "5xx"}
            assert {"/orders", "/orders/me", "/health"} <= {series["metric"]["path"] for series in by_status}
            causes = prometheus.query("orders:service_unavailable_responses:rate5m")
            assert {series["metric"]["cause"] for series in causes} == set(get_args(UnavailableCause))
            assert prometheus.value('orders:http_requests:rate5m{path="/orders", status_class="2xx"}') > 0  # type: ignore[operator]
            assert prometheus.value("orders:http_requests_5xx:ratio_rate5m") == 0
            assert prometheus.value("orders:order_rejections:ratio_rate5m") == 0
            utilisation = prometheus.value('orders:db_pool_utilisation:ratio{pool="requests"}')
            assert utilisation is not None
            assert 0 <= utilisation <= 1

            alerts_now = httpx.get(f"{prometheus.base_url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            assert [alert for alert in alerts_now if alert["state"] == "firing"] == []
