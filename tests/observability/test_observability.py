"""Observability end to end, on one real stack (PostgreSQL, Redis, S3, the API in a thread of
this process and one ``captionq worker --queues gpu,io`` process on the tiny checkpoint):

- a job's trace: the API's request span (continuing the client's ``traceparent``), ``broker
  wait``, the worker's ``captionq.job`` with ``prepare``, ``engine`` and ``record``, and the
  webhook's delivery, one trace id
  (OpenTelemetry's in-memory exporter here, and in the worker's process via
  tests/observability/traced_worker.py);
- the worker's ``/metrics`` (its jobs, the engine's batches, stage histograms, webhook attempts)
  and ``/healthz``; ``captionq healthcheck`` and ``captionq status``;
- JSON logs that bind the job's ids on every line of its path, and never show the API key, the
  webhook signing secret or a token in a webhook URL (the delivery logs the URL);
- ``captionq serve --workers 2``: every scrape of ``/metrics`` counts every request once.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from cli.main import app as cli_app
from core import tracing
from core.db import Database
from core.logcontext import ContextFilter
from core.logging import JsonFormatter
from jobs.tables import Tenant
from tests.api import helpers
from tests.webhooks.receiver import Receiver
from tests.worker.stack import ROOT, Stack, Worker, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

KIT = ROOT / "tests" / "data" / "conformance"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
HOOK_TOKEN = "hook-token-8812"


@dataclass
class Side:
    """A process started beside the worker (its start overlaps the worker's model load)."""

    proc: subprocess.Popen[bytes]
    log: Path
    base: str
    probe: str  # a path that answers 200 once it is up

    def wait_up(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.base}{self.probe}", timeout=1).status_code == 200:
                    return self.base
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.proc.args} did not come up:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _side(args: list[str], env: dict[str, str], log: Path, port: int, probe: str) -> Side:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Side(proc, log, f"http://127.0.0.1:{port}", probe)


@dataclass
class Obs:
    stack: Stack
    worker: Worker
    spans_file: Path
    metrics_url: str
    health_url: str
    health_port: int
    api_spans: InMemorySpanExporter
    api_log: io.StringIO
    receiver: Receiver
    webhook_secret: str
    image_url: str
    serve: Side  # captionq serve --workers 2
    metrics_dir: Path  # its PROMETHEUS_MULTIPROC_DIR
    flower: Side  # celery -A worker.cli_app flower

    def worker_spans(self) -> list[dict[str, Any]]:
        if not self.spans_file.exists():
            return []
        return [json.loads(line) for line in self.spans_file.read_text().splitlines() if line.strip()]

    def worker_metrics(self) -> str:
        return httpx.get(self.metrics_url, timeout=10).text


@pytest.fixture(scope="module")
def obs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Obs]:
    tmp = tmp_path_factory.mktemp("observability")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)  # the API of this process records its spans here
    api_log = io.StringIO()
    handler = logging.StreamHandler(api_log)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    stack = build_stack(tmp)
    receiver = Receiver(secrets=[]).start()
    sides: list[Side] = []
    try:
        db = Database(stack.settings)
        with db.session() as session:
            secret = session.scalar(sa.select(Tenant.webhook_secret).where(Tenant.id == stack.tenant_id))
        db.dispose()
        assert secret
        receiver.secrets.append(secret)
        metrics_port, health_port = helpers.free_port(), helpers.free_port()
        spans_file = tmp / "worker-spans.jsonl"
        log = tmp / "worker-traced.log"
        env = stack.worker_env(log_json=True, worker_metrics_port=metrics_port,
                               worker_health_port=health_port)
        env["CAPTIONQ_TEST_SPANS"] = str(spans_file)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.observability.traced_worker", "worker", "--queues", "gpu,io"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(proc, log)
        stack.workers.append(worker)
        metrics_dir = tmp / "prometheus"
        serve_port, flower_port = helpers.free_port(), helpers.free_port()
        serve_env = {**stack.worker_env(), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        flower_env = {**stack.worker_env(), "FLOWER_UNAUTHENTICATED_API": "true"}
        sides.append(_side(["cli.main", "serve", "--host", "127.0.0.1", "--port", str(serve_port),
                            "--workers", "2"], serve_env, tmp / "serve.log", serve_port, "/healthz"))
        sides.append(_side(["celery", "-A", "worker.cli_app", "flower", f"--port={flower_port}",
                            "--address=127.0.0.1"], flower_env, tmp / "flower.log", flower_port,
                           "/healthcheck"))
        stack.wait_ready(worker)
        for side in sides:
            side.wait_up()
        image_url = stack.put_file(KIT / "images" / "img04_448x448.png")
        yield Obs(stack, worker, spans_file, f"http://127.0.0.1:{metrics_port}/metrics",
                  f"http://127.0.0.1:{health_port}/healthz", health_port, exporter, api_log, receiver,
                  secret, image_url, sides[0], metrics_dir, sides[1])
    finally:
        for p in [*(s.proc for s in sides), *(w.proc for w in stack.workers)]:  # all stop at once
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for side in sides:
            side.stop()
        receiver.stop()
        destroy_stack(stack)
        tracing.use_provider(None)
        root.removeHandler(handler)
        root.setLevel(old_level)


def _job_body(obs: Obs, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"media": [{"type": "image", "url": obs.image_url, "max_tiles": 1}], "prompts": [prompt],
            "generation": {"max_new_tokens": 4, "do_sample": False}, **extra}


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "{}")[1:-1].split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


@pytest.fixture(scope="module")
def traced_job(obs: Obs) -> dict[str, Any]:
    """One job submitted with a client traceparent and a webhook whose URL carries a token;
    returns it finished, once its webhook was delivered."""
    hook = f"{obs.receiver.url}?token={HOOK_TOKEN}"  # credentials in the URL itself are refused
    with obs.stack.client() as c:
        r = c.post("/v1/jobs", json=_job_body(obs, "Describe the image.", webhook={"url": hook}),
                   headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert r.status_code == 202, r.text
    job = obs.stack.wait(r.json()["id"], 120)
    assert job["status"] == "succeeded", (job, obs.stack.logs())
    assert obs.receiver.wait_for(lambda rc: any(x.payload["data"]["id"] == job["id"] for x in rc.accepted()),
                                 60), obs.stack.logs()
    return job


def test_a_jobs_trace_runs_from_the_api_through_the_broker_to_the_workers_stages(
        obs: Obs, traced_job: dict[str, Any]) -> None:
    api = [s for s in obs.api_spans.get_finished_spans() if s.name == "POST /v1/jobs"
           and format(s.context.trace_id, "032x") == CLIENT_TRACE]
    assert len(api) == 1, [s.name for s in obs.api_spans.get_finished_spans()]
    post: ReadableSpan = api[0]
    assert post.parent is not None and format(post.parent.span_id, "016x") == CLIENT_SPAN
    assert post.attributes is not None and post.attributes["http.route"] == "/v1/jobs"
    post_id = format(post.context.span_id, "016x")

    deadline = time.monotonic() + 20  # the worker's file is rewritten every 0.2 s
    while True:
        spans = [s for s in obs.worker_spans() if s["trace_id"] == CLIENT_TRACE]
        if {"record", "webhook"} <= {s["name"] for s in spans} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    assert {"broker wait", "captionq.job", "prepare", "engine", "record", "webhook"} <= set(by_name), spans
    job_span = by_name["captionq.job"][0]
    assert job_span["attributes"]["captionq.job_id"] == traced_job["id"]
    assert job_span["parent_id"] == post_id  # the worker continues the API's span
    assert by_name["broker wait"][0]["parent_id"] == post_id
    for stage in ("prepare", "engine", "record"):
        assert all(s["parent_id"] == job_span["span_id"] for s in by_name[stage]), by_name[stage]
    # in order: waited, prepared, ran, recorded
    wait, prep, eng, rec = (by_name[n][0] for n in ("broker wait", "prepare", "engine", "record"))
    assert wait["end"] <= job_span["start"] + 50_000_000  # clocks of one host; 50 ms of rounding
    assert prep["end"] <= eng["start"] <= eng["end"] <= rec["start"]
    assert eng["attributes"]["gen_ai.usage.output_tokens"] == traced_job["metrics"]["output_tokens"]
    # and back: the job's webhook, delivered in the same trace after the record
    hook = next(s for s in by_name["webhook"] if s["attributes"]["captionq.event"] == "job.succeeded")
    assert hook["parent_id"] == post_id and hook["start"] >= rec["end"]
    assert hook["attributes"]["http.response.status_code"] == 200


def test_a_workers_metrics_show_its_jobs_batches_and_webhooks(obs: Obs, traced_job: dict[str, Any]) -> None:
    before = obs.worker_metrics()
    with obs.stack.client() as c:
        ids = [c.post("/v1/jobs", json=_job_body(obs, f"Question {i}?")).json()["id"] for i in range(3)]
    for job_id in ids:
        assert obs.stack.wait(job_id, 120)["status"] == "succeeded", obs.stack.logs()
    after = obs.worker_metrics()

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("captionq_worker_jobs_started_total") == 3
    assert delta("captionq_worker_jobs_finished_total", outcome="succeeded") == 3
    assert delta("captionq_engine_requests_total") == 3
    assert 1 <= delta("captionq_engine_batches_total") <= 3
    assert delta("captionq_engine_tokens_generated_total") > 0
    assert delta("captionq_engine_decode_steps_total") > 0
    assert delta("captionq_worker_prepare_seconds_count") == 3
    assert delta("captionq_worker_engine_seconds_count") == 3
    assert _metric(after, "captionq_engine_slots") > 0
    assert _metric(after, "captionq_engine_kv_budget_tokens") > 0
    assert _metric(after, "captionq_webhook_attempts_total", outcome="delivered") >= 1
    assert "captionq_worker_info{" in after and "process_resident_memory_bytes" in after


def test_the_worker_health_probe_and_captionq_healthcheck(obs: Obs) -> None:
    r = httpx.get(obs.health_url, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    assert "io" in body["queues"] and any(q.startswith("gpu.") for q in body["queues"])
    runner = CliRunner()
    ok = runner.invoke(cli_app, ["healthcheck"], env={"CAPTIONQ_WORKER_HEALTH_PORT": str(obs.health_port)})
    assert ok.exit_code == 0, ok.output
    down = runner.invoke(cli_app, ["healthcheck", "--timeout", "2"],
                         env={"CAPTIONQ_WORKER_HEALTH_PORT": str(helpers.free_port())})
    assert down.exit_code == 1 and "unhealthy" in down.output


def test_captionq_status_prints_the_fleet_and_the_queues(obs: Obs) -> None:
    result = CliRunner().invoke(cli_app, ["status", "--api-url", obs.stack.server.base_url,
                                          "--api-key", obs.stack.api_key])
    assert result.exit_code == 0, result.output
    with obs.stack.client() as c:
        worker_id = c.get("/v1/workers").json()["data"][0]["id"]
        queues = c.get("/v1/queues").json()
    assert worker_id in result.output and "1 live worker(s)" in result.output
    gpu = next(q for q in queues["data"] if q["model"])
    assert [q["name"] for q in queues["data"]] == [gpu["name"], "io"] and gpu["name"] == f"gpu.{gpu['model']}"
    # every queue is a row, with the broker's count (Redis can say)
    assert re.search(rf"^{re.escape(gpu['name'])}\s+\d+\s+\d+\s+\S+$", result.output, re.M), result.output
    assert re.search(r"^io\s+\d+\s+\d+\s+\S+$", result.output, re.M), result.output


def test_logs_bind_the_jobs_ids_and_never_show_secrets(obs: Obs, traced_job: dict[str, Any]) -> None:
    job_id = traced_job["id"]
    worker_lines = [json.loads(line) for line in obs.worker.text().splitlines() if line.startswith("{")]
    about_job = [r for r in worker_lines if job_id in r["message"] or r.get("job_id") == job_id]
    assert about_job, obs.worker.text()[-3000:]
    for record in about_job:  # every line of its path carries the ids, not only in the text
        assert record.get("job_id") == job_id, record
        assert str(record.get("worker", "")).count(":") >= 2, record  # the id GET /v1/workers shows
        assert record.get("trace_id") in (None, CLIENT_TRACE), record
        if not record["logger"].startswith("celery"):  # Celery's own lines know the task id only
            assert record.get("tenant_id") == obs.stack.tenant_id, record
    assert any(r["logger"].startswith("celery") for r in about_job)  # "Task …[job_…] received"
    assert any(r.get("trace_id") == CLIENT_TRACE for r in about_job)
    webhook_lines = [r for r in about_job if r["logger"].startswith("worker.webhooks")]
    assert webhook_lines, "the delivery logs its attempt (with the URL)"
    api_lines = [json.loads(line) for line in obs.api_log.getvalue().splitlines() if line.startswith("{")]
    api_job = [r for r in api_lines if r.get("job_id") == job_id]
    assert all(r.get("tenant_id") == obs.stack.tenant_id for r in api_job)

    everything = obs.worker.text() + obs.api_log.getvalue()
    key_secret = obs.stack.api_key.rsplit("_", 1)[1]
    for secret in (key_secret, obs.webhook_secret, obs.webhook_secret.removeprefix("whsec_"), HOOK_TOKEN):
        assert secret not in everything, f"a secret reached the logs: {secret[:6]}…"
    assert any("***" in r["message"] for r in webhook_lines), webhook_lines  # the URL was there, masked


# --- captionq serve --workers 2 -----------------------------------------------------------------
def test_serve_with_two_processes_counts_every_request_once(obs: Obs) -> None:
    base, metrics_dir = obs.serve.base, obs.metrics_dir

    def serving_pids() -> set[str]:
        return {m.group(1) for f in metrics_dir.glob("*.db") if (m := re.search(r"_(\d+)\.db$", f.name))}

    def burst(n: int) -> None:
        for _ in range(n):  # a new connection each: either process may accept it
            with httpx.Client() as c:
                assert c.get(f"{base}/healthz").status_code == 200

    sent = 1  # the probe that saw it up
    while (len(serving_pids()) < 2 and sent < 400) or sent < 40:
        threads = [threading.Thread(target=burst, args=(5,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent += 20
    assert len(serving_pids()) == 2, "both processes should have served requests"
    for _ in range(4):  # whichever process answers, it counts the other's requests too
        with httpx.Client() as c:
            text = c.get(f"{base}/metrics").text
        assert _metric(text, "captionq_http_requests_total", method="GET", route="/healthz",
                       status="200") == sent, text[:2000]
    assert 'captionq_queue_oldest_age_seconds{queue="gpu.' in text
    assert "captionq_jobs{" in text and "captionq_webhook_messages_pending" in text


def test_flower_started_by_an_operator_shows_the_workers_tasks(obs: Obs) -> None:
    """README's command: ``celery -A worker.cli_app flower``; the worker sends task events
    (CAPTIONQ_TASK_EVENTS, io by default: this worker consumes io)."""
    time.sleep(1.0)  # Flower's event consumer subscribes a moment after its web server is up
    job = obs.stack.submit(_job_body(obs, "Seen by Flower?"))
    assert obs.stack.wait(job["id"], 120)["status"] == "succeeded"
    deadline = time.monotonic() + 20
    while True:
        tasks = httpx.get(f"{obs.flower.base}/api/tasks", timeout=5).json()
        if tasks.get(job["id"], {}).get("state") == "SUCCESS" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    state = tasks.get(job["id"], {}).get("state")
    assert state == "SUCCESS", (tasks, obs.flower.log.read_text(errors="replace")[-2000:])
    assert tasks[job["id"]]["name"] == "captionq.caption_job"
