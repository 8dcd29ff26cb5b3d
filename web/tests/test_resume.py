"""The server is killed (SIGKILL) and restarted under an open page: the page
reconnects, resumes from its cursor and shows every message exactly once."""

import re

from playwright.sync_api import expect

from test_chat import create_room, send


def test_sigkill_and_restart_resumes_every_message_exactly_once(people, server):
    alice = people("alice")
    bob = people("bob")
    alice.signup_via_ui()
    bob.signup_via_ui()
    room_id = create_room(alice.page, "Resilient", 5)
    a, b = alice.page, bob.page
    b.goto(f"/#/room/{room_id}")
    b.get_by_role("button", name="Join").click()
    expect(b.locator(".room-title")).to_have_text("Resilient")
    expect(b.locator(".status")).to_have_text("Live")

    send(a, "before the crash 1")
    send(b, "before the crash 2")
    for p in (a, b):
        expect(p.locator(".timeline .msg:not(.pending)")).to_have_count(2)

    server.kill()
    for p in (a, b):
        expect(p.locator(".status")).to_contain_text(re.compile("Reconnecting|Connection lost"))
    # Sent while the server is down: pending, and sent again (same
    # client_msg_id) once the socket is back.
    send(a, "sent during the outage")
    expect(a.locator(".timeline .msg.pending")).to_have_count(1)

    server.start()
    # Posted by someone else right after the restart, possibly before the
    # pages are back: they must catch up on it from their cursor.
    bob_token = server.login("bob")["access_token"]
    status, _ = server.call(
        "POST", f"/v1/rooms/{room_id}/messages", {"client_msg_id": "http-1", "text": "posted right after restart"}, bob_token
    )
    assert status == 202

    for p in (a, b):
        expect(p.locator(".status")).to_have_text(re.compile("Reconnected|Live"), timeout=30000)
    send(b, "after the restart")

    expected = {
        "before the crash 1",
        "before the crash 2",
        "sent during the outage",
        "posted right after restart",
        "after the restart",
    }
    for p in (a, b):
        msgs = p.locator(".timeline .msg:not(.pending)")
        expect(msgs).to_have_count(5)
        texts = msgs.locator(".text").all_inner_texts()
        assert sorted(texts) == sorted(expected), texts
        assert texts[:2] == ["before the crash 1", "before the crash 2"]
        assert texts[-1] == "after the restart"
        ids = [m.get_attribute("data-id") for m in msgs.all()]
        assert ids == sorted(ids) and len(set(ids)) == 5
        expect(p.locator(".timeline .pending")).to_have_count(0)
        # Each message's emotion arrived too (live or replayed).
        expect(p.locator(".timeline .msg .badge")).to_have_count(5)

    # The log agrees: the offline send was stored once.
    status, page = server.call("GET", f"/v1/rooms/{room_id}/messages", token=bob_token)
    assert [m["text"] for m in page["messages"]].count("sent during the outage") == 1
    assert len(page["messages"]) == 5
