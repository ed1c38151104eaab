"""deploy/'s alert rules and dashboard against the code: every metric they name is one a
service exports (with the labels they use), the rules file has the shape Prometheus
reads, the observability profile wires both in, and no metric has an unbounded label.
With promtool on the PATH (Debian's `prometheus` package), the files are also checked by
Prometheus's own parser."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import services
from contracts import catalog
from services.runtime.metrics import DEAD_LETTER_CODES, dead_letter_code, lag
from services.runtime.settings import DEFAULT_HTTP_PORTS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS_FILE = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "cm-platform.json"
ALERTS: dict[str, Any] = yaml.safe_load(ALERTS_FILE.read_text())
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())

#: Series Prometheus makes itself, and labels every scraped series has.
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"job", "instance"}
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}  # fmt: skip
#: Labels that would carry a key, a merchant or a person: never on a metric.
UNBOUNDED_LABELS = {
    "key", "website_key", "merchant", "invoice", "invoice_number", "invoice_key",
    "debtor", "debtor_code", "email", "phone", "message_id", "timer_id", "url", "error",
}  # fmt: skip


def _import_every_service_module() -> None:
    for module in pkgutil.walk_packages(services.__path__, "services."):
        if module.name.endswith("__main__"):
            continue  # would run the service
        importlib.import_module(module.name)


def exported() -> dict[str, set[str]]:
    """Every series name the services' modules register, with its label names."""
    _import_every_service_module()
    found: dict[str, set[str]] = {}
    # prometheus_client keeps no public list of collectors with their label names.
    for collector in list(REGISTRY._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        describe = getattr(collector, "describe", None) or collector.collect
        for family in describe():
            suffixes = {
                "counter": ["_total", "_created"],
                "histogram": ["_bucket", "_sum", "_count", "_created"],
                "summary": ["", "_sum", "_count", "_created"],
            }.get(family.type, [""])
            for suffix in suffixes:
                found[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return found


EXPORTED = exported()

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, keywords, labels,
    durations or Grafana variables)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = _GROUPING.sub("", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana's variables
    names = set()
    for match in _WORD.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent or the unit of a number (1e3, 5m)
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if match.group() not in KEYWORDS:
            names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    """The labels an expression matches on or groups by."""
    text = _STRING.sub('""', expr)
    found = {
        label
        for _, matchers in _SELECTOR.findall(text)
        for label in _MATCHER_LABEL.findall(matchers)
    }
    for _, labels in _GROUPING.findall(text):
        found |= {label.strip() for label in labels.split(",") if label.strip()}
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in ALERTS["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    exprs = []
    for panel in DASHBOARD["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
    return exprs


def template_metrics() -> set[str]:
    """The series the dashboard's variables read (`label_values(metric, label)`)."""
    found = set()
    for variable in DASHBOARD["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else ""
        found |= set(re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", query))
    return found


def every_expr() -> list[tuple[str, str]]:
    return [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()] + [
        (f"dashboard {i}", e) for i, e in enumerate(dashboard_exprs())
    ]


# --- the parser itself ----------------------------------------------------------------


def test_the_parser_finds_series_and_labels_and_leaves_the_rest() -> None:
    expr = (
        'sum by (service, code) (rate(cm_a_total{service=~"$service", code!="x y"}[5m]))'
        ' / on (service) group_left max(cm_b) > 1e3 and absent(up{job="j"}) offset 5m'
    )
    assert metric_names(expr) == {"cm_a_total", "cm_b", "up"}
    assert label_names(expr) == {"service", "code", "job"}


# --- drift: the files name only what the code exports ---------------------------------


@pytest.mark.parametrize(("where", "expr"), every_expr(), ids=lambda v: str(v)[:60])
def test_every_metric_a_rule_or_panel_names_is_exported(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: names no metric: {expr}"
    unknown = names - set(EXPORTED) - PROMETHEUS_OWN
    assert not unknown, f"{where} names metrics no service exports: {sorted(unknown)}"
    known_labels = set().union(*(EXPORTED.get(n, set()) for n in names)) | TARGET_LABELS
    unknown_labels = label_names(expr) - known_labels
    assert not unknown_labels, f"{where} uses labels its metrics lack: {sorted(unknown_labels)}"


def test_the_dashboards_variables_read_exported_metrics() -> None:
    assert template_metrics() and template_metrics() <= set(EXPORTED)


def test_the_alerts_and_the_dashboard_cover_what_operators_need() -> None:
    needed = {
        "cm_consumer_lag",
        "cm_outbox_pending_oldest_age_seconds",
        "cm_dead_letters_total",
        "cm_notifier_give_ups_total",
        "cm_notifier_retries_total",
        "cm_scheduler_oldest_due_age_seconds",
        "cm_consumer_batch_failures_total",
        "up",
    }
    in_alerts = set().union(*(metric_names(r["expr"]) for r in alert_rules()))
    assert needed <= in_alerts, sorted(needed - in_alerts)
    shown = {
        "cm_consumer_lag",
        "cm_outbox_pending_rows",
        "cm_outbox_pending_oldest_age_seconds",
        "cm_outbox_parked_rows",
        "cm_dead_letters_total",
        "cm_notifier_retries_total",
        "cm_notifier_give_ups_total",
        "cm_scheduler_timers_due",
    }
    in_dashboard = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert shown <= in_dashboard, sorted(shown - in_dashboard)


def test_no_metric_has_a_label_that_could_be_unbounded() -> None:
    ours = {name: labels for name, labels in EXPORTED.items() if name.startswith("cm_")}
    assert len(ours) > 20  # every service module was imported
    for name, labels in ours.items():
        assert not labels & UNBOUNDED_LABELS, f"{name}: {sorted(labels & UNBOUNDED_LABELS)}"


def test_dead_letter_codes_come_from_a_closed_set() -> None:
    assert dead_letter_code("invalid_json") == "invalid_json"
    assert dead_letter_code("missing") == "missing"  # pydantic's own
    assert dead_letter_code("exceeds_total") == "other"  # a business rule's
    assert dead_letter_code("x" * 300) == "other"
    assert dead_letter_code(None) == "other"
    assert len(DEAD_LETTER_CODES) < 200


def test_lag_is_never_negative() -> None:
    assert lag(10, 4) == 6
    assert lag(3, 7) == 0  # Tansu: the end offset is the last batch's base offset + 1


# --- the rules file's shape -------------------------------------------------------------


def test_the_rules_file_has_the_shape_prometheus_reads() -> None:
    assert set(ALERTS) == {"groups"}
    names = []
    for group in ALERTS["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"Cm[A-Za-z]+", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))


def test_prometheus_scrapes_every_service_at_its_port_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(catalog.SERVICES)
    for service, job in jobs.items():
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A"
        assert sd["port"] == DEFAULT_HTTP_PORTS[service]
        env = COMPOSE["services"][service]["environment"]
        assert int(env["HTTP_PORT"]) == sd["port"]


def test_the_observability_profile_wires_prometheus_and_grafana() -> None:
    services_ = COMPOSE["services"]
    prometheus, grafana = services_["prometheus"], services_["grafana"]
    for spec in (prometheus, grafana):
        assert spec["profiles"] == ["observability"]
        assert all(port.startswith("127.0.0.1:") for port in spec["ports"])
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/cm.yaml").read_text())[
        "providers"
    ]
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/dashboards"]
    (source,) = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"]
    assert source["url"] == "http://prometheus:9090"
    used = {
        json.dumps(panel.get("datasource"), sort_keys=True)
        for panel in DASHBOARD["panels"]
        if panel["type"] != "row"
    }
    assert used == {json.dumps({"type": "prometheus", "uid": source["uid"]}, sort_keys=True)}


def test_the_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


# --- Prometheus's own parser, where it is installed -------------------------------------

PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False)


@needs_promtool
def test_promtool_accepts_the_config_and_the_rules() -> None:
    checked = promtool("check", "config", str(PROMETHEUS_FILE))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = promtool("check", "rules", str(ALERTS_FILE))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # As recording rules, with Grafana's variables as a query would have them.
    rules = [
        {
            "record": f"cm:dashboard_{i}",
            "expr": e.replace("$__rate_interval", "1m").replace("$service", ".*"),
        }
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
