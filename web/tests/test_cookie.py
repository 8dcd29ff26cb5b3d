"""The refresh token lives in an httpOnly, SameSite=Strict cookie limited to
/v1/auth (API extension): no script can read it, nothing of the session is
in localStorage but who is logged in, and two tabs renewing their access
tokens through the one rotating cookie never present a spent one."""

import json
import re

from playwright.sync_api import expect

from test_chat import create_room, send

# Access tokens that expire in 4 s, so both tabs renew several times; two
# tabs of one person are two live connections.
SERVER_ARGS = ["--access-ttl-secs", "4", "--sessions-per-user", "2"]


def refresh_cookies(context):
    return [c for c in context.cookies() if c["name"] == "emosation_refresh"]


def test_the_refresh_token_is_an_httponly_cookie_shared_by_tabs(people, server):
    una = people("una")
    una.signup_via_ui()
    tab1 = una.page
    (cookie,) = refresh_cookies(una.context)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/v1/auth", cookie
    assert not cookie["secure"], "plain HTTP on loopback"
    # Out of reach of scripts: not in document.cookie, no token in storage.
    assert "emosation_refresh" not in tab1.evaluate("document.cookie")
    stored = tab1.evaluate("() => JSON.stringify({...localStorage, ...sessionStorage})")
    assert "eyJ" not in stored, stored  # no JWT anywhere
    assert json.loads(stored).get("emosation.user"), stored

    room_id = create_room(tab1, "Two tabs, one cookie", 4)
    tab2 = una.context.new_page()
    una.watch(tab2)
    refused, refreshes = [], []
    for tab in (tab1, tab2):
        tab.on("response", lambda r: r.status == 401 and refused.append(r.url))
        tab.on("request", lambda r: r.url.endswith("/v1/auth/refresh") and refreshes.append(r))
    tab2.goto(f"/#/room/{room_id}")
    for tab in (tab1, tab2):
        expect(tab.locator(".status")).to_have_text("Live")

    # Three access-token lifetimes: each tab renews through the rotating cookie.
    tab1.wait_for_timeout(12_000)
    assert len(refreshes) >= 4, len(refreshes)
    for r in refreshes:
        assert r.headers.get("x-refresh-cookie") == "1"
        assert "refresh_token" not in (r.post_data or "")
    send(tab1, "from tab one")
    send(tab2, "from tab two")
    for tab in (tab1, tab2):
        expect(tab.locator(".timeline .msg:not(.pending)")).to_have_count(2)
        expect(tab.locator(".status")).to_have_text("Live")
    assert not refused, f"requests refused with 401: {refused}"

    # A reload resumes the session from the cookie. Not while this tab's own
    # refresh is in flight: the reload would drop that refresh's answer (the
    # rotated cookie), and the reloaded page would present the spent one,
    # which ends the session (docs/api.md, "Reuse ends the session"). Just
    # after one of its refreshes is answered the next is seconds away; the
    # other tab's refreshes are serialised with the reloaded page's by the
    # client's cross-tab lock.
    with tab1.expect_request_finished(lambda r: r.url.endswith("/v1/auth/refresh"), timeout=15_000):
        pass
    tab1.reload()
    expect(tab1.locator(f".my-rooms li[data-room-id='{room_id}']")).to_be_visible()

    # Logout removes the cookie and ends the other tab too.
    tab1.goto("/#/account")
    tab1.click("#logout")
    expect(tab1.locator("#username")).to_be_visible()
    expect(tab2.locator("#username")).to_be_visible()
    assert not refresh_cookies(una.context)
    assert tab1.evaluate("() => localStorage.getItem('emosation.user')") is None


def test_a_refresh_token_kept_by_an_older_client_moves_into_the_cookie(people, server):
    server.signup("vic")
    tokens = server.login("vic")
    vic = people("vic")
    p = vic.page
    p.goto("/#/login")
    p.evaluate(
        """([rt, user]) => {
            localStorage.setItem('emosation.refresh', rt);
            localStorage.setItem('emosation.user', JSON.stringify(user));
        }""",
        [tokens["refresh_token"], {"user_id": tokens["user_id"], "username": "vic"}],
    )
    p.goto("/#/rooms")  # a hash change: the page starts the session it finds
    expect(p.locator(".sidebar")).to_be_visible()
    expect(p.locator(".status")).to_have_text("Live")
    assert len(refresh_cookies(vic.context)) == 1
    assert p.evaluate("() => localStorage.getItem('emosation.refresh')") is None
    # The old token was spent by that refresh (rotation), as it should be.
    status, _ = server.call("POST", "/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})
    assert status == 401


def test_a_socket_whose_token_runs_out_reconnects_and_the_session_goes_on(people, server):
    """A renewal that comes too late for the socket (every refresh fails for
    a while: the server ends the socket with `token_expired`) is not the end
    of the session: the page keeps it, renews once refreshes get through,
    reconnects and resumes — nothing missed, nothing logged out."""
    wes = people("wes")
    wes.signup_via_ui()
    page = wes.page
    room_id = create_room(page, "Late renewals", 4)
    expect(page.locator(".status")).to_have_text("Live")
    # Refreshes fail (as with no network) for longer than a token lives.
    page.route("**/v1/auth/refresh", lambda route: route.abort("internetdisconnected"))
    page.wait_for_timeout(6_000)
    assert "#/login" not in page.url, page.url
    expect(page.locator(".status")).not_to_have_text("Live")
    # Posted while the page's socket is down: it must come on resume.
    wes_token = server.login("wes")["access_token"]
    status, _ = server.call(
        "POST", f"/v1/rooms/{room_id}/messages", {"client_msg_id": "while-away", "text": "while you were away"}, wes_token
    )
    assert status == 202
    page.unroute("**/v1/auth/refresh")
    expect(page.locator(".status")).to_have_text(re.compile("Reconnected|Live"), timeout=30_000)
    expect(page.locator(".timeline .msg:not(.pending) .text")).to_have_text(["while you were away"])
    send(page, "and back")
    expect(page.locator(".timeline .msg:not(.pending)")).to_have_count(2)
    assert "#/login" not in page.url
