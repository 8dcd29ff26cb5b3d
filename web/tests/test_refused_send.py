"""A send the server refuses shows as failed, and its retry is stored once.

A module of its own: its server refuses quick sends (one message per second,
burst 2) but keeps the default access-token lifetime, so no token renewal or
socket end at `exp` can land in the middle of its sends and retries (with the
4-second tokens of test_account.py it failed now and then under load).
"""

from playwright.sync_api import expect

from test_chat import create_room, send

SERVER_ARGS = ["--message-rate", "1"]


def test_a_refused_send_fails_and_its_retry_is_stored_once(people, server):
    gus = people("gus")
    gus.signup_via_ui()
    room_id = create_room(gus.page, "Rate limits", 2)
    p = gus.page
    for i in range(4):
        send(p, f"quick {i}")
    failed = p.locator(".timeline .msg.failed")
    expect(failed.first).to_be_visible()
    expect(failed.first).to_contain_text("Not sent")
    assert failed.count() >= 1
    # Retry until none is left failed: a later send's refusal may render
    # after the first one's (counting them once, at the first, raced it).
    for _ in range(10):
        p.wait_for_timeout(1100)
        if failed.count() == 0:
            break
        failed.first.get_by_role("button", name="Retry").click()
    expect(p.locator(".timeline .msg:not(.pending)")).to_have_count(4, timeout=15000)
    expect(p.locator(".timeline .pending")).to_have_count(0)
    token = server.login("gus")["access_token"]
    _, page = server.call("GET", f"/v1/rooms/{room_id}/messages", token=token)
    assert sorted(m["text"] for m in page["messages"]) == [f"quick {i}" for i in range(4)]
