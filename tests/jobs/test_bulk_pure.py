"""Bulk batches without services: globs, brace ranges, each source read from fixtures built here
(a folder, a WebDataset tar, a Hugging Face dataset saved with ``save_to_disk``, Parquet files),
and the output writers read back with pyarrow/json."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import InvalidRequest
from jobs import batch_outputs as out
from jobs.batches import parse_window
from jobs.sources import infer_format, iter_items, parse_source
from storage.config import StorageConfig
from storage.fetch import open_media
from storage.listing import GlobFilter, expand_braces, glob_regex, split_glob
from tests.api import helpers


def test_globs_match_relative_keys():
    assert glob_regex("**/*.jpg").match("a/b/c.jpg") and glob_regex("**/*.jpg").match("c.jpg")
    assert not glob_regex("*.jpg").match("a/c.jpg")
    assert glob_regex("a/?.png").match("a/x.png") and not glob_regex("a/?.png").match("a/xy.png")
    assert glob_regex("[!x]*.jpg").match("cat.jpg") and not glob_regex("[!x]*.jpg").match("x.jpg")
    f = GlobFilter(["**/*.jpg", "**/*.png"], ["tmp/**"])
    assert f("a/b.jpg") and f("b.png") and not f("tmp/b.jpg") and not f("b.txt")
    assert split_glob("s3://b/photos/**/*.jpg") == ("s3://b/photos/", "**/*.jpg")
    assert split_glob("s3://b/photos/") == ("s3://b/photos/", None)


def test_brace_ranges_keep_padding_and_stream():
    names = list(expand_braces("s3://b/shard-{000008..000011}.tar"))
    assert names == [f"s3://b/shard-{n:06d}.tar" for n in range(8, 12)]
    assert list(expand_braces("x-{a,b}-{1..2}")) == ["x-a-1", "x-a-2", "x-b-1", "x-b-2"]
    it = expand_braces("s-{0..999999}")
    assert next(it) == "s-0"  # lazily: a million names are not built up front


def test_window_and_format_inference():
    assert parse_window("24h") == 86400 and parse_window(90) == 90 and parse_window("2d") == 172800
    for bad in ("1x", "10", 5, "0h"):
        with pytest.raises(ValueError):
            parse_window(bad)
    assert infer_format("s3://b/s-{0..9}.tar") == "webdataset"
    assert infer_format("file:///d/*.parquet") == "parquet"
    assert infer_format("s3://b/p/**/*.jpg") == "files"


@pytest.fixture
def config(tmp_path: Path) -> StorageConfig:
    return StorageConfig(media_root=tmp_path, local_files_allowed=True)


def test_folder_source_is_ordered_filtered_and_ids_are_relative_paths(tmp_path: Path, config: StorageConfig):
    png = helpers.png_bytes()
    for rel in ("b/2.png", "a/1.png", "a/skip.png", "top.png", "notes.txt", "a/deep/3.png"):
        (tmp_path / "photos" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / rel).write_bytes(png)
    spec = parse_source({"url": (tmp_path / "photos").as_uri() + "/", "exclude": ["**/skip.*"]}, config)
    items = list(iter_items(spec, config))
    ids = [i["custom_id"] for i in items]
    assert ids == ["top.png", "a/1.png", "a/deep/3.png", "b/2.png"]  # notes.txt: not media
    assert items[1]["media"] == [{"type": "image", "url": (tmp_path / "photos/a/1.png").as_uri()}]
    assert ids == [i["custom_id"] for i in iter_items(spec, config)]  # stable
    spec = parse_source({"url": (tmp_path / "photos").as_uri() + "/a/**/*.png"}, config)
    assert [i["custom_id"] for i in iter_items(spec, config)] == ["1.png", "skip.png", "deep/3.png"]


def make_shard(path: Path, samples: list[tuple[str, bytes, dict[str, Any] | None, str | None]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, img, meta, txt in samples:
            members = [(f"{key}.png", img)]
            if meta is not None:
                members.append((f"{key}.json", json.dumps(meta).encode()))
            if txt is not None:
                members.append((f"{key}.txt", txt.encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_source_reads_byte_ranges_and_text_members(tmp_path: Path, config: StorageConfig):
    pngs = [helpers.png_bytes((8 + i, 8)) for i in range(4)]
    make_shard(tmp_path / "shard-000000.tar",
               [("s0", pngs[0], {"label": 0}, "a cat"), ("s1", pngs[1], None, None)])
    make_shard(tmp_path / "shard-000001.tar",
               [("d/s2", pngs[2], {"label": 2}, None), ("s3", pngs[3], None, "x")])
    spec = parse_source({"url": tmp_path.as_uri() + "/shard-{000000..000001}.tar"}, config)
    assert spec.format == "webdataset"
    items = list(iter_items(spec, config))
    assert [i["custom_id"] for i in items] == ["shard-000000/s0", "shard-000000/s1", "shard-000001/d/s2",
                                               "shard-000001/s3"]
    assert items[0]["metadata"] == {"json": {"label": 0}, "txt": "a cat"}
    assert "metadata" not in items[1] and items[3]["metadata"] == {"txt": "x"}
    for item, png in zip(items, pngs, strict=True):
        media = item["media"][0]
        with open_media(media["url"], config, kind="image", byte_range=tuple(media["byte_range"])) as blob:
            assert blob.read() == png  # the member's bytes exactly, read from inside the shard


def test_hf_dataset_and_parquet_sources(tmp_path: Path, config: StorageConfig):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    imgs = [Image.new("RGB", (8 + i, 8), (i * 40, 0, 0)) for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {"image": imgs, "label": ["a", "b", "c"], "score": [0.5, 1.5, 2.5]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string"),
                                    "score": datasets.Value("float32")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    spec = parse_source({"url": (tmp_path / "ds").as_uri(), "format": "hf_dataset",
                         "metadata_columns": ["label"]}, config)
    items = list(iter_items(spec, config))
    assert [i["custom_id"] for i in items] == ["0", "1", "2"]
    assert [i["metadata"] for i in items] == [{"label": "a"}, {"label": "b"}, {"label": "c"}]
    url = items[1]["media"][0]["url"]
    assert url.startswith("data:image/png;base64,")
    with open_media(url, config, kind="image") as blob:
        assert Image.open(io.BytesIO(blob.read())).size == (9, 8)

    # Parquet: a path column (relative to the file's folder) and an id column
    (tmp_path / "pq" / "img").mkdir(parents=True)
    for i in range(3):
        imgs[i].save(tmp_path / "pq" / "img" / f"{i}.png")
    table = pa.table({"file": [f"img/{i}.png" for i in range(3)], "uid": ["u0", "u1", "u2"], "n": [1, 2, 3]})
    pq.write_table(table.slice(0, 2), tmp_path / "pq" / "a.parquet")
    pq.write_table(table.slice(2), tmp_path / "pq" / "b.parquet")
    spec = parse_source({"url": (tmp_path / "pq").as_uri() + "/*.parquet", "image_column": "file",
                         "id_column": "uid"}, config)
    items = list(iter_items(spec, config))
    assert [i["custom_id"] for i in items] == ["u0", "u1", "u2"]
    assert items[2]["media"][0]["url"] == (tmp_path / "pq" / "img" / "2.png").as_uri()
    assert items[2]["metadata"] == {"uid": "u2", "n": 3}
    bad = parse_source({"url": (tmp_path / "pq").as_uri() + "/*.parquet", "image_column": "nope"}, config)
    with pytest.raises(InvalidRequest, match="no column 'nope'"):
        list(iter_items(bad, config))


def _row(seq: int, status: str, output: Any, custom_id: str | None, error: Any = None) -> Any:
    return SimpleNamespace(id=f"job_{seq}", seq=seq, custom_id=custom_id, status=status, output=output,
                           error=error, meta={"k": seq},
                           metrics={"input_tokens": 10 + seq, "output_tokens": seq})


def test_parquet_rows_columns_and_sidecars():
    rows = [
        _row(0, "succeeded", {"tasks": {"caption": {"text": "a cat"}, "tags": {"text": "cat, sofa"}}},
             "a/0.jpg"),
        _row(1, "failed", None, "b/1.png",
             {"code": "media_not_found", "message": "gone", "retryable": False}),
        _row(2, "succeeded", {"tasks": {"caption": {"text": "a dog"}}}, "../2.webp"),
    ]
    table = pq.read_table(io.BytesIO(out.parquet_bytes(rows, ["caption", "tags"])))
    assert table.column_names[:2] == ["caption", "tags"]
    got = table.to_pylist()
    assert [g["caption"] for g in got] == ["a cat", None, "a dog"]
    assert [g["tags"] for g in got] == ["cat, sofa", None, None]
    assert [g["status"] for g in got] == ["succeeded", "failed", "succeeded"]
    assert got[1]["error_code"] == "media_not_found" and got[1]["custom_id"] == "b/1.png"
    assert [g["input_tokens"] for g in got] == [10, 11, 12] and json.loads(got[0]["metadata"]) == {"k": 0}
    assert json.loads(got[0]["output"]) == rows[0].output
    single = pq.read_table(io.BytesIO(out.parquet_bytes([_row(0, "succeeded", {"text": "hi"}, "x")], None)))
    assert single.column("text").to_pylist() == ["hi"]

    [(name, body, _)] = out.sidecars(rows[0], ["caption", "tags"])
    assert name == "sidecars/a/0.json"
    assert json.loads(body) == {"custom_id": "a/0.jpg", "job_id": "job_0", "output": rows[0].output,
                                "tasks": {"caption": "a cat", "tags": "cat, sofa"}, "metadata": {"k": 0}}
    assert out.sidecars(rows[1], None) == []  # failures go to errors.jsonl, not next to the data
    assert [n for n, _, _ in out.sidecars(rows[2], ["caption"])] == ["sidecars/_/2.json"]
    assert out.sidecars(_row(3, "succeeded", {"text": "hi", "rounds": [{}]}, "c/3.png"), None) == [
        ("sidecars/c/3.txt", b"hi", "text/plain; charset=utf-8")]
    errors = [json.loads(x) for x in out.jsonl(rows, errors_only=True).splitlines()]
    assert [e["custom_id"] for e in errors] == ["b/1.png"]


def test_source_normalizer_matches_the_full_path(tmp_path: Path):
    from api.urlcheck import StorageUrlChecker
    from core.settings import Settings
    from jobs.requests import RequestLimits, merge_defaults, normalize_job_request
    from jobs.source_requests import SourceNormalizer

    checker = StorageUrlChecker(Settings(local_mode=True, media_root=tmp_path))
    limits = RequestLimits()
    defaults = {"prompts": ["Describe."], "generation": {"max_new_tokens": 7}, "metadata": {"set": "a"}}
    items = [
        {"custom_id": "a/1.jpg", "media": [{"type": "image", "url": "s3://bkt/a/1.jpg"}]},
        {"custom_id": "a/2.jpg", "media": [{"type": "image", "url": "s3://bkt/a/2.jpg"}],
         "metadata": {"n": 2}},
        {"custom_id": "s/3", "media": [{"type": "image", "url": "s3://bkt/s.tar", "byte_range": [512, 99]}]},
        {"custom_id": "s/4", "media": [{"type": "image", "url": "s3://bkt/s.tar", "byte_range": [15, 7]}]},
        {"custom_id": "v.mp4", "media": [{"type": "video", "url": (tmp_path / "v.mp4").as_uri()}]},
        {"custom_id": "b/5.jpg", "media": [{"type": "image", "url": "s3://bkt/b/5.jpg"}],
         "metadata": {"n": 5}},
    ]
    fast = SourceNormalizer()
    for item in items * 2:
        merged = merge_defaults(defaults, item)
        want = normalize_job_request(merged, checker, limits)
        assert fast(merged, checker, limits, loc=["source", 1]) == want
    assert fast.fast >= 7  # the second of each shape on came from a template
    for bad in ({"custom_id": "x", "media": [{"type": "image", "url": "ftp://bkt/x.jpg"}]},
                {"custom_id": "y", "media": [{"type": "image", "url": "s3://b/s.tar", "byte_range": [0, 0]}]},
                {"custom_id": "z" * 300, "media": [{"type": "image", "url": "s3://bkt/z.jpg"}]}):
        merged = merge_defaults(defaults, bad)
        with pytest.raises(InvalidRequest) as full:
            normalize_job_request(merged, checker, limits, loc=["source", 9])
        with pytest.raises(InvalidRequest) as quick:
            fast(merged, checker, limits, loc=["source", 9])
        assert quick.value.errors == full.value.errors


def test_fast_id_encoding_equals_the_reference():
    import random

    from jobs import ids

    values = [0, 1, (1 << 128) - 1, 1 << 127] + [random.getrandbits(128) for _ in range(2000)]
    for v in values:
        assert ids._encode26(v) == ids._encode(v, 26).lower()
