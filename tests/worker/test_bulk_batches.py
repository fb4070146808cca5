"""Bulk batches end to end: every source kind through the real API and a real worker process
(PostgreSQL, Redis, the S3 server; ``file://`` sources with the local mode's media root), every
output format read back and matched against the jobs' results, retry, resume and the completion
window. Fixtures are built here: tiny PNGs, tar shards, a dataset saved with ``save_to_disk``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from PIL import Image

from core.db import Database
from jobs.batch_retry import EXPIRED_CODE, expire_windows
from jobs.queue import Publisher
from jobs.service import JobService
from jobs.tables import Tenant
from tests.worker.stack import ROOT, Stack, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

DEFAULTS = {"prompts": ["Describe the image."], "generation": {"max_new_tokens": 3}}
PART_ROWS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("bulk")
    # local_mode: file:// sources and outputs under the media root, with PostgreSQL, Redis and S3.
    st = build_stack(tmp, local_mode=True, media_root=tmp / "media", batch_part_rows=PART_ROWS)
    (tmp / "media").mkdir(exist_ok=True)
    try:
        st.start_worker(queues="gpu,io")
        yield st
    finally:
        destroy_stack(st)


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16 + i, 16), (40 * i % 255, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


def submit(stack: Stack, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    with stack.client() as c:
        r = c.post("/v1/batches", json=body)
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


def finished(stack: Stack, batch: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    done = stack.wait_batch(batch["id"], timeout=180)
    assert done["status"] == status, (done, stack.logs())
    return done


def results(stack: Stack, batch_id: str) -> dict[str, dict[str, Any]]:
    with stack.client() as c:
        r = c.get(f"/v1/batches/{batch_id}/results")
    assert r.status_code == 200
    return {line["custom_id"]: line for line in map(json.loads, r.text.splitlines())}


class Out:
    """The files under an output prefix, on S3 or in a local folder."""

    def __init__(self, stack: Stack, url: str) -> None:
        self.stack, self.url = stack, url

    def read(self, name: str) -> bytes:
        if self.url.startswith("file://"):
            return (Path(self.url[7:]) / name).read_bytes()
        assert self.stack.bucket is not None
        bucket, _, prefix = self.url[5:].partition("/")
        obj = self.stack.bucket.client().get_object(Bucket=bucket, Key=prefix + name)
        return obj["Body"].read()  # type: ignore[no-any-return]

    def jsonl(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.read(name).decode().splitlines()]

    def parquet(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        parts = [f for p in manifest["parts"] for f in p["files"] if f.endswith(".parquet")]
        tables = [pq.read_table(io.BytesIO(self.read(f))) for f in parts]
        return pa.concat_tables(tables).to_pylist() if tables else []


def check_outputs(out: Out, batch: dict[str, Any], want: dict[str, dict[str, Any]],
                  formats: list[str], tasks: list[str] | None = None) -> None:
    """Each written format matches the jobs' results (GET /v1/batches/{id}/results)."""
    manifest = json.loads(out.read("manifest.json"))
    assert manifest["batch_id"] == batch["id"] and manifest["status"] == batch["status"]
    assert manifest["counts"]["total"] == len(want)
    errors = out.jsonl("errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == sorted(
        c for c, r in want.items() if r["status"] != "succeeded")
    if "jsonl" in formats:
        lines = out.jsonl("results.jsonl")
        assert {line["custom_id"]: line for line in lines} == want
        parts = [line for p in manifest["parts"] for line in out.jsonl(p["files"][0])]
        assert sorted(parts, key=lambda x: x["job_id"]) == sorted(lines, key=lambda x: x["job_id"])
    if "parquet" in formats:
        rows = out.parquet(manifest)
        assert len(rows) == len(want)
        for row in rows:
            res = want[row["custom_id"]]
            assert row["job_id"] == res["job_id"] and row["status"] == res["status"]
            if tasks:  # one column per task, each the task's answer
                for t in tasks:
                    assert row[t] == (res["output"] or {}).get("tasks", {}).get(t, {}).get("text"), (t, row)
                    assert res["status"] != "succeeded" or row[t]
            else:
                assert row["text"] == (res["output"] or {}).get("text")
            assert json.loads(row["metadata"]) == res["metadata"]
            assert row["error_code"] == (res["error"] or {}).get("code")
            if res["status"] == "succeeded":
                assert row["output_tokens"] >= 1 and row["input_tokens"] > row["output_tokens"]
    if "sidecar" in formats:
        for cid, res in want.items():
            if res["status"] != "succeeded":
                continue
            stem = cid.rsplit(".", 1)[0] if cid.endswith(".png") else cid
            if tasks:
                side = json.loads(out.read(f"sidecars/{stem}.json"))
                assert side["output"] == res["output"] and side["metadata"] == res["metadata"]
                assert side["tasks"] == {t: res["output"]["tasks"][t]["text"] for t in tasks}
            else:
                assert out.read(f"sidecars/{stem}.txt").decode() == res["output"]["text"]


def test_s3_prefix_with_globs_writes_every_format(stack: Stack) -> None:
    assert stack.bucket is not None
    for i, key in enumerate(("a/1.png", "b/2.png", "b/3.png", "skip/4.png", "a/readme.txt")):
        stack.bucket.put(f"photos/{key}", png(i))
    out_url = f"s3://{stack.bucket.bucket}/out-prefix/"
    formats = ["jsonl", "parquet", "sidecar"]
    source = {"url": f"s3://{stack.bucket.bucket}/photos/**/*.png", "exclude": ["skip/**"]}
    tasks = [{"name": "caption", "prompts": ["Describe the image."]},
             {"name": "tags", "prompts": ["List three tags."]}]
    batch = submit(stack, {"source": source, "tasks": tasks, "output_url": out_url, "output_formats": formats,
                           "defaults": {"generation": {"max_new_tokens": 3}}})
    assert batch["counts"]["total"] == 3 and batch["source"]["format"] == "files"
    done = finished(stack, batch)
    want = results(stack, batch["id"])
    assert set(want) == {"a/1.png", "b/2.png", "b/3.png"}
    assert all(r["status"] == "succeeded" and set(r["output"]["tasks"]) == {"caption", "tags"}
               for r in want.values()), want
    check_outputs(Out(stack, out_url), done, want, formats, ["caption", "tags"])
    assert len(json.loads(Out(stack, out_url).read("manifest.json"))["parts"]) == 2  # seq 1..3, 2 a part


def shard(samples: list[tuple[str, bytes, dict[str, Any] | None, str | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, img, meta, txt in samples:
            members = [(f"{key}.png", img)]
            members += [(f"{key}.json", json.dumps(meta).encode())] if meta is not None else []
            members += [(f"{key}.txt", txt.encode())] if txt is not None else []
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_webdataset_shards_on_s3_to_a_local_folder(stack: Stack) -> None:
    assert stack.bucket is not None
    stack.bucket.put("wds/shard-000000.tar", shard([("s0", png(1), {"label": "cat"}, "a cat"),
                                                    ("s1", png(2), None, None)]))
    stack.bucket.put("wds/shard-000001.tar", shard([("s2", png(3), {"label": "dog"}, None)]))
    out_dir = stack.settings.media_root / "wds-out"
    out_url = out_dir.resolve().as_uri() + "/"
    source = {"url": f"s3://{stack.bucket.bucket}/wds/shard-{{000000..000001}}.tar"}
    batch = submit(stack, {"source": source, "defaults": DEFAULTS, "output_url": out_url,
                           "output_formats": ["jsonl", "parquet"]})
    done = finished(stack, batch)
    want = results(stack, batch["id"])
    assert set(want) == {"shard-000000/s0", "shard-000000/s1", "shard-000001/s2"}
    assert all(r["status"] == "succeeded" for r in want.values()), want
    assert want["shard-000000/s0"]["metadata"] == {"json": {"label": "cat"}, "txt": "a cat"}
    assert want["shard-000001/s2"]["metadata"] == {"json": {"label": "dog"}}
    check_outputs(Out(stack, out_url), done, want, ["jsonl", "parquet"])


def test_folder_hf_dataset_and_parquet_sources(stack: Stack) -> None:
    datasets = pytest.importorskip("datasets")
    root = stack.settings.media_root.resolve()
    for i, rel in enumerate(("photos/x/1.png", "photos/2.png")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png(i))
    imgs = [Image.open(io.BytesIO(png(i))) for i in range(2)]
    ds = datasets.Dataset.from_dict({"image": imgs, "label": ["l0", "l1"]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("string")}))
    ds.save_to_disk(str(root / "hf"))
    (root / "pq").mkdir()
    (root / "pq" / "0.png").write_bytes(png(5))
    pq.write_table(pa.table({"path": ["0.png"], "uid": ["row-a"], "n": [7]}), root / "pq" / "t.parquet")
    sources = [
        ({"url": (root / "photos").as_uri() + "/"}, {"2.png", "x/1.png"}),
        ({"url": (root / "hf").as_uri(), "format": "hf_dataset"}, {"0", "1"}),
        ({"url": (root / "pq").as_uri() + "/*.parquet", "image_column": "path", "id_column": "uid"},
         {"row-a"}),
    ]
    submitted = []
    for i, (src, ids) in enumerate(sources):
        out_url = (root / f"local-out-{i}").as_uri() + "/"
        batch = submit(stack, {"source": src, "defaults": DEFAULTS, "output_url": out_url,
                               "output_formats": ["parquet", "sidecar"]})
        submitted.append((batch, ids, out_url))
    for batch, ids, out_url in submitted:
        done = finished(stack, batch)
        want = results(stack, batch["id"])
        assert set(want) == ids and all(r["status"] == "succeeded" for r in want.values()), want
        check_outputs(Out(stack, out_url), done, want, ["parquet", "sidecar"])
    hf = results(stack, submitted[1][0]["id"])
    assert hf["1"]["metadata"] == {"label": "l1"}
    assert results(stack, submitted[2][0]["id"])["row-a"]["metadata"] == {"uid": "row-a", "n": 7}


def test_retry_by_code_and_resume_from(stack: Stack) -> None:
    root = stack.settings.media_root.resolve()
    folder = root / "retry"
    folder.mkdir()
    (folder / "ok.png").write_bytes(png(1))
    (folder / "bad.png").write_bytes(b"not an image at all")
    out_url = (root / "retry-out").as_uri() + "/"
    body = {"source": {"url": folder.as_uri() + "/"}, "defaults": DEFAULTS, "output_url": out_url,
            "output_formats": ["jsonl", "parquet"]}
    first = submit(stack, body)
    finished(stack, first)
    want = results(stack, first["id"])
    assert want["ok.png"]["status"] == "succeeded"
    assert want["bad.png"]["error"]["code"] == "unsupported_media"
    assert [e["custom_id"] for e in Out(stack, out_url).jsonl("errors.jsonl")] == ["bad.png"]

    (folder / "bad.png").write_bytes(png(2))  # the caller fixes the item
    # resume: a new batch over the same source skips what succeeded
    resumed = submit(stack, {**body, "output_url": (root / "resume-out").as_uri() + "/",
                             "resume_from": first["id"]})
    assert resumed["counts"]["total"] == 1 and resumed["resume_from"] == first["id"]
    assert set(results(stack, resumed["id"])) == {"bad.png"}
    finished(stack, resumed)

    with stack.client() as c:
        none = c.post(f"/v1/batches/{first['id']}/retry", json={"error_codes": ["media_not_found"]})
        assert none.status_code == 202 and none.json()["retried"] == 0
        r = c.post(f"/v1/batches/{first['id']}/retry", json={"error_codes": ["unsupported_media"]})
        assert r.status_code == 202, r.text
        assert r.json()["retried"] == 1 and r.json()["status"] == "running"
        assert c.post("/v1/batches/bat_00000000000000000000000000/retry").status_code == 404
    done = finished(stack, first)
    want = results(stack, first["id"])
    assert all(r["status"] == "succeeded" for r in want.values()), want
    assert want["ok.png"]["job_id"] == results(stack, first["id"])["ok.png"]["job_id"]  # same jobs
    check_outputs(Out(stack, out_url), done, want, ["jsonl", "parquet"])  # parts written again
    db = Database(stack.settings)
    try:  # the retried job went back on the tenant's jobs in flight and off again when it ended
        with db.session() as s:
            assert s.scalar(sa.select(Tenant.jobs_in_flight).where(Tenant.id == stack.tenant_id)) == 0
    finally:
        db.dispose()


def test_completion_window_expires_with_partial_results_then_retry(stack: Stack) -> None:
    assert stack.bucket is not None
    for i in range(4):
        stack.bucket.put(f"window/{i}.png", png(i))
    out_url = f"s3://{stack.bucket.bucket}/window-out/"
    batch = submit(stack, {"source": {"url": f"s3://{stack.bucket.bucket}/window/"}, "defaults": DEFAULTS,
                           "output_url": out_url, "output_formats": ["jsonl", "parquet"],
                           "completion_window": "1h"})
    assert batch["expires_at"] is not None
    # The sweeper's step, at a time past the window (the worker may have started some jobs).
    db = Database(stack.settings)
    try:
        # with a publisher, as the sweeper has: the finalize message of a batch it ends goes out
        service = JobService(db, stack.settings, Publisher.from_settings(stack.settings))
        expire_windows(service, now=datetime.now(UTC) + timedelta(hours=2))
    finally:
        db.dispose()
    done = finished(stack, batch, "expired")
    want = results(stack, batch["id"])
    assert done["expired_at"] is not None and len(want) == 4
    for r in want.values():  # every job either ran or failed with batch_expired: partial results
        assert r["status"] == "succeeded" or r["error"]["code"] == EXPIRED_CODE, r
    check_outputs(Out(stack, out_url), done, want, ["jsonl", "parquet"])
    expired = sum(r["status"] == "failed" for r in want.values())
    with stack.client() as c:
        r = c.post(f"/v1/batches/{batch['id']}/retry", json={"error_codes": [EXPIRED_CODE]})
    assert r.status_code == 202 and r.json()["retried"] == expired
    if expired:
        done = finished(stack, batch)
        assert done["counts"]["succeeded"] == 4 and done["expired_at"] is None


def test_cli_batch_create_and_download(stack: Stack, tmp_path: Path) -> None:
    root = stack.settings.media_root.resolve()
    (root / "cli").mkdir()
    for i in range(2):
        (root / "cli" / f"{i}.png").write_bytes(png(i))
    env = {**stack.worker_env(), "CAPTIONQ_API_URL": stack.server.base_url, "CAPTIONQ_API_KEY": stack.api_key}
    out = root / "cli-out"
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "batch", "create", str(root / "cli") + "/",
         "--task", "caption=Describe.", "--task", "tags=Tags?", "--max-new-tokens", "3",
         "--output", str(out), "--format", "jsonl,parquet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    batch = json.loads(run.stdout[run.stdout.index("{"):])
    assert batch["status"] == "completed" and batch["counts"]["succeeded"] == 2
    dest = tmp_path / "dl"
    run = subprocess.run([sys.executable, "-m", "cli.main", "batch", "download", batch["id"], str(dest)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    check_outputs(Out(stack, dest.as_uri() + "/"), batch, results(stack, batch["id"]), ["jsonl", "parquet"],
                  ["caption", "tags"])
