"""The shipped alert rules and Grafana dashboard, checked by the real promtool:
syntax, per-host behaviour across a fleet (`promtool test rules`), runbook
links, and that every query names only metrics the agent exports."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.harness.require import require_tool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "examples" / "prometheus" / "compliance-agent.rules.yml"
DASHBOARD = REPO / "examples" / "grafana" / "compliance-agent-dashboard.json"
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://compliance-agent.dev/docs/runbooks.md#"
# Grafana's template variables, replaced by what Grafana would put there.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1d", "$__interval": "1m",
                "$instance": ".*"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def exported_metric_names() -> set[str]:
    """Every series name the agent can export, with each optional one present."""
    from reconciler.ops.metrics import AgentMetrics
    from specs.status import Condition, ConditionStatus, ConditionType, ResourceStatus

    m = AgentMetrics("test")
    m.ntp_offset.set(0.1)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    m.observe_status(ResourceStatus(kind="k", conditions=[
        Condition(type=ct, status=ConditionStatus.true, reason="T", last_transition_time=t)
        for ct in ConditionType]))
    # Registered by the composition root (reconciler.service) beside AgentMetrics.
    from reconciler.evidence.recorder import EVIDENCE_METRICS
    from reconciler.runtime.daemon import LOOP_HEALTH_METRICS

    names = set(re.findall(r"^# TYPE (\S+)", m.exposition().decode(), re.M))
    names |= set(EVIDENCE_METRICS) | set(LOOP_HEALTH_METRICS)
    names |= _optional_collector_names()
    return names | {n + "_total" for n in names}


def _optional_collector_names() -> set[str]:
    """The watches' and the NATS wake-ups' collectors, as the daemon registers them."""
    from prometheus_client import CollectorRegistry, generate_latest

    from reconciler.delivery.wakeup import TokenBucket, WakeupCollector, WakeupWatcher
    from reconciler.runtime.debounce import Debouncer
    from reconciler.runtime.inotify import InotifyWatch
    from reconciler.runtime.watch import WatchCollector, WatchHub

    registry = CollectorRegistry()
    debouncer = Debouncer(lambda _key: None)
    registry.register(WatchCollector(WatchHub([InotifyWatch(debouncer.hint)], debouncer)))
    watcher = WakeupWatcher(connect=lambda: None, subject="orders.s.h",  # type: ignore[arg-type,return-value]
                            request_poll=lambda: None, bucket=TokenBucket(5, 60))
    registry.register(WakeupCollector(watcher))
    return set(re.findall(r"^# TYPE (\S+)", generate_latest(registry).decode(), re.M))


def test_shipped_alert_rules_pass_promtool() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout


def test_rules_only_reference_metrics_the_agent_exports() -> None:
    used = set(re.findall(r"\b(compliance_agent_[a-z_]+)", RULES.read_text()))
    assert used <= exported_metric_names(), f"rules use unknown metrics: {used - exported_metric_names()}"


def test_every_alert_links_its_runbook_section() -> None:
    anchors = {h.strip().lower() for h in re.findall(r"^## (\S+)\s*$", RUNBOOKS.read_text(), re.M)}
    for rule in alerts():
        url = rule["annotations"].get("runbook_url", "")
        assert url == RUNBOOK_BASE + rule["alert"].lower(), rule["alert"]
        assert rule["alert"].lower() in anchors, f"docs/runbooks.md lacks ## {rule['alert']}"


FLEET_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # host a reports all along; host b's metrics disappear after 30 minutes
      - series: 'compliance_agent_build_info{{instance="a:9100",version="0.1.0"}}'
        values: '1x120'
      - series: 'compliance_agent_build_info{{instance="b:9100",version="0.1.0"}}'
        values: '1x30'
      - series: 'up{{instance="a:9100",job="node"}}'
        values: '1x120'
      - series: 'up{{instance="b:9100",job="node"}}'
        values: '1x30 0x90'
      # host a stopped cleanly at minute 40
      - series: 'compliance_agent_up{{instance="a:9100"}}'
        values: '1x40 0x80'
      # host a's textfile keeps being rewritten, host c's is old (agent hung)
      - series: 'node_textfile_mtime_seconds{{instance="a:9100",file="/var/lib/prometheus-node-exporter-text/compliance_agent.prom"}}'
        values: '0+60x120'
      - series: 'node_textfile_mtime_seconds{{instance="c:9100",file="compliance_agent.prom"}}'
        values: '0x120'
      # host a's disk fills at minute 50; host c's evidence chain broke at minute 30
      - series: 'compliance_agent_unhealthy_reason{{instance="a:9100",reason="ReconcileFailing"}}'
        values: '_x50 1x70'
      - series: 'compliance_agent_evidence_chain_breaks{{instance="c:9100"}}'
        values: '0x30 1x90'
      - series: 'compliance_agent_evidence_chain_breaks{{instance="a:9100"}}'
        values: '0x120'
      # host a's unit watch is down from minute 30, its file watch live; host c's
      # nftables watch flaps (down 10 minutes at a time: not long enough to page)
      - series: 'compliance_agent_watch_up{{instance="a:9100",watch="units"}}'
        values: '1x30 0x90'
      - series: 'compliance_agent_watch_up{{instance="a:9100",watch="files"}}'
        values: '1x120'
      - series: 'compliance_agent_watch_up{{instance="c:9100",watch="nftables"}}'
        values: '1x20 0x10 1x10 0x10 1x70'
      # host c's NATS wake-ups back off from minute 20; host a's stay connected
      - series: 'compliance_agent_order_wakeup_watch_state{{instance="c:9100",state="backoff"}}'
        values: '0x20 1x100'
      - series: 'compliance_agent_order_wakeup_watch_state{{instance="c:9100",state="connected"}}'
        values: '1x20 0x100'
      - series: 'compliance_agent_order_wakeup_watch_state{{instance="a:9100",state="connected"}}'
        values: '1x120'
      - series: 'compliance_agent_order_wakeup_watch_state{{instance="a:9100",state="backoff"}}'
        values: '0x120'
    alert_rule_test:
      - eval_time: 60m
        alertname: ComplianceAgentMetricsAbsent
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "b:9100"}}
      - eval_time: 60m
        alertname: ComplianceAgentHostUnreachable
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "b:9100", job: node}}
      - eval_time: 60m
        alertname: ComplianceAgentDown
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "a:9100"}}
      - eval_time: 60m
        alertname: ComplianceEvidenceUnwritable
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "a:9100"}}
      - eval_time: 60m
        alertname: ComplianceEvidenceChainBroken
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "c:9100"}}
      - eval_time: 60m
        alertname: ComplianceWatchDown
        exp_alerts:
          - exp_labels: {{severity: info, instance: "a:9100", watch: units}}
      - eval_time: 60m
        alertname: ComplianceOrderWakeupsDown
        exp_alerts:
          - exp_labels: {{severity: info, instance: "c:9100", state: backoff}}
      - eval_time: 60m
        alertname: ComplianceAgentTextfileStale
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "c:9100", file: compliance_agent.prom}}
"""


def test_staleness_alerts_fire_per_host_in_a_fleet(tmp_path: Path) -> None:
    # the shipped rules minus annotations: promtool would compare their rendered text too
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    (tmp_path / "fleet_test.yml").write_text(FLEET_TEST.format(rules="rules.yml"))
    out = promtool("test", "rules", "fleet_test.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if t.get("expr")]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict) and query.get("query", "").startswith("label_values("):
            # label_values(metric, label) is Grafana's, not PromQL: check its selector
            exprs.append(query["query"].removeprefix("label_values(").split(",")[0])
    return exprs


def test_every_dashboard_query_passes_promtool(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    rules = []
    for i, expr in enumerate(exprs):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout


def test_a_broken_dashboard_query_is_caught(tmp_path: Path) -> None:
    """The check above can fail: promtool rejects a query with a syntax error."""
    path = tmp_path / "bad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:bad", "expr": "sum by (kind (compliance_agent_resource_drifted)"}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0


def test_dashboard_only_uses_exported_metrics() -> None:
    used = set(re.findall(r"\b(compliance_agent_[a-z_]+)", " ".join(dashboard_exprs())))
    assert used and used <= exported_metric_names(), used - exported_metric_names()
