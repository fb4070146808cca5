"""The real services answer (tier 2 sanity check)."""

import sqlalchemy as sa


def test_postgres_redis_s3(pg_database, redis_url, s3_bucket):
    import redis

    engine = sa.create_engine(pg_database.url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar() == 1
    engine.dispose()
    assert redis.Redis.from_url(redis_url).ping()
    url = s3_bucket.put("smoke/hello.txt", b"hello")
    assert url.startswith("s3://")
    body = s3_bucket.client().get_object(Bucket=s3_bucket.bucket, Key="smoke/hello.txt")["Body"].read()
    assert body == b"hello"


def test_a_redis_database_a_left_over_worker_still_uses_is_not_leased(redis_url, monkeypatch):
    """A worker process outliving its test session keeps consuming the queues of its database
    after the lease ran out; a new session there would lose messages to it."""
    import redis

    from tests.support import services

    admin = redis.Redis(host=services.REDIS_HOST, port=services.REDIS_PORT, db=0)
    busy = {int(c["db"]) for c in admin.client_list()}
    free = [db for db in range(1, 16) if db not in busy and not admin.exists(f"captionq-test:db-lease:{db}")]
    if len(free) < 2:
        admin.close()
        import pytest

        pytest.skip("fewer than two free Redis test databases")
    orphan, other = free[0], free[1]
    squatter = redis.Redis(host=services.REDIS_HOST, port=services.REDIS_PORT, db=orphan)
    squatter.ping()  # connected, holding no lease: what a left-over worker looks like
    monkeypatch.setattr(services.random, "sample", lambda population, k: [orphan, other])
    leases_before = list(services._leases)
    try:
        url = services.redis_url()
        assert url.endswith(f"/{other}"), url
        assert not admin.exists(f"captionq-test:db-lease:{orphan}")
    finally:
        new = [lease for lease in services._leases if lease not in leases_before]
        for db, token in new:
            if admin.get(f"captionq-test:db-lease:{db}") == token.encode():
                admin.delete(f"captionq-test:db-lease:{db}")
            services._leases.remove((db, token))
        squatter.close()
        admin.close()
