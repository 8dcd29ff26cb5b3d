"""History loads on scroll, back to the room's first message."""

from playwright.sync_api import expect

SERVER_ARGS = ["--message-rate", "0"]
COUNT = 130  # more than two pages of 50


def test_scroll_back_reaches_the_first_message(people, server):
    owner = server.signup("hana")
    token = server.login("hana")["access_token"]
    status, room = server.call("POST", "/v1/rooms", {"name": "Long story"}, token)
    assert status == 201
    room_id = room["room_id"]
    for i in range(COUNT):
        status, _ = server.call(
            "POST", f"/v1/rooms/{room_id}/messages", {"client_msg_id": f"m{i}", "text": f"line {i:03}"}, token
        )
        assert status == 202

    hana = people("hana", viewport={"width": 1000, "height": 700})
    hana.login_via_ui()
    p = hana.page
    p.goto(f"/#/room/{room_id}")
    msgs = p.locator(".timeline .msg")
    # The newest page is shown, scrolled to the end.
    expect(msgs.last).to_contain_text(f"line {COUNT - 1:03}")
    expect(msgs.last).to_be_in_viewport()
    assert msgs.count() < COUNT
    marker = p.locator(".start-marker")
    expect(marker).to_be_hidden()

    # Scroll up until the start of the room shows.
    for _ in range(30):
        if marker.is_visible():
            break
        p.locator(".scroller").evaluate("el => el.scrollTo(0, 0)")
        p.wait_for_timeout(150)
    expect(marker).to_be_visible()
    expect(msgs).to_have_count(COUNT)
    texts = msgs.locator(".text").all_inner_texts()
    assert texts == [f"line {i:03}" for i in range(COUNT)], "every message once, in log order"
    ids = [m.get_attribute("data-id") for m in msgs.all()]
    assert ids == sorted(ids) and len(set(ids)) == COUNT
    assert owner["username"] == "hana"
