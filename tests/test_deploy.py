"""docker-compose.yml is valid compose (checked against the compose-spec schema, no Docker
engine needed) and wires captionq's roles as the README describes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def test_compose_file_matches_the_compose_spec_schema():
    exe = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_roles():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"postgres", "redis", "s3", "migrate", "api", "worker-gpu-0", "worker-io"} <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("api", "worker-gpu-0", "worker-io"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    gpu = services["worker-gpu-0"]
    assert gpu["command"][:3] == ["worker", "--queues", "gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # Two models side by side: every registry model has a GPU worker of its own, on its own GPU.
    env = services["api"]["environment"]
    registry = Settings(models=json.loads(env["CAPTIONQ_MODELS"]),
                        default_model=env["CAPTIONQ_DEFAULT_MODEL"]).registry
    assert len(registry.names) == 2 and registry.default == "internvl2-2b"
    workers = {n: s for n, s in services.items() if n.startswith("worker-gpu-")}
    served = {s["command"][s["command"].index("--model") + 1]: s for s in workers.values()}
    assert set(served) == set(registry.names)
    gpus = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in workers.values()]
    assert sorted(map(tuple, gpus)) == [("0",), ("1",)]
    io = services["worker-io"]
    assert "io" in io["command"] and "--beat" in io["command"]
    beats = [n for n, s in services.items() if "--beat" in (s.get("command") or [])]
    assert beats == ["worker-io"], "exactly one scheduler per deployment"
    s3_config = ROOT / "deploy" / "seaweedfs-s3.json"
    assert s3_config.is_file()


def test_monitoring_profile_runs_prometheus_grafana_and_flower():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    monitoring = ("prometheus", "grafana", "flower")
    for name in monitoring:
        assert services[name]["profiles"] == ["monitoring"], name
    assert all("profiles" not in s for n, s in services.items() if n not in monitoring)
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in ("./deploy/prometheus.yml", "./deploy/grafana/provisioning", "./deploy/grafana/dashboards"):
        assert path in mounts and (ROOT / path).exists(), path


def test_workers_have_health_checks_on_their_own_probe():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    workers = [n for n, s in services.items() if (s.get("command") or [None])[0] == "worker"]
    assert len(workers) >= 3
    for name in (*workers, "api"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "captionq", "healthcheck"], name
    for name in workers:
        env = services[name]["environment"]
        assert env["CAPTIONQ_WORKER_HEALTH_PORT"] == "9101" and env["CAPTIONQ_WORKER_METRICS_PORT"] == "9100"
        assert env["CAPTIONQ_WORKER_PROBE_HOST"] == "0.0.0.0"
    assert "CAPTIONQ_WORKER_HEALTH_PORT" not in services["api"]["environment"]  # the API probes :8000
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'HEALTHCHECK' in dockerfile and '["captionq", "healthcheck"]' in dockerfile
    assert "127.0.0.1:8000/healthz" not in dockerfile  # not the API's port in every role


def test_prometheus_scrapes_the_api_and_every_worker_in_compose():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
               for job in config["scrape_configs"]}
    assert targets["captionq-api"] == ["api:8000"]
    workers = [n for n, s in services.items() if (s.get("command") or [None])[0] == "worker"]
    assert sorted(targets["captionq-workers"]) == sorted(f"{n}:9100" for n in workers)


def test_the_grafana_dashboard_uses_only_metrics_captionq_exports():
    import json
    import re

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "captionq.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    source = "".join((ROOT / p).read_text() for p in ("api/metrics.py", "worker/metrics.py"))
    names = {re.sub(r"_(total|bucket|count|sum)$", "", n)
             for e in exprs for n in re.findall(r"captionq_\w+", e)}

    def exported(name: str) -> bool:
        # worker/metrics.py names the engine's from BatcherStats fields: captionq_engine_<field>
        field = name.removeprefix("captionq_engine_")
        return f'"{name}"' in source or (field != name and f'"{field}"' in source)

    missing = [n for n in names if not exported(n)]
    assert not missing, missing
