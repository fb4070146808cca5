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
