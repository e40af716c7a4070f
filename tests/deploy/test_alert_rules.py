"""The PrometheusRule's alerts, run by Prometheus's own rule engine (`promtool test rules`) on made-up
series: each fires when its condition has held long enough, and not before or on a quieter service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`; .ci/run installs it)")


def rules() -> dict[str, dict[str, Any]]:
    """The alert rules by name, as the PrometheusRule defines them."""
    spec = yaml.safe_load(RULE.read_text())["spec"]
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"]}


def calls(namespace: str, ok_per_min: int, refused_per_min: int = 0, shed_per_min: int = 0,
          refused_for: str = "overloaded") -> list[dict[str, str]]:
    """Counters of one pod's Embed calls: every refused or shed call is also one of millibatch_requests_total.
    Refusals are for `refused_for` (admission's reason label)."""
    labels = f'namespace="{namespace}",pod="{namespace}-0",model="m"'
    series = [(f'millibatch_requests_total{{{labels},rpc="Embed",code="OK"}}', ok_per_min),
              (f'millibatch_requests_total{{{labels},rpc="Embed",code="RESOURCE_EXHAUSTED"}}', refused_per_min),
              (f'millibatch_rejected_requests_total{{{labels},reason="{refused_for}"}}', refused_per_min),
              (f'millibatch_requests_total{{{labels},rpc="Embed",code="DEADLINE_EXCEEDED"}}', shed_per_min),
              (f'millibatch_shed_requests_total{{{labels},reason="deadline"}}', shed_per_min)]
    return [{"series": name, "values": f"0+{per_min}x40"} for name, per_min in series]


def expected(name: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    """An alert as promtool reports it: the rule's labels and annotations, with `summary` filled in."""
    rule = rules()[name]
    return {"exp_labels": {**rule["labels"], **labels},
            "exp_annotations": {"summary": summary, "description": rule["annotations"]["description"]}}


def test_the_rules_are_valid_and_each_alert_fires_only_when_it_should(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    groups = yaml.safe_load(RULE.read_text())["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    series = [*calls("busy", 540, refused_per_min=60),  # 10% refused
              *calls("calm", 588, refused_per_min=12),  # 2% refused
              *calls("hasty", 540, refused_per_min=60, refused_for="deadline"),  # 10%, deadlines too short
              *calls("late", 576, shed_per_min=24),  # 4% shed after admission
              *calls("ontime", 597, shed_per_min=3),  # 0.5% shed
              {"series": 'millibatch_batch_failures_total{namespace="busy",pod="busy-0",model="m"}',
               "values": "0x9 1x30"},  # one failure at minute 10
              {"series": 'up{job="millibatch",namespace="busy",pod="busy-0"}', "values": "1x5 0x35"}]
    refusing = [expected("MillibatchRefusingCalls", {"namespace": "busy"},
                         "millibatch refuses 10% of calls (RESOURCE_EXHAUSTED)")]
    shedding = [expected("MillibatchShedding", {"namespace": "late"},
                         "millibatch drops 4% of calls after admitting them")]
    failing = [expected("MillibatchEngineFailures", {"namespace": "busy", "pod": "busy-0"},
                        "millibatch engine calls fail on busy-0")]
    down = [expected("MillibatchDown", {"job": "millibatch", "namespace": "busy", "pod": "busy-0"},
                     "Prometheus cannot scrape millibatch on busy-0")]
    cases = [("MillibatchRefusingCalls", "8m", []), ("MillibatchRefusingCalls", "20m", refusing),
             ("MillibatchShedding", "8m", []), ("MillibatchShedding", "20m", shedding),
             ("MillibatchEngineFailures", "10m", []), ("MillibatchEngineFailures", "12m", failing),
             ("MillibatchEngineFailures", "17m", []),  # five minutes without a new failure
             ("MillibatchDown", "9m", []), ("MillibatchDown", "12m", down)]
    test = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series,
                       "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": alerts}
                                           for name, at, alerts in cases]}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {name for name, _, _ in cases} == set(rules())
