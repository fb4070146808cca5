"""Pure parts of the dashboard: the session cookie, its secret file, the figures and the charts."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from api.dashboard.charts import _nice_max, hbars, stacked_bars
from api.dashboard.render import duration
from api.dashboard.session import SessionCodec, load_secret
from jobs.overview import batch_progress, percentile, summarize

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_session_round_trip_and_refusals() -> None:
    codec = SessionCodec(b"secret", 3600)
    value = codec.encode("cq_key_abc_def", now=1000)
    session = codec.decode(value, now=1001)
    assert session is not None and session.api_key == "cq_key_abc_def"
    assert codec.decode(value, now=1000 + 3600) is None  # expired
    assert SessionCodec(b"other", 3600).decode(value, now=1001) is None  # another secret
    _body, mac = value.split(".")
    forged = SessionCodec(b"secret", 3600).encode("cq_key_xyz_uvw", now=1000).split(".")[0]
    assert codec.decode(f"{forged}.{mac}", now=1001) is None  # another payload, same signature
    for junk in (None, "", "no-dot", "a.b", "!!.!!", value + "x" * 2000):
        assert codec.decode(junk, now=1001) is None


def test_csrf_token_is_bound_to_the_cookie() -> None:
    codec = SessionCodec(b"secret", 3600)
    a, b = codec.encode("k1", now=1), codec.encode("k2", now=1)
    assert codec.check_csrf(a, codec.csrf_token(a))
    assert not codec.check_csrf(a, codec.csrf_token(b))
    assert not codec.check_csrf(a, None) and not codec.check_csrf(a, "")


def test_secret_file_is_made_once_and_private(tmp_path: Path) -> None:
    first = load_secret(None, tmp_path / "data")
    assert load_secret(None, tmp_path / "data") == first and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "data" / "dashboard-session.key").stat().st_mode) == 0o600
    assert load_secret("configured", tmp_path / "data") == b"configured"


def row(status: str, created: float, started: float | None = None, finished: float | None = None,
        code: str | None = None) -> SimpleNamespace:
    at = lambda s: None if s is None else T0 + timedelta(seconds=s)  # noqa: E731
    return SimpleNamespace(status=status, created_at=at(created), started_at=at(started),
                           finished_at=at(finished), error={"code": code} if code else None)


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.05


def test_summarize_buckets_waits_runs_and_failures() -> None:
    now = T0 + timedelta(minutes=60)
    rows = [
        row("succeeded", 10, 12, 20),  # bucket 0: wait 2, run 8
        row("succeeded", 30 * 60, 30 * 60 + 4, 30 * 60 + 6),  # bucket 6: wait 4, run 2
        row("failed", 59 * 60, 59 * 60 + 1, 59 * 60 + 2, "media_not_found"),  # bucket 11
        row("failed", 59 * 60, None, 59 * 60 + 5, "expired"),
        row("failed", 59 * 60, None, 59 * 60 + 5, "expired"),
        row("queued", 3599),
    ]
    o = summarize(rows, now, timedelta(hours=1), 12)
    assert [sum(b.values()) for b in o.buckets] == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 4]
    assert o.buckets[11] == {"queued": 1, "running": 0, "succeeded": 0, "failed": 3, "canceled": 0}
    assert o.totals["failed"] == 3 and o.totals["succeeded"] == 2
    assert o.queue_wait_p50 == 2.0 and o.run_time_p50 == 5.0  # waits 2, 4, 1; runs 8, 2
    assert o.failures == [("expired", 2), ("media_not_found", 1)]
    assert o.throughput_per_min == 5 / 60
    assert not o.sampled


def test_batch_progress_rate_and_eta() -> None:
    counts = {"total": 10, "queued": 4, "running": 1, "succeeded": 4, "failed": 1, "canceled": 0}
    p = batch_progress(counts, T0, None, T0 + timedelta(minutes=2))
    assert (p.done, p.total, p.percent, p.rate_per_min) == (5, 10, 50.0, 2.5)
    assert p.eta_seconds == 120.0
    done = {**counts, "queued": 0, "running": 0, "succeeded": 9}
    finished = batch_progress(done, T0, T0 + timedelta(minutes=1), T0 + timedelta(hours=1))
    assert finished.percent == 100.0 and finished.eta_seconds is None and finished.rate_per_min == 10.0
    assert batch_progress({"total": 3}, T0, None, T0).rate_per_min is None


def test_charts_escape_text_and_scale() -> None:
    assert [_nice_max(v) for v in (0, 1, 3, 7, 10, 11, 450)] == [1, 1, 5, 10, 10, 20, 500]
    svg = stacked_bars([{"succeeded": 3, "failed": 1}, {}], ["<a>", "b"], ["succeeded", "failed"])
    assert svg.startswith("<svg") and "&lt;a&gt;" in svg and "<a>" not in svg
    assert svg.count("<rect") == 2 + 2  # two stacked parts + two legend squares
    bars = hbars([("x<y", 4), ("z", 2)])
    assert "x&lt;y" in bars and bars.count("<rect") == 2
    assert "none" in hbars([])


def test_duration_reads_well() -> None:
    assert [duration(s) for s in (None, 0.25, 4.25, 185, 7800)] == [
        "—", "250 ms", "4.2 s", "3 min 05 s", "2 h 10 min"]


def test_gpu_memory_from_the_heartbeat() -> None:
    from api.dashboard.fleet_page import gpu_memory

    gib = 1024 ** 3
    assert gpu_memory(None) is None and gpu_memory({"slots": 16}) is None
    assert gpu_memory({"gpu_memory_allocated_bytes": 0, "gpu_memory_reserved_bytes": 0}) is None  # CPU
    assert gpu_memory({"gpu_memory_allocated_bytes": 3 * gib, "gpu_memory_reserved_bytes": 4 * gib}) == \
        "3.0 GiB (reserved 4.0)"


def test_unwritable_data_dir_still_gives_a_secret(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    a = load_secret(None, tmp_path / "file" / "data")
    assert len(a) >= 32 and a != load_secret(None, tmp_path / "file" / "data")  # per process
