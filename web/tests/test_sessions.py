"""One session per user: a second login kicks the first page, which says so
and does not reconnect by itself."""

import re

from playwright.sync_api import expect

from test_chat import create_room


def test_a_second_login_shows_the_kicked_banner_in_the_first(people, server):
    first = people("dana")
    first.signup_via_ui()
    room_id = create_room(first.page, "Only one of me", 3)
    p1 = first.page
    expect(p1.locator(".status")).to_have_text("Live")

    second = people("dana")  # another browser, same account
    second.login_via_ui()
    p2 = second.page
    p2.goto(f"/#/room/{room_id}")
    expect(p2.locator(".status")).to_have_text("Live")

    banner = p1.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("signed in somewhere else")
    expect(p1.locator(".status")).to_have_text("Offline")
    # It stays down: no automatic reconnect that would kick the other back.
    p1.wait_for_timeout(3000)
    expect(p1.locator(".status")).to_have_text("Offline")
    expect(p2.locator(".status")).to_have_text("Live")
    expect(p2.locator("#banner")).to_be_hidden()

    # "Use here" takes the session back, and the other page is kicked.
    banner.get_by_role("button", name="Use here").click()
    expect(p1.locator(".status")).to_have_text(re.compile("Live|Reconnected"))
    expect(p2.locator("#banner")).to_contain_text("signed in somewhere else")
