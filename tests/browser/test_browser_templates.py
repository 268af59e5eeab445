"""The pack's example workflows in the frontend's template browser (issue 21 item 8), headless Chromium against the
real server: the cards carry the readable titles of tools/support/examples.py (the frontend titles a custom node's
template with its file name), in alphabetical order with the demo ones (no download) first, each with its
thumbnail; where the frontend lays its "Node graph" badge on the card (1.58), the badge covers only the band that
tools/thumbnails.py keeps free of text."""
from __future__ import annotations

import pytest

from test_browser import pages, server  # noqa: F401 (fixtures)
from tools import thumbnails
from tools.support import browser_util as bu, examples

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PACK = "ComfyUI-DragEdit"         # the folder the test server links the pack under (comfy_server.py)

CARD = '[data-testid^="template-workflow-"]'
CARD_JS = """(i) => {
    const c = Array.from(document.querySelectorAll('[data-testid^="template-workflow-"]'))[i];
    const area = (e) => { const r = e.getBoundingClientRect(); return r.width * r.height; };
    const img = Array.from(c.querySelectorAll('img')).sort((a, b) => area(b) - area(a))[0];   // the thumbnail
    const ir = img ? img.getBoundingClientRect() : null;
    const badge = Array.from(c.querySelectorAll('*')).filter(e =>            // the smallest box saying it
                   /^\\s*Node graph\\s*$/.test(e.textContent || '') && e.getClientRects().length)
                   .sort((a, b) => area(a) - area(b))[0];
    const br = badge ? badge.getBoundingClientRect() : null;
    return {name: c.dataset.testid.slice('template-workflow-'.length), text: c.innerText,
            img: img && img.complete ? {top: ir.top, height: ir.height, natural: img.naturalWidth} : null,
            badge: br ? {bottom: br.bottom} : null};
  }"""


def _open_pack_templates(cp: bu.ComfyPage) -> list[dict]:
    """Open the template browser on the pack's category; each card (scrolled into view, thumbnail loaded)."""
    cp.page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    nav = cp.page.locator(".p-dialog:visible, [role=dialog]").get_by_text(PACK, exact=True)
    nav.first.wait_for(timeout=30_000)
    nav.first.click()
    cp.page.locator(CARD).first.wait_for(timeout=30_000)
    for _ in range(10):                              # some frontends (1.27) add cards as the grid scrolls
        n = cp.page.locator(CARD).count()
        if n >= len(examples.EXAMPLES):
            break
        cp.page.locator(CARD).nth(n - 1).scroll_into_view_if_needed()
        cp.page.wait_for_timeout(700)
    cp.page.wait_for_timeout(500)
    bu.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    cp.page.screenshot(path=str(bu.SCREENSHOTS / f"templates_{bu.frontend_version()}.png"))
    cards = []
    for i in range(cp.page.locator(CARD).count()):
        cp.page.locator(CARD).nth(i).scroll_into_view_if_needed()
        cp.page.wait_for_function(f"(i) => {{ const im = document.querySelectorAll('{CARD}')[i].querySelector('img');"
                                  " return !!(im && im.complete && im.naturalWidth > 0); }", arg=i, timeout=30_000)
        cp.page.wait_for_timeout(100)
        cards.append(cp.page.evaluate(CARD_JS, i))
    return cards


def test_template_browser_titles_and_order(pages):
    cp = pages(False)
    cards = _open_pack_templates(cp)
    names = [c["name"] for c in cards]
    assert names == sorted(examples.EXAMPLES.values(), key=str.casefold), names     # alphabetical
    demo = [examples.EXAMPLES[k] for k in examples.EXAMPLES if examples.is_demo(k)]
    assert names[:len(demo)] == sorted(demo, key=str.casefold)          # no-download workflows first
    for c in cards:
        assert c["name"] in [line.strip() for line in c["text"].splitlines()], c       # the card's title
        assert "_" not in c["name"], c
        assert c["img"] and c["img"]["natural"] == thumbnails.SIZE, c
        if c["badge"]:                                                     # 1.58: "Node graph" over the thumbnail
            covered = (c["badge"]["bottom"] - c["img"]["top"]) / c["img"]["height"]
            assert covered <= thumbnails.BADGE_BAND / thumbnails.SIZE, (c["name"], covered)
    ours = [e for e in cp.errors if "templates_order" in e]
    assert not ours, ours
