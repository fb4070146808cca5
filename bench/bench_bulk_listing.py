"""A 1,000,000-object S3 prefix turned into a batch: the listing alone vs the whole submission.

    python bench/bench_bulk_listing.py [--objects 1000000]

The prefix is served by a stub S3 endpoint with real ``ListObjectsV2`` paging (XML pages of
1,000 keys and continuation tokens, generated on the fly: uploading a million objects to the
local S3 server would take longer than the benchmark), run in its own process so its CPU is not
the API's. Measured side by side in one run:

A. the listing alone: ``storage.listing.list_objects`` over the prefix in this process (boto3
   paging and the glob filter), items/s;
B. ``POST /v1/batches`` with ``{"source": {"url": "s3://…/photos/**/*.jpg"}}`` against the real
   API process (uvicorn, PostgreSQL, Redis): listing, validation of every item, COPY into
   PostgreSQL, until the 202 answer; items/s and the API process's peak RSS (VmHWM).

Prints B's rate, A's rate, the ratio B/A, and B's peak RSS. Targets: B ≥ 5,000 items/s, < 500 MB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_api import Api, _free_port, rss_kb  # noqa: E402
from tests.support import services  # noqa: E402

BUCKET = "bench-listing"
PAGE = 1000


def listing_page(prefix: str, start: int, total: int, max_keys: int, encoded: bool = False) -> bytes:
    """One ListObjectsV2 answer: keys ``photos/0000/0000000.jpg`` … from ``start`` (their
    characters need no %-encoding, so an EncodingType=url answer only says so)."""
    end = min(total, start + max_keys)
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n'
             '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
             f"<Name>{BUCKET}</Name><Prefix>{prefix}</Prefix><KeyCount>{end - start}</KeyCount>"
             f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{'true' if end < total else 'false'}</IsTruncated>"
             + ("<EncodingType>url</EncodingType>" if encoded else "")]
    for i in range(start, end):
        parts.append(f"<Contents><Key>photos/{i // 1000:04d}/{i:07d}.jpg</Key>"
                     "<LastModified>2026-12-04T00:00:00.000Z</LastModified>"
                     f'<ETag>"{i:032x}"</ETag><Size>{50_000 + i % 1000}</Size>'
                     "<StorageClass>STANDARD</StorageClass></Contents>")
    if end < total:
        parts.append(f"<NextContinuationToken>{end}</NextContinuationToken>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def serve_stub(port: int, total: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            q = parse_qs(urlparse(self.path).query)
            if q.get("list-type") != ["2"]:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(q.get("continuation-token", ["0"])[0])
            body = listing_page(q.get("prefix", [""])[0], start, total, int(q.get("max-keys", [PAGE])[0]),
                                encoded=q.get("encoding-type") == ["url"])
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def bench_listing_alone(endpoint: str, total: int) -> dict[str, Any]:
    from storage.config import StorageConfig
    from storage.listing import GlobFilter, list_objects

    config = StorageConfig(s3_endpoint_url=endpoint, s3_region="us-east-1", s3_access_key_id="bench",
                           s3_secret_access_key="bench")
    t0 = time.monotonic()
    n = sum(1 for _ in list_objects(f"s3://{BUCKET}/photos/", config, GlobFilter(["**/*.jpg"])))
    took = time.monotonic() - t0
    assert n == total, n
    return {"items": n, "seconds": round(took, 2), "items_per_s": round(n / took)}


def bench_submission(api: Api, key: str, total: int) -> dict[str, Any]:
    body = {"source": {"url": f"s3://{BUCKET}/photos/**/*.jpg"}, "defaults": {"prompts": ["Caption."]}}
    before = rss_kb(api.proc.pid, "VmHWM")
    t0 = time.monotonic()
    resp = httpx.post(api.base + "/v1/batches", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=3600)
    took = time.monotonic() - t0
    assert resp.status_code == 202, resp.text[:500]
    assert resp.json()["counts"]["total"] == total, resp.json()["counts"]
    return {"items": total, "seconds": round(took, 2), "items_per_s": round(total / took),
            "api_peak_rss_before_mb": round(before / 1024),
            "api_peak_rss_mb": round(rss_kb(api.proc.pid, "VmHWM") / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=1_000_000)
    args = ap.parse_args()

    from core.migrate import upgrade
    from core.settings import Settings
    from tests.api.helpers import new_tenant

    port = _free_port()
    stub = multiprocessing.Process(target=serve_stub, args=(port, args.objects), daemon=True)
    stub.start()
    endpoint = f"http://127.0.0.1:{port}"
    services.ensure_services()
    db = services.create_database()
    redis_url = services.redis_url()  # a database of its own (leased), emptied
    env = {"CAPTIONQ_DATABASE_URL": db.url, "CAPTIONQ_BROKER_URL": redis_url, "CAPTIONQ_LOG_LEVEL": "WARNING",
           "CAPTIONQ_S3_ENDPOINT_URL": endpoint, "CAPTIONQ_S3_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "CAPTIONQ_DISPATCH_WINDOW": "10000"}
    settings = Settings(database_url=db.url, broker_url=redis_url)
    upgrade(settings)
    key = new_tenant(settings, "bench-listing")
    time.sleep(0.5)
    api = Api(env)
    try:
        alone = bench_listing_alone(endpoint, args.objects)
        print(json.dumps({"listing_alone": alone}), flush=True)
        sub = bench_submission(api, key.api_key, args.objects)
        print(json.dumps({"batch_from_prefix": sub}), flush=True)
        ratio = sub["items_per_s"] / alone["items_per_s"]
        print(f"batch from a {args.objects:,}-object prefix: {sub['items_per_s']:,} items/s "
              f"(listing alone {alone['items_per_s']:,} items/s, ratio {ratio:.2f}x), "
              f"API peak RSS {sub['api_peak_rss_mb']} MB; targets >= 5,000 items/s, < 500 MB")
    finally:
        api.stop()
        stub.terminate()
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        services.drop_database(db)
        os.environ.pop("AWS_ACCESS_KEY_ID", None)


if __name__ == "__main__":
    main()
