"""The portal shows the images, in a real browser: the study list's and the study page's
thumbnails, and a CT series in the viewer: the wheel and the keys scroll through the slices, a
window preset changes the image, read from the page's own pixels; every image the viewer read
is one access, no more. Screenshots at 1280 and 390 px wide."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from archive.models import AccessEvent, Instance, RestoreRequest, Series
from billing.models import UsageEvent
from tenants.models import Membership, Organization
from tenants.roles import Role
from tests.archive.test_portal_viewer import seed_ct
from tests.archive.test_restores_support import to_tier
from tests.e2e.conftest import sign_in

pytestmark = pytest.mark.browser

SHOTS = "/tmp/strata-viewer-{page}-{width}.png"
SLICES = 6

# The displayed image's pixels (red channel: the rendering is grey), through a canvas.
PIXELS = """() => {
  const img = document.querySelector('#viewer-image');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const grey = [];
  for (let i = 0; i < data.length; i += 4) grey.push(data[i]);
  return grey;
}"""


def shown(slice_number: int, preset: str = "own") -> str:
    return (
        "() => { const i = document.querySelector('#viewer-image');"
        f" return i.dataset.slice === '{slice_number}' && i.dataset.preset === '{preset}'"
        " && i.complete && i.naturalWidth > 0; }"
    )


def mean(values: list[int]) -> float:
    return sum(values) / len(values)


def difference(a: list[int], b: list[int]) -> float:
    assert len(a) == len(b)
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


@pytest.fixture
def one_request_at_a_time(monkeypatch: Any) -> None:
    """On in-memory SQLite the live server's threads share the test's one connection, which
    cannot serve two requests at once (a page loading its thumbnails, the viewer reading ahead);
    PostgreSQL (CI) gives each thread its own and needs nothing of this."""
    if connection.vendor != "sqlite":
        return
    from django.core.handlers.wsgi import WSGIHandler

    lock = threading.Lock()
    handle = WSGIHandler.__call__

    def serialized(self: Any, environ: Any, start_response: Any) -> Any:
        with lock:
            return handle(self, environ, start_response)

    monkeypatch.setattr(WSGIHandler, "__call__", serialized)


@pytest.fixture
def archive_storage(settings: Any, tmp_path: Path) -> Path:
    settings.ARCHIVE_BACKEND = "filesystem"
    settings.ARCHIVE_ROOT = tmp_path / "archive"
    settings.ARCHIVE_SPOOL_ROOT = tmp_path / "spool"
    settings.ARCHIVE_SETTLE_SECONDS = 0
    return tmp_path


def test_a_ct_series_in_the_viewer(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    archive_storage: Path,
    one_request_at_a_time: None,
) -> None:
    from playwright.sync_api import expect

    study = seed_ct(org, slices=SLICES, series=2, name="Lovelace^Ada", patient_id="PAT-4711")
    seed_ct(org, slices=2, name="Curie^Marie", patient_id="PAT-1867")
    series = Series.objects.get(study=study, series_number=1)
    make_member(org, Role.MEMBER, email="rad@stmary.example")
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, live_server, "rad@stmary.example", org.slug)
    base = f"{live_server.url}/o/{org.slug}/archive"

    images: list[str] = []  # every image of the study the browser asked for
    page.on(
        "request",
        lambda request: (
            images.append(request.url)
            if f"/studies/{study.pk}/" in request.url
            and ("/rendered/" in request.url or "/thumbnail/" in request.url)
            else None
        ),
    )

    failed: list[tuple[str, int]] = []
    page.on("response", lambda r: failed.append((r.url, r.status)) if r.status >= 400 else None)

    # The study list: a thumbnail per study, loaded.
    page.goto(f"{base}/studies/")
    thumbs = page.locator("#study-table img.thumb")
    expect(thumbs).to_have_count(2)
    for index in range(2):
        thumb = thumbs.nth(index)
        expect(thumb).to_have_attribute("loading", "lazy")
        page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
        )
        assert thumb.get_attribute("alt") == "CT image"
    page.screenshot(path=SHOTS.format(page="studies", width=1280), full_page=True)

    # The study page: each series' thumbnail, its viewer, its download.
    page.get_by_role("link", name="Lovelace, Ada").click()
    expect(page.locator("#series-table tbody tr")).to_have_count(2)
    series_thumbs = page.locator("#series-table img.thumb")
    for index in range(2):
        page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0",
            arg=series_thumbs.nth(index).element_handle(),
        )
    expect(page.get_by_role("link", name="Download series 1")).to_be_visible()
    page.screenshot(path=SHOTS.format(page="study", width=1280), full_page=True)

    # The viewer: the first slice, the image's own window, the overlay.
    page.get_by_role("link", name="View series 1").click()
    expect(page).to_have_url(f"{base}/studies/{study.pk}/series/{series.pk}/view/")
    page.wait_for_function(shown(1))
    counter = page.locator("#viewer-slice")
    expect(counter).to_have_text(f"Slice 1 / {SLICES} (Im 1)")
    expect(page.locator("#viewer-window")).to_have_text("Image's own · W 400 L 40")
    overlay = page.locator(".viewer-overlay")
    expect(overlay).to_contain_text("Lovelace, Ada")
    expect(overlay).to_contain_text("ID PAT-4711")
    expect(overlay).to_contain_text("Se 1 · CT · AX CHEST 5mm")
    first_src = page.locator("#viewer-image").get_attribute("src")
    first = page.evaluate(PIXELS)
    page.screenshot(path=SHOTS.format(page="viewer", width=1280), full_page=True)

    # The wheel scrolls: the counter, the image's address and its pixels change.
    stage = page.locator("#viewer-stage")
    stage.hover()
    page.mouse.wheel(0, 100)
    page.wait_for_function(shown(2))
    expect(counter).to_have_text(f"Slice 2 / {SLICES} (Im 2)")
    second_src = page.locator("#viewer-image").get_attribute("src")
    assert second_src != first_src
    second = page.evaluate(PIXELS)
    assert difference(first, second) > 0.3  # the nodule grew; the noise differs everywhere
    page.mouse.wheel(0, -100)
    page.wait_for_function(shown(1))
    assert difference(first, page.evaluate(PIXELS)) == 0  # the same slice, kept

    # The keys: down, End, Page Up, Home.
    stage.focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_function(shown(2))
    page.keyboard.press("End")
    page.wait_for_function(shown(SLICES))
    expect(counter).to_have_text(f"Slice {SLICES} / {SLICES} (Im {SLICES})")
    last = page.evaluate(PIXELS)
    page.keyboard.press("PageUp")
    page.wait_for_function(shown(1))
    page.keyboard.press("ArrowDown")
    page.wait_for_function(shown(2))
    assert difference(page.evaluate(PIXELS), second) == 0

    # A window preset: the lungs turn from black to grey.
    page.get_by_role("button", name="Lung").click()
    page.wait_for_function(shown(2, "lung"))
    expect(page.get_by_role("button", name="Lung")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_role("button", name="Image's own")).to_have_attribute(
        "aria-pressed", "false"
    )
    expect(page.locator("#viewer-window")).to_have_text("Lung · W 1500 L -600")
    assert "window=-600%2C1500" in (page.locator("#viewer-image").get_attribute("src") or "")
    lung = page.evaluate(PIXELS)
    page.screenshot(path=SHOTS.format(page="viewer-lung", width=1280))
    assert difference(lung, second) > 20
    assert mean(lung) > mean(second) + 10  # air and lungs are no longer black
    # Bone, by its key (the presets are numbered from the image's own: 1).
    stage.focus()
    page.keyboard.press("4")
    page.wait_for_function(shown(2, "bone"))
    assert difference(page.evaluate(PIXELS), lung) > 5

    # Zoom and pan transform the image; the overlay says the zoom.
    page.get_by_role("button", name="Zoom in").click()
    expect(overlay).to_contain_text("Zoom 125 %")
    box = stage.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2 + 30)
    page.mouse.up()
    transform = page.locator("[data-canvas]").evaluate("(node) => node.style.transform")
    assert re.fullmatch(r"translate\(60px, 30px\) scale\(1\.25\)", transform), transform
    page.keyboard.press("0")
    expect(overlay).not_to_contain_text("Zoom")

    # Every image the browser asked for (thumbnails, slices, read-ahead) is one read recorded
    # and metered, no more, no less, on a few access-log lines (one per series, kind and minute);
    # no slice was asked twice; the pages themselves are none.
    page.wait_for_load_state("networkidle")
    slices = [u for u in images if "/rendered/" in u]
    assert failed == []
    assert len(set(slices)) == len(slices)
    assert len(slices) >= 2 * SLICES  # every slice in two windows at least, read ahead
    lines = AccessEvent.objects.filter(study=study)
    assert sum(line.reads for line in lines) == len(images)
    assert lines.count() < len(images)
    # Each read metered once, the other study's list thumbnail included.
    egress = UsageEvent.objects.filter(organization=org, meter="egress.bytes")
    everything = AccessEvent.objects.filter(organization=org)
    assert egress.count() == sum(line.reads for line in everything) == len(images) + 1
    assert last != first

    # The study's access history: the slices read are a line with its request count.
    page.goto(f"{base}/studies/{study.pk}/")
    history = page.locator("#access-table")
    expect(history).to_contain_text("requests")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    history.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS.format(page="study-access", width=1280), full_page=True)
    page.go_back()

    # A phone: the same pages at 390 px.
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_function(shown(1))
    stage_box = page.locator("#viewer-stage").bounding_box()
    assert stage_box is not None and stage_box["width"] <= 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=SHOTS.format(page="viewer", width=390), full_page=True)
    page.goto(f"{base}/studies/{study.pk}/")
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0",
        arg=page.locator("#series-table img.thumb").first.element_handle(),
    )
    page.screenshot(path=SHOTS.format(page="study", width=390), full_page=True)
    page.goto(f"{base}/studies/")
    page.screenshot(path=SHOTS.format(page="studies", width=390), full_page=True)


def test_an_archived_series_shows_its_restore_instead_of_the_viewer(
    live_server: Any,
    browser_page: Any,
    org: Organization,
    make_member: Callable[..., Membership],
    archive_storage: Path,
    one_request_at_a_time: None,
) -> None:
    from playwright.sync_api import expect

    study = seed_ct(org, slices=3, name="Hopper^Grace")
    series = Series.objects.get(study=study)
    for instance in Instance.objects.filter(series=series).select_related("location"):
        to_tier(instance, "archive")
    make_member(org, Role.MEMBER, email="rad@stmary.example")
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, live_server, "rad@stmary.example", org.slug)
    base = f"{live_server.url}/o/{org.slug}/archive"

    # The list shows that the study is archived, without reading or restoring anything.
    page.goto(f"{base}/studies/")
    thumb = page.locator("#study-table img.thumb")
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    page.screenshot(path=SHOTS.format(page="studies-archived", width=1280), full_page=True)

    page.goto(f"{base}/studies/{study.pk}/series/{series.pk}/view/")
    expect(page.get_by_role("heading", name="This series must be restored")).to_be_visible()
    expect(page.locator("#restore-instances")).to_have_text("3")
    expect(page.locator("#restore-cost")).to_be_visible()
    expect(page.locator("#viewer-stage")).to_have_count(0)
    page.screenshot(path=SHOTS.format(page="viewer-archived", width=1280), full_page=True)
    assert not RestoreRequest.objects.exists() and not AccessEvent.objects.exists()

    page.get_by_role("button", name="Restore 3 images").click()
    expect(page.locator("#viewer-restore")).to_contain_text("is bringing 3 images back")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=SHOTS.format(page="viewer-archived", width=390), full_page=True)
    assert RestoreRequest.objects.count() == 1 and not AccessEvent.objects.exists()
