"""S3 against the real SeaweedFS gateway (signatures checked), with a TCP fault proxy in front
of it for the transient paths (503 SlowDown, connections cut mid-body)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import uuid
from collections.abc import Iterator

import pytest

from storage import (
    InvalidManifest,
    MediaNotFound,
    MediaTooLarge,
    StorageCredentialsMissing,
    TransientError,
    UnsupportedMedia,
    UrlNotAllowed,
    iter_lines,
    open_media,
    put_object,
)
from tests.storage.conftest import s3_config
from tests.storage.servers import FaultProxy

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def proxy(s3_bucket) -> Iterator[FaultProxy]:  # type: ignore[no-untyped-def]
    host, port = s3_bucket.endpoint_url.removeprefix("http://").rsplit(":", 1)
    p = FaultProxy((host, int(port)))
    yield p
    p.close()


@pytest.fixture(scope="module", autouse=True)
def _cleanup(s3_bucket) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The bucket lives for the whole session: remove this module's objects (tens of MiB)."""
    yield
    client = s3_bucket.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.bucket, Prefix="st/"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=s3_bucket.bucket, Key=obj["Key"])


def via_proxy(s3_bucket, proxy: FaultProxy, **kw: object):  # type: ignore[no-untyped-def]
    cfg = s3_config(s3_bucket, **kw)
    from dataclasses import replace

    return replace(cfg, s3_endpoint_url=proxy.endpoint)


def test_get_image_and_video(s3_bucket, png: bytes, mp4: bytes) -> None:  # type: ignore[no-untyped-def]
    cfg = s3_config(s3_bucket)
    url = s3_bucket.put("st/in/photo.png", png)
    with open_media(url, cfg, kind="image") as blob:
        assert (blob.read(), blob.mime, blob.size) == (png, "image/png", len(png))
    url = s3_bucket.put("st/in/clip with spaces?.mp4", mp4)
    with open_media(url, cfg, kind="video") as blob, blob.as_path() as p:
        assert p.read_bytes() == mp4
    with pytest.raises(UnsupportedMedia):
        open_media(url, cfg, kind="image")


def test_missing_key_and_bucket(s3_bucket) -> None:  # type: ignore[no-untyped-def]
    cfg = s3_config(s3_bucket)
    with pytest.raises(MediaNotFound, match="no such object") as e:
        open_media(f"s3://{s3_bucket.bucket}/nope.png", cfg)
    assert not e.value.retryable and e.value.code == "media_not_found"
    with pytest.raises(MediaNotFound, match="no such bucket"):
        open_media(f"s3://captionq-missing-{uuid.uuid4().hex[:12]}/a.png", cfg)


def test_wrong_credentials(s3_bucket, png: bytes) -> None:  # type: ignore[no-untyped-def]
    url = s3_bucket.put("st/in/secret.png", png)
    cfg = s3_config(s3_bucket, s3_secret_access_key="not-the-secret")
    with pytest.raises(MediaNotFound, match="access denied") as e:
        open_media(url, cfg)
    assert "SignatureDoesNotMatch" in e.value.message or "AccessDenied" in e.value.message
    cfg = s3_config(s3_bucket, s3_access_key_id="nobody", s3_secret_access_key="x")
    with pytest.raises(MediaNotFound, match="access denied"):
        open_media(url, cfg)


def test_credentials_from_the_usual_variables(s3_bucket, png: bytes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url = s3_bucket.put("st/in/env.png", png)
    cfg = s3_config(s3_bucket, s3_access_key_id=None, s3_secret_access_key=None)
    for k, v in s3_bucket.env().items():
        monkeypatch.setenv(k, v)
    with open_media(url, cfg) as blob:
        assert blob.read() == png
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-wrong")
    with pytest.raises(MediaNotFound, match="access denied"):
        open_media(url, cfg)


def test_no_credentials_at_all_is_its_own_code(s3_bucket, png: bytes, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = s3_bucket.put("st/in/nocreds.png", png)
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = s3_config(s3_bucket, s3_access_key_id=None, s3_secret_access_key=None)
    with pytest.raises(StorageCredentialsMissing, match="no S3 credentials") as e:
        open_media(url, cfg)
    assert e.value.code == "storage_credentials_missing" and not e.value.retryable


def test_byte_cap(s3_bucket, mp4: bytes) -> None:  # type: ignore[no-untyped-def]
    url = s3_bucket.put("st/in/big.mp4", mp4)
    with pytest.raises(MediaTooLarge, match=f"{len(mp4)} bytes"):
        open_media(url, s3_config(s3_bucket, max_bytes=len(mp4) - 1))
    with open_media(url, s3_config(s3_bucket, max_bytes=len(mp4))) as blob:
        assert blob.size == len(mp4)


def test_allowed_buckets_enforced_at_fetch(s3_bucket, png: bytes) -> None:  # type: ignore[no-untyped-def]
    url = s3_bucket.put("st/in/x.png", png)
    with pytest.raises(UrlNotAllowed, match="allowed buckets"):
        open_media(url, s3_config(s3_bucket, allowed_buckets=("some-other-bucket",)))


def test_503_then_ok_is_retried(s3_bucket, proxy: FaultProxy, png: bytes) -> None:  # type: ignore[no-untyped-def]
    url = s3_bucket.put("st/in/retry.png", png)
    cfg = via_proxy(s3_bucket, proxy)
    proxy.arm("503")
    with open_media(url, cfg) as blob:
        assert blob.read() == png
    assert proxy.modes == []


def test_throttled_throughout_is_transient(s3_bucket, proxy: FaultProxy, png: bytes) -> None:  # type: ignore[no-untyped-def]
    url = s3_bucket.put("st/in/throttled.png", png)
    cfg = via_proxy(s3_bucket, proxy, retries=2)
    proxy.arm("503", "503", "503")
    with pytest.raises(TransientError, match=r"SlowDown.*3 attempts") as e:
        open_media(url, cfg)
    assert e.value.retryable


def test_connection_cut_mid_body_is_retried(s3_bucket, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    from tests.storage.media import video_bytes

    data = video_bytes(frames=30) + os.urandom(300_000)
    url = s3_bucket.put("st/in/cut.mp4", data)
    cfg = via_proxy(s3_bucket, proxy)
    proxy.arm("cut:100000")
    before = proxy.connections
    with open_media(url, cfg) as blob:
        assert hashlib.sha256(blob.read()).digest() == hashlib.sha256(data).digest()
    assert proxy.connections - before == 2  # the cut one, then the retry


def test_unreachable_endpoint_is_transient(s3_bucket) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    cfg = replace(s3_config(s3_bucket, retries=1), s3_endpoint_url="http://127.0.0.1:9")
    with pytest.raises(TransientError, match="2 attempts"):
        open_media(f"s3://{s3_bucket.bucket}/a.png", cfg)


# --- put_object -------------------------------------------------------------------------------------
def _get(s3_bucket, key: str) -> tuple[bytes, str]:  # type: ignore[no-untyped-def]
    obj = s3_bucket.client().get_object(Bucket=s3_bucket.bucket, Key=key)
    return obj["Body"].read(), obj["ContentType"]


def test_put_single(s3_bucket) -> None:  # type: ignore[no-untyped-def]
    cfg = s3_config(s3_bucket)
    stored = put_object(f"s3://{s3_bucket.bucket}/st/out/one.json", b'{"a": 1}\n', "application/json", cfg)
    assert (stored.size, stored.parts) == (9, 1)
    assert _get(s3_bucket, "st/out/one.json") == (b'{"a": 1}\n', "application/json")
    # a short stream needs no multipart upload
    stored = put_object(
        f"s3://{s3_bucket.bucket}/st/out/small.jsonl", iter([b"a\n", b"b\n"]), "application/x-ndjson", cfg
    )
    assert stored.parts == 1 and _get(s3_bucket, "st/out/small.jsonl")[0] == b"a\nb\n"
    with pytest.raises(UrlNotAllowed, match="prefix"):
        put_object(f"s3://{s3_bucket.bucket}/st/out/", b"x", "text/plain", cfg)


def test_put_multipart(s3_bucket) -> None:  # type: ignore[no-untyped-def]
    cfg = s3_config(s3_bucket, multipart_part_size=5 * MiB)
    block = os.urandom(333 * 1024)
    chunks = [block] * 34  # ~11 MiB in uneven pieces → 5 + 5 + ~1 MiB
    stored = put_object(
        f"s3://{s3_bucket.bucket}/st/out/results.jsonl", iter(chunks), "application/x-ndjson", cfg
    )
    body, ctype = _get(s3_bucket, "st/out/results.jsonl")
    assert (stored.parts, stored.size, len(body), ctype) == (
        3,
        len(block) * 34,
        len(block) * 34,
        "application/x-ndjson",
    )
    assert hashlib.sha256(body).digest() == hashlib.sha256(block * 34).digest()


def test_put_multipart_failure_leaves_nothing(s3_bucket) -> None:  # type: ignore[no-untyped-def]
    cfg = s3_config(s3_bucket, multipart_part_size=5 * MiB)

    def broken() -> Iterator[bytes]:
        yield os.urandom(6 * MiB)
        yield os.urandom(6 * MiB)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        put_object(f"s3://{s3_bucket.bucket}/st/out/broken.bin", broken(), "application/octet-stream", cfg)
    client = s3_bucket.client()
    listed = client.list_objects_v2(Bucket=s3_bucket.bucket, Prefix="st/out/broken")
    assert listed.get("KeyCount", 0) == 0
    uploads = client.list_multipart_uploads(Bucket=s3_bucket.bucket, Prefix="st/out/broken")
    assert not uploads.get("Uploads")


# --- iter_lines -------------------------------------------------------------------------------------
def _manifest(n: int) -> bytes:
    line = '{"media": [{"type": "image", "url": "s3://bucket/images/%07d.jpg"}], "custom_id": "row-%07d"}'
    return "\n".join(line % (i, i) for i in range(n)).encode() + b"\n"


def test_iter_lines_large_manifest_streams(s3_bucket) -> None:  # type: ignore[no-untyped-def]
    n = 200_000
    data = _manifest(n)
    assert len(data) > 18 * MiB
    url = put_object(
        f"s3://{s3_bucket.bucket}/st/manifests/big.jsonl", data, "application/x-ndjson", s3_config(s3_bucket)
    ).url
    del data
    cfg = s3_config(s3_bucket)
    tracemalloc.start()
    try:
        count = 0
        for number, line in iter_lines(url, cfg):
            count += 1
            if number in (1, n):
                assert line.endswith(b'"row-%07d"}' % (number - 1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while reading an ~{n * 95 / MiB:.0f} MiB manifest"


def test_iter_lines_resumes_after_a_cut(s3_bucket, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    data = _manifest(20_000)
    url = s3_bucket.put("st/manifests/cut.jsonl", data)
    proxy.arm("cut:700000")
    before = proxy.connections
    lines = list(iter_lines(url, via_proxy(s3_bucket, proxy), chunk_size=64 * 1024))
    assert [n for n, _ in lines] == list(range(1, 20_001))
    assert b"\n".join(line for _, line in lines) + b"\n" == data
    assert proxy.connections - before == 2  # cut once, resumed once (numbers above: no line twice)


def test_iter_lines_errors(s3_bucket) -> None:  # type: ignore[no-untyped-def]
    cfg = s3_config(s3_bucket)
    with pytest.raises(MediaNotFound):
        list(iter_lines(f"s3://{s3_bucket.bucket}/st/manifests/none.jsonl", cfg))
    url = s3_bucket.put("st/manifests/long.jsonl", b"ok\n" + b"x" * 5000 + b"\nok\n")
    with pytest.raises(InvalidManifest) as e:
        list(iter_lines(url, cfg, max_line_bytes=4096))
    assert (e.value.line, e.value.code) == (2, "invalid_request")
    with pytest.raises(UrlNotAllowed):
        iter_lines("https://example.com/manifest.jsonl", cfg)


def test_iter_lines_refuses_to_mix_versions(s3_bucket, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """A manifest replaced while being read, then a broken connection: the resumed read is pinned
    to the first version's ETag, so it fails instead of splicing two files together."""
    from storage import MediaUnreadable

    url = s3_bucket.put("st/manifests/replaced.jsonl", _manifest(100_000))
    proxy.arm()
    lines = iter_lines(url, via_proxy(s3_bucket, proxy, retries=1), chunk_size=64 * 1024)
    assert next(lines)[0] == 1
    s3_bucket.put("st/manifests/replaced.jsonl", b'{"other": true}\n' * 100_000)
    proxy.arm()  # drop the connection mid-body
    with pytest.raises(MediaUnreadable, match="changed while it was being read"):
        for _ in lines:
            pass
