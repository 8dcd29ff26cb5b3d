"""Accessibility audit with axe-core (the PyPI package axe-playwright-python
bundles axe.min.js: no Node.js) on the login, directory and room pages, in
light and dark colour schemes, at desktop and phone widths. Serious and
critical violations fail the test."""

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from conftest import Person
from test_layout import CONVERSATION, PHONE, seed_room

AXE = Axe()
FAILING = {"serious", "critical"}


def audit(page, where):
    """axe-core over the whole page; returns its serious and critical violations, described."""
    results = AXE.run(page)
    found = []
    for v in results.response["violations"]:
        if v["impact"] in FAILING:
            nodes = "; ".join(" ".join(n["target"]) + f" ({n.get('failureSummary', '').strip()})" for n in v["nodes"][:5])
            found.append(f"{where}: {v['id']} [{v['impact']}] {v['help']}: {nodes}")
    return found


@pytest.mark.parametrize(
    "scheme,viewport",
    [("light", None), ("dark", None), ("light", PHONE)],
    ids=["light-desktop", "dark-desktop", "light-phone"],
)
def test_login_directory_and_room_pass_axe(browser, server, scheme, viewport):
    if not server.call("GET", "/v1/rooms")[1]["rooms"]:
        seed_room(server)
    room_id = server.call("GET", "/v1/rooms")[1]["rooms"][0]["room_id"]
    mina = Person(browser, server, "mina", viewport=viewport)
    try:
        p = mina.page
        p.emulate_media(color_scheme=scheme)
        found = []
        p.goto("/#/login")
        expect(p.locator("#username")).to_be_visible()
        found += audit(p, "login")
        p.goto("/#/signup")
        p.fill("#username", "X")  # a rule broken: the error state is audited too
        p.fill("#password", "short")
        p.locator("#confirm").focus()
        expect(p.locator(".field.invalid").first).to_be_visible()
        found += audit(p, "signup with errors")
        mina.login_via_ui()
        expect(p.locator(".directory li").first).to_be_visible()
        found += audit(p, "directory")
        p.goto(f"/#/room/{room_id}")
        expect(p.locator(".timeline .msg")).to_have_count(len(CONVERSATION))
        expect(p.locator(".timeline .badge")).to_have_count(len(CONVERSATION))
        expect(p.locator(".status")).to_have_text("Live")
        p.wait_for_timeout(400)  # the badges' 0.25 s pop-in: axe sees colours as they end
        found += audit(p, "room")
        if viewport is None:
            p.goto("/#/account")
            expect(p.locator("#logout")).to_be_visible()
            found += audit(p, "account")
        assert not found, "axe-core found serious or critical violations:\n" + "\n".join(found)
        assert not mina.errors, mina.errors
    finally:
        mina.close()
