"""Live unread counts and read markers, access-token renewal, account
deletion."""

import re

from playwright.sync_api import expect

from test_chat import create_room, send

# One message per second (burst 2), so the tests space their sends; access
# tokens that expire in 4 s, so the page must renew them to keep working.
SERVER_ARGS = ["--message-rate", "1", "--access-ttl-secs", "4"]


def test_unread_counts_update_live_and_reading_clears_them(people, server):
    ivy = people("ivy")
    jay = people("jay")
    ivy.signup_via_ui()
    jay.signup_via_ui()
    room_id = create_room(ivy.page, "Unread", 3)
    j = jay.page
    j.goto(f"/#/room/{room_id}")
    j.get_by_role("button", name="Join").click()
    expect(j.locator(".members li")).to_have_count(2)
    j.goto("/#/rooms")  # away from the room
    send(ivy.page, "one")
    ivy.page.wait_for_timeout(1100)
    send(ivy.page, "two")
    item = j.locator(f".my-rooms li[data-room-id='{room_id}']")
    expect(item.locator(".unread")).to_have_text("2")
    item.locator("a").click()
    expect(j.locator(".timeline .msg")).to_have_count(2)
    expect(item.locator(".unread")).to_have_count(0)
    # The read marker reached the server: a reload still shows nothing unread.
    def unread():
        token = server.login("jay")["access_token"]
        _, mine = server.call("GET", "/v1/me/rooms", token=token)
        return [r["unread_count"] for r in mine["rooms"] if r["room_id"] == room_id][0]

    for _ in range(30):
        if unread() == 0:
            break
        j.wait_for_timeout(100)
    assert unread() == 0


def test_access_tokens_are_renewed_before_they_expire(people, server):
    kim = people("kim")
    kim.signup_via_ui()
    refused = []
    p = kim.page
    p.on("response", lambda r: r.status == 401 and refused.append(r.url))
    room_id = create_room(p, "Long session", 2)
    p.wait_for_timeout(9000)  # two access-token lifetimes
    send(p, "still here")
    expect(p.locator(".timeline .msg:not(.pending)")).to_have_count(1)
    p.goto("/#/rooms")
    expect(p.locator(f".directory li[data-room-id='{room_id}']")).to_be_visible()
    p.reload()  # the session survives a reload
    expect(p.locator(f".my-rooms li[data-room-id='{room_id}']")).to_be_visible()
    assert not refused, f"requests refused with 401: {refused}"


def test_deleting_the_account_ends_it(people, server):
    lee = people("lee")
    lee.signup_via_ui()
    p = lee.page
    p.goto("/#/account")
    expect(p.locator(".page")).to_contain_text("Signed in as lee")
    p.get_by_role("button", name="Delete account").click()
    p.get_by_role("button", name="Yes, delete it").click()
    expect(p).to_have_url(re.compile("#/signup"))
    status, body = server.call("POST", "/v1/auth/login", {"username": "lee", "password": "correct horse battery"})
    assert status == 401
    p.goto("/#/login")
    p.fill("#username", "lee")
    p.fill("#password", "correct horse battery")
    p.click(".auth-form button[type=submit]")
    expect(p.locator(".form-msg")).to_have_text("Wrong username or password.")
