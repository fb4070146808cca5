"""Real services for the tests: a fresh PostgreSQL database, a Redis database, an S3 bucket.

The servers themselves are started by ``scripts/services.sh`` (run by ``scripts/test.sh``); when
one is not reachable, :func:`ensure_services` runs that script once.
"""

from __future__ import annotations

import atexit
import os
import random
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get(
    "CAPTIONQ_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)
REDIS_HOST = os.environ.get("CAPTIONQ_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("CAPTIONQ_TEST_REDIS_PORT", "6379"))
S3_ENDPOINT = os.environ.get(
    "CAPTIONQ_TEST_S3_ENDPOINT", f"http://127.0.0.1:{os.environ.get('CAPTIONQ_TEST_S3_PORT', '18333')}"
)
S3_ACCESS_KEY = "captionq-test"
S3_SECRET_KEY = "captionq-test-secret"
S3_REGION = "us-east-1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


_ensured = False


def ensure_services() -> None:
    global _ensured
    if _ensured:
        return
    s3_port = int(S3_ENDPOINT.rsplit(":", 1)[1].rstrip("/"))
    if not (_reachable("127.0.0.1", 5432) and _reachable(REDIS_HOST, REDIS_PORT)
            and _reachable("127.0.0.1", s3_port)):
        subprocess.run(["bash", str(ROOT / "scripts" / "services.sh")], check=True)
    _ensured = True


@dataclass
class PostgresDB:
    url: str
    name: str


def create_database() -> PostgresDB:
    import sqlalchemy as sa

    ensure_services()
    name = f"captionq_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return PostgresDB(url=f"{base}/{name}", name=name)


def drop_database(db: PostgresDB) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'))
    admin.dispose()


def redis_url() -> str:
    """A Redis database of its own for this test session (1..15), claimed with a lease key in
    database 0 so that concurrent test sessions on one machine never share one, then emptied."""
    import redis

    ensure_services()
    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    forced = os.environ.get("CAPTIONQ_TEST_REDIS_DB")
    candidates = [int(forced)] if forced else random.sample(range(1, 16), 15)
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    for db in candidates:
        # A 2-hour lease is longer than any test session; a crashed session's claim expires.
        if forced:
            break
        if not admin.set(f"captionq-test:db-lease:{db}", token, nx=True, ex=7200):
            continue
        if not db_in_use(admin, db):
            break
        admin.delete(f"captionq-test:db-lease:{db}")
    else:
        raise RuntimeError("all Redis test databases 1..15 are leased by other test sessions")
    if not _leases:
        atexit.register(release_redis_leases)
    _leases.append((db, token))
    admin.close()
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    client.close()
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


_leases: list[tuple[int, str]] = []


def db_in_use(admin: Any, db: int) -> bool:
    """Whether a client is connected to Redis database ``db``: a worker process left running by a
    test session that ended (killed, timed out) keeps consuming its queues there after the
    session's lease is gone, and would take this session's messages (a webhook wake-up it
    cannot find in its own database is dropped without a trace)."""
    return any(int(c.get("db", -1)) == db for c in admin.client_list())


def release_redis_leases() -> None:
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    for db, token in _leases:
        key = f"captionq-test:db-lease:{db}"
        if admin.get(key) == token.encode():
            admin.delete(key)
    _leases.clear()
    admin.close()


@dataclass
class S3Bucket:
    endpoint_url: str
    bucket: str
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    region: str = S3_REGION

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
        )

    def put(self, key: str, data: bytes) -> str:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def env(self) -> dict[str, str]:
        """Environment a subprocess (worker, API) needs to reach this bucket."""
        return {
            "CAPTIONQ_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def create_bucket() -> S3Bucket:
    ensure_services()
    b = S3Bucket(endpoint_url=S3_ENDPOINT, bucket=f"captionq-test-{uuid.uuid4().hex[:10]}")
    b.client().create_bucket(Bucket=b.bucket)
    return b
