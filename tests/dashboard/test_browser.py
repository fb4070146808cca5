"""The dashboard in a real browser: headless Chromium (the system's ``chromium``, driven by
Playwright) against the real API (uvicorn) and a real ``captionq worker --queues gpu,io`` on the
tiny InternLM2 checkpoint, PostgreSQL, Redis and S3, webhooks to a real receiver.

One API, one worker and one browser serve the whole module. Every page visited is saved as a
screenshot under ``test-artifacts/dashboard/`` (or ``$CAPTIONQ_TEST_ARTIFACTS/dashboard``);
``docs/screenshots/`` holds a copy for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.tenants import CreatedKey
from tests.api import helpers
from tests.webhooks.receiver import Receiver
from tests.worker.stack import ROOT, Stack, build_stack, destroy_stack

CHROMIUM = os.environ.get("CAPTIONQ_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.services, pytest.mark.slow, pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (apt-get install chromium, "
                                                "or set CAPTIONQ_CHROMIUM)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (the dev extra)"),
]

KIT = ROOT / "tests" / "data" / "conformance"
SHORT = {"max_new_tokens": 8, "do_sample": False}
# Long enough that the page is open well before the answer ends even on an idle machine (the
# tiny model writes 200 tokens in ~0.6 s there), within the tiny model's 1,280 positions.
LONG = {"max_new_tokens": 600, "do_sample": False}
WAIT_MS = 90_000


@dataclass
class Env:
    stack: Stack
    base: str
    a: CreatedKey
    b: CreatedKey
    receiver: Receiver
    browser: Browser
    shots: Path
    image_url: str

    def api(self, key: CreatedKey) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {key.api_key}"},
                            timeout=30)

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def sign_in(self, key: CreatedKey) -> BrowserContext:
        context = self.browser.new_context(base_url=self.base, viewport={"width": 1280, "height": 860})
        page = context.new_page()
        page.goto("/dashboard/login")
        page.fill("#api_key", key.api_key)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard/overview")
        page.close()
        return context


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    shots = Path(os.environ.get("CAPTIONQ_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    # The sweeper (--beat) runs as in production: a message whose publish got lost under load is
    # sent again within a second or two instead of never.
    stack = build_stack(tmp_path_factory.mktemp("dashboard"), webhook_retry_schedule="1,2",
                        sweep_interval_seconds=1.0)
    pw = None
    try:
        stack.start_worker(queues="gpu,io", beat=True)
        a = helpers.new_tenant(stack.settings, f"dash-a-{time.monotonic_ns()}")
        b = helpers.new_tenant(stack.settings, f"dash-b-{time.monotonic_ns()}")
        image_url = stack.put_file(KIT / "images" / "img03_640x480.jpg")
        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        with Receiver([a.webhook_secret]) as rx:
            yield Env(stack, stack.server.base_url, a, b, rx, browser, shots, image_url)
        browser.close()
    finally:
        if pw is not None:
            pw.stop()
        destroy_stack(stack)


@pytest.fixture(scope="module")
def page_a(env: Env) -> Iterator[Page]:
    context = env.sign_in(env.a)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def batch(env: Env) -> dict[str, Any]:
    """A small batch of tenant A, its job webhooks going to the receiver."""
    jobs: list[dict[str, Any]] = [
        {"custom_id": "photo-1", "media": [{"type": "image", "url": env.image_url, "max_tiles": 1}],
         "prompts": ["Describe the image."]},
        *({"custom_id": f"text-{i}", "prompts": [f"Say hello number {i}."]} for i in range(3)),
    ]
    body = {"jobs": jobs, "defaults": {"generation": SHORT},
            "webhook": {"url": env.receiver.url, "events": ["job.succeeded", "batch.completed"]}}
    with env.api(env.a) as c:
        r = c.post("/v1/batches", json=body)
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def test_sign_in_keeps_the_key_out_of_urls_and_scripts(env: Env) -> None:
    context = env.browser.new_context(base_url=env.base, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto("/dashboard/batches")
    assert "/dashboard/login" in page.url  # no session: the sign-in form, coming back after
    page.fill("#api_key", "cq_key_0000000000000000_not-a-key")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    env.shot(page, "login")
    page.fill("#api_key", env.a.api_key)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/batches")
    cookie = next(c for c in context.cookies() if c["name"] == "captionq_session")
    assert cookie["httpOnly"] and cookie["path"] == "/dashboard"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the session
    assert env.a.api_key not in page.url and env.a.api_key not in page.content()
    context.close()


def test_batch_progress_bar_reaches_100_percent_without_reloading(env: Env, page_a: Page,
                                                                  batch: dict[str, Any]) -> None:
    page_a.goto(f"/dashboard/batches/{batch['id']}")
    page_a.evaluate("window.__sameDocument = true")  # gone if the page reloads
    bar = page_a.locator("#progress [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "100.0", timeout=WAIT_MS)
    expect(page_a.locator("#progress")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    assert page_a.evaluate("window.__sameDocument") is True
    expect(page_a.locator("#count-succeeded")).to_have_text("4")
    expect(page_a.locator("#jobs tbody tr[data-status=succeeded]")).to_have_count(4, timeout=10_000)
    env.shot(page_a, "batch")
    # Search by custom_id, then filter by status (htmx swaps the table in place).
    page_a.fill("input[name=q]", "text-")
    expect(page_a.locator("#jobs tbody tr")).to_have_count(3)
    page_a.select_option("select[name=status]", "failed")
    expect(page_a.locator("#jobs tbody")).to_contain_text("No jobs match")
    results = page_a.request.get(f"/dashboard/batches/{batch['id']}/results")
    assert results.ok and len(results.text().strip().splitlines()) == 4
    page_a.goto("/dashboard/batches")
    row = page_a.locator(f"#row-{batch['id']}")
    expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100.0")
    env.shot(page_a, "batches")


def test_job_page_streams_tokens_live(env: Env, page_a: Page) -> None:
    with env.api(env.a) as c:
        job = c.post("/v1/jobs", json={"prompts": ["Tell me a long story."], "generation": LONG}).json()
    page_a.goto(f"/dashboard/jobs/{job['id']}")
    rounds = page_a.locator("#live-rounds")
    # three token events or more have arrived (the page keeps counting them)
    expect(rounds).to_have_attribute("data-tokens", re.compile(r"^([3-9]|\d\d+)$"), timeout=WAIT_MS)
    env.shot(page_a, "job-streaming")
    expect(page_a.locator("#live")).to_have_attribute("data-done", "succeeded", timeout=WAIT_MS)
    streamed = rounds.locator("pre[data-round='0']").inner_text()
    with env.api(env.a) as c:
        final = c.get(f"/v1/jobs/{job['id']}").json()
    answer = final["output"]["rounds"][0]["text"]
    # The stream may open mid-answer (it then starts with the text so far); it ends with it all.
    assert streamed and answer.endswith(streamed), (streamed[:200], answer[:200])
    expect(page_a.locator("#job-detail")).to_have_attribute("data-status", "succeeded")
    env.shot(page_a, "job")


def test_redeliver_a_webhook_from_the_job_page(env: Env, page_a: Page, batch: dict[str, Any]) -> None:
    with env.api(env.a) as c:
        job = c.get("/v1/jobs", params={"batch_id": batch["id"], "custom_id": "photo-1"}).json()["data"][0]
    assert env.receiver.wait_for(
        lambda rx: any(r.payload["data"].get("id") == job["id"] for r in rx.accepted()), 30), (
        [(r.payload["type"], r.payload["data"].get("id")) for r in env.receiver.received], job["id"])
    msg_id = next(r.msg_id for r in env.receiver.accepted() if r.payload["data"].get("id") == job["id"])
    page_a.goto(f"/dashboard/jobs/{job['id']}")
    expect(page_a.locator("img[alt='media 0']")).to_be_visible()  # the preview, from S3
    assert page_a.evaluate("document.querySelector(\"img[alt='media 0']\").naturalWidth") == 640
    hook = page_a.locator(f"#hook-{msg_id}")
    expect(hook).to_have_attribute("data-attempts", "1")
    hook.get_by_role("button", name="Redeliver").click()
    assert env.receiver.wait_for(lambda rx: rx.ids().count(msg_id) == 2, 30), env.stack.logs()
    expect(page_a.locator(f"#hook-{msg_id}")).to_have_attribute("data-attempts", "2", timeout=WAIT_MS)
    expect(page_a.locator(f"#hook-{msg_id} tr.attempt")).to_have_count(2)
    env.shot(page_a, "job-webhooks")


def test_cancel_a_batch_from_the_list(env: Env, page_a: Page) -> None:
    body = {"jobs": [{"prompts": [f"Tell a long tale {i}."]} for i in range(2)],
            "defaults": {"generation": LONG}}
    with env.api(env.a) as c:
        batch = c.post("/v1/batches", json=body).json()
    page_a.goto("/dashboard/batches")
    env.shot(page_a, "batches-running")
    page_a.locator(f"#row-{batch['id']}").get_by_role("button", name="Cancel").click()
    row = page_a.locator(f"#row-{batch['id']}")
    expect(row).to_have_attribute("data-status", "canceled", timeout=WAIT_MS)
    with env.api(env.a) as c:
        assert c.get(f"/v1/batches/{batch['id']}").json()["cancel_requested_at"] is not None


def test_another_tenant_cannot_reach_the_batch(env: Env, batch: dict[str, Any]) -> None:
    context = env.sign_in(env.b)
    page = context.new_page()
    page.goto("/dashboard/batches")
    expect(page.locator("#batch-rows")).not_to_contain_text(batch["id"])
    response = page.goto(f"/dashboard/batches/{batch['id']}")
    assert response is not None and response.status == 404
    expect(page.locator("#not-found")).to_be_visible()
    env.shot(page, "not-found")
    with env.api(env.a) as c:
        job_id = c.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["data"][0]["id"]
    for path in (f"/dashboard/jobs/{job_id}", f"/dashboard/jobs/{job_id}/events",
                 f"/dashboard/jobs/{job_id}/media/0", f"/dashboard/batches/{batch['id']}/results",
                 f"/dashboard/batches/{batch['id']}/jobs"):
        assert page.request.get(path).status == 404, path
    csrf = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")
    r = page.request.post(f"/dashboard/batches/{batch['id']}/cancel", headers={"X-CSRF-Token": csrf})
    assert r.status == 404
    context.close()


def test_overview_and_fleet_pages(env: Env, page_a: Page) -> None:
    page_a.goto("/dashboard/overview")
    expect(page_a.locator("svg.chart").first).to_be_visible()
    assert float(page_a.locator("#stat-throughput").inner_text()) > 0
    env.shot(page_a, "overview")
    page_a.goto("/dashboard/fleet")
    expect(page_a.locator("tr.worker[data-status=live]")).to_have_count(1, timeout=WAIT_MS)
    expect(page_a.locator("tr.model[data-status=available]")).to_have_count(1)
    expect(page_a.locator("#queue-io")).to_be_visible()
    env.shot(page_a, "fleet")
