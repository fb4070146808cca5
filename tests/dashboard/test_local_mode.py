"""The dashboard in local mode: SQLite (the error-code filter reads JSON there too), auth
disabled (no sign-in, the local tenant), ``file://`` media previewed from the media root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.settings import Settings
from tests.api import helpers


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    root = Path(tmp_path_factory.mktemp("dash-local"))
    (root / "media").mkdir()
    (root / "media" / "cat.png").write_bytes(helpers.png_bytes((12, 7)))
    settings = helpers.migrated(Settings(
        local_mode=True, auth="disabled", database_url=f"sqlite:///{root}/captionq.db",
        data_dir=root / "data", media_root=root / "media"))
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        yield client, settings


def test_local_mode_needs_no_sign_in_and_filters_on_sqlite(local: tuple[TestClient, Settings]) -> None:
    client, settings = local
    media = settings.media_root.resolve()
    jobs = [{"custom_id": "cat_1", "media": [{"type": "image", "url": f"file://{media}/cat.png"}]},
            {"custom_id": "cat-2", "prompts": ["hi"]}]
    batch = client.post("/v1/batches", json={"jobs": jobs}).json()
    listed = client.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["data"]
    ids = {j["custom_id"]: j["id"] for j in listed}
    svc = helpers.service(settings)
    try:
        assert svc.start(ids["cat-2"]) is not None
        svc.fail(ids["cat-2"], "context_too_long", "too long")
    finally:
        svc.db.dispose()
    login = client.get("/dashboard/login", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/dashboard/overview"

    def shown(**params: str) -> set[str]:
        r = client.get(f"/dashboard/batches/{batch['id']}/jobs", params=params)
        assert r.status_code == 200
        return {cid for cid, jid in ids.items() if jid in r.text}

    assert shown(error_code="context_too_long") == {"cat-2"}
    assert shown(q="cat_") == {"cat_1"}
    overview = client.get("/dashboard/overview")
    assert overview.status_code == 200 and "context_too_long" in overview.text
    preview = client.get(f"/dashboard/jobs/{ids['cat_1']}/media/0")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert preview.content == (media / "cat.png").read_bytes()
    assert client.get(f"/dashboard/jobs/{ids['cat_1']}/media/1").status_code == 404
    fleet = client.get("/dashboard/fleet")
    assert fleet.status_code == 200 and 'id="queue-io"' in fleet.text
    assert f'id="model-{settings.registry.default}"' in fleet.text and "no_live_workers" in fleet.text
    page = client.get(f"/dashboard/jobs/{ids['cat_1']}")
    assert page.status_code == 200 and f"/dashboard/jobs/{ids['cat_1']}/media/0" in page.text


def test_a_job_with_tasks_shows_each_task(local: tuple[TestClient, Settings]) -> None:
    client, settings = local
    body = {"tasks": [{"name": "caption", "prompts": ["Describe it.", "Shorter."]},
                      {"name": "tags", "messages": [{"role": "user", "content": "List <tags>."}]}]}
    job = client.post("/v1/jobs", json=body).json()
    output = {"tasks": {"caption": {"text": "short", "rounds": [
        {"prompt": "Describe it.", "text": "a long answer", "finish_reason": "stop"},
        {"prompt": "Shorter.", "text": "short", "finish_reason": "stop"}]},
        "tags": {"text": "cat, dog", "rounds": [{"prompt": "List <tags>.", "text": "cat, dog",
                                                 "finish_reason": "length"}]}}}
    svc = helpers.service(settings)
    try:
        assert svc.start(job["id"]) is not None
        svc.succeed(job["id"], output)
    finally:
        svc.db.dispose()
    page = client.get(f"/dashboard/jobs/{job['id']}").text
    assert 'data-task="caption"' in page and 'data-task="tags"' in page
    assert "a long answer" in page and "short" in page and "cat, dog" in page
    assert "List &lt;tags&gt;." in page and "List <tags>." not in page  # escaped
