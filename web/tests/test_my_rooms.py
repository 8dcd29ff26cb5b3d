"""My rooms beyond one page of `GET /v1/me/rooms`: every page is loaded,
and every room is followed live without tripping the server's subscribe
limits (10 subscribe frames a second per connection)."""

import json

from playwright.sync_api import expect

# The API's page of my rooms is 100 (docs/api.md); the client asks for 100.
PAGE = 100
ROOMS = PAGE + 5

SERVER_ARGS = ["--room-limit", "off", "--join-limit", "off"]


def test_every_page_of_my_rooms_is_listed_and_followed_live(people, server):
    server.signup("ola")
    token = server.login("ola")["access_token"]
    ids = []
    for i in range(ROOMS):
        status, room = server.call("POST", "/v1/rooms", {"name": f"Room {i:03}", "capacity": 5}, token)
        assert status == 201, room
        ids.append(room["room_id"])
    _, first = server.call("GET", "/v1/me/rooms", token=token)
    assert len(first["rooms"]) == PAGE and first["next_after"], "one page must not hold them all"
    # The room of the last page (rooms are paged by id).
    last = max(ids)
    server.signup("pat")
    pat_token = server.login("pat")["access_token"]
    assert server.call("POST", f"/v1/rooms/{last}/join", token=pat_token)[0] == 200

    ola = people("ola")
    p = ola.page
    frames = []
    p.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(json.loads(f))))
    ola.login_via_ui()
    expect(p.locator(".my-rooms li")).to_have_count(ROOMS)
    expect(p.locator(f".my-rooms li[data-room-id='{last}']")).to_be_visible()

    # Every room is subscribed, paced below the server's limit.
    def subscribed():
        return {f["room_id"] for f in frames if f.get("type") == "subscribed"}

    for _ in range(100):
        if len(subscribed()) == ROOMS:
            break
        p.wait_for_timeout(200)
    assert subscribed() == set(ids)
    errors = [f for f in frames if f.get("type") == "error"]
    assert not errors, errors

    # A message in the last page's room counts as unread, live.
    status, _ = server.call(
        "POST", f"/v1/rooms/{last}/messages", {"client_msg_id": "p1", "text": "hello from page two"}, pat_token
    )
    assert status == 202
    item = p.locator(f".my-rooms li[data-room-id='{last}']")
    expect(item.locator(".unread")).to_have_text("1")
    # ...and is the newest activity: first in the list.
    expect(p.locator(".my-rooms li").first).to_have_attribute("data-room-id", last)
    item.locator("a").click()
    expect(p.locator(".timeline .msg")).to_have_count(1)
    expect(item.locator(".unread")).to_have_count(0)
