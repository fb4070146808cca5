"""Writing a bulk batch's outputs for 100,000 results: Parquet + sidecars vs the v1 results.jsonl.

    python bench/bench_bulk_outputs.py [--results 100000] [--target file|s3]

A batch of N succeeded jobs (a caption of ~200 characters, metadata, token counts) is COPYed
straight into a fresh PostgreSQL database; then, side by side in one run, to a local folder
(``file://``, the default) or the S3 server:

A. v1: ``results.jsonl`` streamed from the database (what ``finalize_batch`` writes without
   output formats);
B. ``worker.export.export_parts`` with formats ``parquet`` and ``sidecar``: every part of 1,000
   items read from the database, its Parquet file, its errors part and one ``<name>.txt``
   sidecar per item, i.e. N + N/500 objects;
C. (local folder only) the file system's floor for B's file count: N files of the same size
   created with plain open/write/close on 16 threads (no rename, no sync, no database).

Prints the times and the ratios B/A and B/C. Target: B < 60 s for 100,000 results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402

COLUMNS = ("id", "tenant_id", "batch_id", "seq", "custom_id", "status", "priority", "request", "output",
           "metrics", "metadata", "attempts", "cancel_requested", "created_at", "finished_at")


def seed(db: Any, tenant_id: str, batch_id: str, n: int, output_url: str) -> None:
    import sqlalchemy as sa

    from jobs import ids
    from jobs.tables import Batch

    now = datetime.now(UTC)
    request = json.dumps({"media": [{"type": "image", "url": "s3://b/x.jpg"}], "prompts": ["Describe."]})
    with db.session() as session:
        session.add(Batch(id=batch_id, tenant_id=tenant_id, status="running", total=n, queued=0, running=0,
                          succeeded=n, failed=0, canceled=0, output_url=output_url, meta={}, created_at=now,
                          output_formats=["parquet", "sidecar"], part_rows=1000, parts_done=0))
        session.flush()
        raw = session.connection().connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY jobs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for i in range(n):
                text = f"A photo number {i} of a red bicycle leaning against a stone wall, " * 3
                metrics = json.dumps({"input_tokens": 1800, "output_tokens": 48})
                copy.write_row((
                    ids.job_id(), tenant_id, batch_id, i, f"photos/{i // 1000:04d}/{i:07d}.jpg", "succeeded",
                    0, request, json.dumps({"text": text}), metrics, json.dumps({"row": i}), 1, False, now,
                    now))
        session.execute(sa.text("ANALYZE jobs"))


def raw_files(root: Path, n: int) -> float:
    """Seconds to create ``n`` files of a caption's size under ``root`` (1,000 a folder)."""
    from concurrent.futures import ThreadPoolExecutor

    body = b"A photo of a red bicycle leaning against a stone wall. " * 4

    def one(i: int) -> None:
        with open(root / f"{i // 1000:04d}" / f"{i:07d}.txt", "wb") as f:
            f.write(body)

    t0 = time.monotonic()
    for d in range(-(-n // 1000)):
        (root / f"{d:04d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=int, default=100_000)
    ap.add_argument("--target", choices=["file", "s3"], default="file")
    args = ap.parse_args()

    from core.db import Database
    from core.migrate import upgrade
    from core.settings import Settings
    from jobs.service import JobService
    from storage.config import StorageConfig
    from storage.objects import put_object
    from tests.api.helpers import new_tenant
    from worker.export import export_parts
    from worker.finalize import ndjson

    services.ensure_services()
    pgdb = services.create_database()
    tmp = Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    bucket = services.create_bucket() if args.target == "s3" else None
    if bucket is not None:
        os.environ.update(bucket.env())
        prefix = f"s3://{bucket.bucket}/out/"
    else:
        prefix = (tmp / "out").as_uri() + "/"
    settings = Settings(database_url=pgdb.url, local_mode=True, media_root=tmp,
                        s3_endpoint_url=bucket.endpoint_url if bucket else None,
                        s3_region=bucket.region if bucket else None)
    upgrade(settings)
    key = new_tenant(settings, "bench-outputs")
    db = Database(settings)
    storage = StorageConfig.from_settings(settings)
    try:
        t0 = time.monotonic()
        seed(db, key.tenant_id, "bat_bench", args.results, prefix)
        print(f"seeded {args.results:,} jobs in {time.monotonic() - t0:.1f} s", flush=True)
        service = JobService(db, settings)
        t0 = time.monotonic()
        put_object(prefix + "v1/results.jsonl", ndjson(service.iter_batch_results("bat_bench")),
                   "application/x-ndjson", storage)
        v1 = time.monotonic() - t0
        t0 = time.monotonic()
        parts = export_parts(db, storage, "bat_bench")
        bulk = time.monotonic() - t0
        assert parts == -(-args.results // 1000), parts
        floor = raw_files(tmp / "floor", args.results) if bucket is None else None
        out = {"results": args.results, "target": args.target, "v1_results_jsonl_s": round(v1, 2),
               "parquet_and_sidecars_s": round(bulk, 2), "parts": parts, "ratio": round(bulk / v1, 2),
               "raw_file_floor_s": round(floor, 2) if floor else None}
        print(json.dumps(out), flush=True)
        print(f"{args.results:,} results to {args.target}: Parquet + sidecars {bulk:.1f} s vs results.jsonl "
              f"{v1:.1f} s ({bulk / v1:.1f}x)"
              + (f"; plain creation of as many files {floor:.1f} s ({bulk / floor:.2f}x)" if floor else "")
              + "; target < 60 s")
    finally:
        db.dispose()
        services.drop_database(pgdb)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
