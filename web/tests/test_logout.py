"""Logout in one tab ends the session's socket in the other tab."""

import json

from playwright.sync_api import expect

from test_chat import create_room

# Two tabs of one person are two live connections of one user.
SERVER_ARGS = ["--sessions-per-user", "2"]


def test_logout_in_one_tab_ends_the_other_tabs_socket(people, server):
    eve = people("eve")
    eve.signup_via_ui()
    room_id = create_room(eve.page, "Two tabs", 3)
    tab1 = eve.page
    tab2 = eve.context.new_page()
    eve.watch(tab2)
    frames, closed = [], []

    def on_ws(ws):
        ws.on("framereceived", lambda payload: frames.append(payload))
        ws.on("close", lambda _ws: closed.append(True))

    tab2.on("websocket", on_ws)
    tab2.goto(f"/#/room/{room_id}")
    expect(tab2.locator(".status")).to_have_text("Live")

    tab1.goto("/#/account")
    tab1.click("#logout")
    expect(tab1.locator("#username")).to_be_visible()

    # The server itself ends the other tab's socket: a session_ended frame, then close.
    def ended():
        return any(json.loads(f).get("type") == "session_ended" for f in frames if isinstance(f, str))

    tab2.wait_for_function("() => true")
    for _ in range(50):
        if ended() and closed:
            break
        tab2.wait_for_timeout(100)
    assert ended(), "no session_ended frame from the server"
    assert closed
    expect(tab2.locator("#banner")).to_contain_text("session ended")
    expect(tab2.locator("#username")).to_be_visible()
