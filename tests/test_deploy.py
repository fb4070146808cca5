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
