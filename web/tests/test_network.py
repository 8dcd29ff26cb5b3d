"""Disconnects other than a server crash: the browser's network drops
(Playwright's offline mode), and the server closes a socket that cannot
keep up with 1013. The page reconnects and resumes from its cursor: every
message on screen once, in log order."""

import re
import threading

from playwright.sync_api import expect

from test_chat import create_room, send

# A socket's queue holds 4 frames (default 1024), so a burst of messages
# delivered in one batch overflows it: the server closes it with 1013.
SERVER_ARGS = ["--ws-queue-frames", "4", "--message-rate", "0"]

# Records every WebSocket close code the page sees (Playwright's own
# WebSocket events carry none). Init scripts are not subject to the CSP.
RECORD_CLOSES = """
(() => {
  const Native = window.WebSocket;
  window.__closes = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('close', (e) => window.__closes.push(e.code));
    }
  };
})();
"""


def member(server, name, room_id):
    server.signup(name)
    token = server.login(name)["access_token"]
    assert server.call("POST", f"/v1/rooms/{room_id}/join", token=token)[0] == 200
    return token


def post(server, token, room_id, cmid, text):
    status, body = server.call("POST", f"/v1/rooms/{room_id}/messages", {"client_msg_id": cmid, "text": text}, token)
    assert status == 202, body


def assert_each_once_in_order(page, expected_texts):
    msgs = page.locator(".timeline .msg:not(.pending)")
    expect(msgs).to_have_count(len(expected_texts), timeout=30_000)
    texts = msgs.locator(".text").all_inner_texts()
    assert sorted(texts) == sorted(expected_texts), texts
    ids = [m.get_attribute("data-id") for m in msgs.all()]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    expect(page.locator(".timeline .pending")).to_have_count(0)


def test_a_network_drop_reconnects_and_resumes_with_no_gap_and_no_duplicate(people, server):
    cyd = people("cyd")
    cyd.signup_via_ui()
    room_id = create_room(cyd.page, "Flaky wifi", 5)
    p = cyd.page
    dan = member(server, "dan", room_id)
    expect(p.locator(".status")).to_have_text("Live")
    post(server, dan, room_id, "d0", "before the drop")
    send(p, "mine before the drop")
    expect(p.locator(".timeline .msg:not(.pending)")).to_have_count(2)

    cyd.context.set_offline(True)
    expect(p.locator(".status")).to_contain_text(re.compile("Reconnecting|Connection lost"))
    for i in range(3):
        post(server, dan, room_id, f"d{i + 1}", f"while offline {i + 1}")
    send(p, "sent while offline")
    expect(p.locator(".timeline .msg.pending")).to_have_count(1)
    p.wait_for_timeout(1500)  # a retry or two fails while offline
    cyd.context.set_offline(False)

    expect(p.locator(".status")).to_have_text(re.compile("Reconnected|Live"), timeout=30_000)
    post(server, dan, room_id, "d9", "after the drop")
    assert_each_once_in_order(
        p,
        ["before the drop", "mine before the drop", "while offline 1", "while offline 2", "while offline 3",
         "sent while offline", "after the drop"],
    )
    _, page = server.call("GET", f"/v1/rooms/{room_id}/messages", token=dan)
    assert [m["text"] for m in page["messages"]].count("sent while offline") == 1


def test_a_slow_client_closed_with_1013_resumes_with_no_gap_and_no_duplicate(people, server):
    eli = people("eli")
    eli.page.add_init_script(RECORD_CLOSES)
    eli.signup_via_ui()
    room_id = create_room(eli.page, "Firehose", 20)
    p = eli.page
    tokens = [member(server, f"fan{i}", room_id) for i in range(8)]
    expect(p.locator(".status")).to_have_text("Live")

    # A burst from eight posters at once: the tailer hands the socket many
    # frames in one batch, more than its queue of 4 holds.
    texts = []

    def poster(i, token):
        for j in range(10):
            post(server, token, room_id, f"f{i}-{j}", f"burst {i}-{j}")

    threads = [threading.Thread(target=poster, args=(i, t)) for i, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    texts = [f"burst {i}-{j}" for i in range(8) for j in range(10)]

    p.wait_for_function("() => window.__closes.includes(1013)", timeout=15_000)
    expect(p.locator(".status")).to_have_text(re.compile("Reconnected|Live"), timeout=30_000)
    post(server, tokens[0], room_id, "last", "after the burst")
    assert_each_once_in_order(p, texts + ["after the burst"])
