"""Kubernetes manifests: render with kustomize, validate against the API schemas, lint and policy-check.

ServiceMonitor and PrometheusRule (Prometheus Operator) and InferenceService (KServe) are custom resources:
the Kubernetes schemas that kubernetes-validate ships do not include them, so it warns and passes them;
their structure is checked here by hand instead (the alerts' logic: test_alert_rules.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
VARIANTS = {"base": KUBE / "base", "gpu": KUBE / "overlays" / "gpu"}
BIN = Path(sys.executable).parent
#: checkov pins old packaging/networkx, so it lives in its own venv (`make tools`), else on PATH.
CHECKOV = ROOT / "build" / "tools" / "checkov" / "bin" / "checkov"


def tool(name: str) -> str:
    """A CLI from this venv, else from PATH; skips when neither has it."""
    found = (BIN / name) if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (pip install -e '.[dev]')")
    return str(found)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(VARIANTS[request.param])], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    path = tmp_path_factory.mktemp(request.param) / "rendered.yaml"
    path.write_text(out)
    return request.param, path


def documents(path: Path) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(path.read_text()) if d}


def test_schemas_strict(rendered: tuple[str, Path]) -> None:
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", str(rendered[1])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Only the custom resources may go unchecked.
    unchecked = [line for line in result.stdout.splitlines() if "Couldn't find schema" in line]
    assert all("ServiceMonitor" in line or "PrometheusRule" in line for line in unchecked), unchecked


def test_checkov_policies(rendered: tuple[str, Path]) -> None:
    checkov = str(CHECKOV) if CHECKOV.exists() else shutil.which("checkov")
    if checkov is None:
        pytest.skip("checkov not installed (make tools)")
    # Skips are annotations on the Deployment (checkov.io/skipN), each with its reason.
    result = subprocess.run(
        [checkov, "-f", str(rendered[1]), "--framework", "kubernetes", "--quiet", "--compact", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 0
    assert report["summary"]["passed"] > 50


def test_yamllint() -> None:
    result = subprocess.run([tool("yamllint"), "-s", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_deployment_is_probed_drained_and_locked_down(rendered: tuple[str, Path]) -> None:
    variant, path = rendered
    docs = documents(path)
    deployment = docs["Deployment/millibatch"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["startupProbe"]["grpc"]["port"] == 50051
    assert container["readinessProbe"]["grpc"]["service"] == "millibatch.v1.Inference"
    assert container["livenessProbe"]["grpc"]["service"].startswith("millibatch.v1.Inference/")
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(env["MILLIBATCH_DRAIN_SECONDS"]) + 5
    assert float(env["MILLIBATCH_MAX_CONNECTION_AGE_SECONDS"]) > 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["topologySpreadConstraints"]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == (variant == "gpu")
    if variant == "gpu":
        assert env["MILLIBATCH_DEVICE"] == "cuda"
        assert container["image"].endswith(":gpu")
    assert docs["Service/millibatch-headless"]["spec"]["clusterIP"] == "None"
    assert docs["PodDisruptionBudget/millibatch"]["spec"]["maxUnavailable"] == 1
    hpa_metrics = {m["pods"]["metric"]["name"] for m in docs["HorizontalPodAutoscaler/millibatch"]["spec"]["metrics"]}
    adapter = yaml.safe_load((KUBE / "prometheus-adapter" / "rules.yaml").read_text())
    assert hpa_metrics <= {r["name"]["as"] for r in adapter["rules"]["custom"]}
    monitor = docs["ServiceMonitor/millibatch"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    rule = docs["PrometheusRule/millibatch"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "millibatch"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) >= {"MillibatchRefusingCalls", "MillibatchShedding", "MillibatchEngineFailures",
                           "MillibatchDown"}
    assert all(r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
               for r in alerts.values())
    service_ports = {p["name"] for p in docs["Service/millibatch"]["spec"]["ports"]}
    assert service_ports == {"grpc", "http", "metrics"}


def test_dashboard_and_kserve_example_are_well_formed(rendered: tuple[str, Path]) -> None:
    dashboard = json.loads(documents(rendered[1])["ConfigMap/millibatch-dashboard"]["data"]["millibatch.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in ("millibatch_requests_total", "millibatch_request_duration_seconds_bucket",
                 "millibatch_queue_rows", "millibatch_in_flight_rows", "millibatch_batch_rows"):
        assert name in exprs
    service = yaml.safe_load((KUBE / "kserve" / "inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["ports"][0] == {"name": "h2c", "containerPort": 50051, "protocol": "TCP"}


def test_dashboard_metrics_exist_in_the_server() -> None:
    """Every metric the dashboard, the HPA and the alerts use is one the server defines."""
    from millibatch.service.metrics import Metrics

    families = list(Metrics(batchers=lambda: []).registry.collect())
    names = {f"{f.name}{suffix}" for f in families for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    names |= {"millibatch_gpu_utilization_ratio", "millibatch_gpu_memory_used_bytes",
              "millibatch_gpu_memory_total_bytes"}  # only collected where NVML finds a GPU
    text = "".join((KUBE / path).read_text() for path in ("base/dashboard.json", "base/prometheusrule.yaml",
                                                          "prometheus-adapter/rules.yaml"))
    adapters = {"millibatch_queue_seconds_p90", "millibatch_refused_ratio"}  # names the adapter gives
    used = set(re.findall(r"millibatch_[a-z0-9_]+", text)) - adapters
    assert used <= names, used - names


def test_dockerfile_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
