"""Who is here now: the room's online count, who has it open in the member
list, and "is here" / "stepped away" notes; a reload is not a departure."""

import re
import time

from playwright.sync_api import expect

# A short grace period, so that a departure is announced within the test.
GRACE_MS = 1500
SERVER_ARGS = ["--presence-grace-ms", str(GRACE_MS)]


def test_the_room_shows_who_has_it_open_and_a_reload_is_not_a_departure(people, server):
    alice = people("alice")
    bob = people("bob")
    alice.signup_via_ui()
    bob.signup_via_ui()
    a, b = alice.page, bob.page

    # Alice creates the room; Bob joins it over the API and then opens it.
    a.goto("/#/rooms")
    a.fill("#new-room-name", "Porch")
    a.fill("#new-room-cap", "10")
    a.click(".create-room button[type=submit]")
    a.wait_for_url(re.compile(r"#/room/"))
    room_id = a.url.split("#/room/")[1]
    expect(a.locator(".room-online")).to_have_text("1 here now")
    token = server.login("bob")["access_token"]
    status, _ = server.call("POST", f"/v1/rooms/{room_id}/join", {}, token)
    assert status == 200

    b.goto(f"/#/room/{room_id}")
    expect(b.locator(".room-title")).to_have_text("Porch")
    # Both see two people here, and Bob's arrival is a note in Alice's room.
    for page in (a, b):
        expect(page.locator(".room-online")).to_have_text("2 here now")
        expect(page.locator(".members li.here")).to_have_count(2)
    expect(a.locator(".timeline .presence-note")).to_have_text(["bob is here"])
    expect(b.locator(".timeline .presence-note")).to_have_count(0)

    # A reload (a new socket, the old one closed) is neither a departure
    # nor an arrival.
    b.reload()
    expect(b.locator(".room-online")).to_have_text("2 here now")
    time.sleep(GRACE_MS / 1000 + 1.0)
    expect(a.locator(".timeline .presence-note")).to_have_count(1)
    expect(a.locator(".room-online")).to_have_text("2 here now")

    # Bob goes back to the room list (his sidebar still follows the room
    # for its unread count, which is not having it open): after the grace
    # period Alice sees him step away.
    b.goto("/#/rooms")
    expect(a.locator(".timeline .presence-note").nth(1)).to_have_text("bob stepped away", timeout=GRACE_MS + 10_000)
    expect(a.locator(".room-online")).to_have_text("1 here now")
    expect(a.locator(".members li.here")).to_have_count(1)
    expect(a.locator(".members li.here")).to_contain_text("alice")
    a.screenshot(path="/tmp/emosation-presence.png")
