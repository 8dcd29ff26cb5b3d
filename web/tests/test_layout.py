"""Korean interface, phone width, screenshots, and what a first load costs."""

import time

from playwright.sync_api import expect

from conftest import DOCS, Person

PHONE = {"width": 390, "height": 844}

CONVERSATION = [
    ("mina", "Good morning! I just got the job offer, I am so happy!"),
    ("joon", "Wow, congratulations!! That is amazing news."),
    ("mina", "Thank you! I was so nervous and afraid during the interview."),
    ("joon", "I am angry they made you wait three weeks though."),
    ("mina", "Ha, true. Lunch to celebrate? 12:30 at the noodle place."),
]


def seed_room(server):
    """Two members and a short conversation, posted over the API."""
    tokens = {}
    for name in ("mina", "joon"):
        server.signup(name)
        tokens[name] = server.login(name)["access_token"]
    status, room = server.call("POST", "/v1/rooms", {"name": "Lunch crew", "capacity": 8}, tokens["mina"])
    assert status == 201
    room_id = room["room_id"]
    assert server.call("POST", f"/v1/rooms/{room_id}/join", token=tokens["joon"])[0] == 200
    for i, (who, text) in enumerate(CONVERSATION):
        status, _ = server.call(
            "POST", f"/v1/rooms/{room_id}/messages", {"client_msg_id": f"c{i}", "text": text}, tokens[who]
        )
        assert status == 202
    return room_id


def no_horizontal_scroll(page):
    return page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth"
        " && document.body.scrollWidth <= window.innerWidth"
    )


def test_phone_width_has_no_horizontal_scroll(browser, server):
    room_id = seed_room(server)
    mina = Person(browser, server, "mina", viewport=PHONE)
    try:
        p = mina.page
        p.goto("/#/login")
        assert no_horizontal_scroll(p)
        mina.login_via_ui()
        assert no_horizontal_scroll(p), "directory page"
        p.goto(f"/#/room/{room_id}")
        msgs = p.locator(".timeline .msg")
        expect(msgs).to_have_count(len(CONVERSATION))
        expect(p.locator(".timeline .badge")).to_have_count(len(CONVERSATION))
        # Phone: the room list gives way to the room, the composer stays on screen.
        expect(p.locator(".sidebar")).to_be_hidden()
        expect(p.locator("#composer")).to_be_in_viewport()
        expect(msgs.last).to_be_in_viewport()
        p.fill("#composer", "On my way, see you there.")
        p.keyboard.press("Enter")
        expect(p.locator(".timeline .msg:not(.pending)")).to_have_count(len(CONVERSATION) + 1)
        expect(p.locator(".timeline .badge")).to_have_count(len(CONVERSATION) + 1)
        p.locator("#composer").focus()
        p.wait_for_timeout(400)
        p.screenshot(path=str(DOCS / "web-chat-phone.png"))
        # A long unbroken word wraps instead of widening the page.
        p.fill("#composer", "x" * 300)
        p.keyboard.press("Enter")
        expect(p.locator(".timeline .msg:not(.pending)")).to_have_count(len(CONVERSATION) + 2)
        assert no_horizontal_scroll(p), "chat room"
        # The details drawer opens and closes from the keyboard.
        p.locator(".details-toggle").focus()
        p.keyboard.press("Enter")
        expect(p.locator(".room-aside")).to_be_visible()
        expect(p.locator(".room-aside .members li")).to_have_count(2)
        assert no_horizontal_scroll(p), "details drawer"
        p.keyboard.press("Enter")
        expect(p.locator(".room-aside")).to_be_hidden()
        assert not mina.errors, mina.errors
    finally:
        mina.close()


def test_korean_interface_renders(browser, server):
    person = Person(browser, server, "minji", locale="ko-KR")
    try:
        p = person.page
        p.goto("/#/signup")
        # Chosen from the browser's language.
        expect(p.locator("html")).to_have_attribute("lang", "ko")
        expect(p.locator(".auth-card h1")).to_have_text("회원가입")
        expect(p.locator("label[for=username]")).to_have_text("아이디")
        # Rules checked as one types, in Korean.
        p.fill("#username", "AB")
        expect(p.locator("#username-msg")).to_have_text("영문 소문자, 숫자, _ 로 3–32자를 입력하세요.")
        p.fill("#username", "minji")
        p.fill("#password", "short")
        expect(p.locator("#password-msg")).to_have_text("8자 이상 128자 이하로 입력하세요.")
        p.fill("#password", "correct horse battery")
        p.fill("#confirm", "correct horse batterx")
        expect(p.locator("#confirm-msg")).to_have_text("비밀번호가 일치하지 않습니다.")
        p.fill("#confirm", "correct horse battery")
        p.click(".auth-form button[type=submit]")
        expect(p.locator(".sidebar h2")).to_have_text("내 채팅방")
        expect(p.locator(".directory-page h1")).to_have_text("채팅방 목록")
        # The switch changes the language in place and remembers it.
        p.select_option("#lang", "en")
        expect(p.locator(".sidebar h2")).to_have_text("My rooms")
        expect(p.locator("html")).to_have_attribute("lang", "en")
        p.reload()
        expect(p.locator(".sidebar h2")).to_have_text("My rooms")
        p.select_option("#lang", "ko")
        expect(p.locator(".directory-page h1")).to_have_text("채팅방 목록")
        p.screenshot(path=str(DOCS / "web-rooms-ko.png"))
        assert not person.errors, person.errors
    finally:
        person.close()


def test_username_taken_is_shown(browser, server):
    server.signup("taken_name")
    person = Person(browser, server, "taken_name")
    try:
        p = person.page
        p.goto("/#/signup")
        p.fill("#username", "taken_name")
        p.fill("#password", "correct horse battery")
        p.fill("#confirm", "correct horse battery")
        p.click(".auth-form button[type=submit]")
        expect(p.locator("#username-msg")).to_have_text("That username is taken.")
        expect(p.locator("#username")).to_have_attribute("aria-invalid", "true")
    finally:
        person.close()


def test_first_load_weight_and_time_to_first_message(browser, server):
    """Reported in docs/web.md; the budgets keep them from creeping up."""
    server.signup("ana")
    token = server.login("ana")["access_token"]
    status, room = server.call("POST", "/v1/rooms", {"name": "Timing"}, token)
    room_id = room["room_id"]
    server.call("POST", f"/v1/rooms/{room_id}/messages", {"client_msg_id": "t1", "text": "first!"}, token)
    person = Person(browser, server, "ana")
    try:
        p = person.page
        p.goto(f"/#/room/{room_id}")  # not logged in: the login page, then the room
        p.fill("#username", "ana")
        p.fill("#password", "correct horse battery")
        started = time.monotonic()
        p.click(".auth-form button[type=submit]")
        expect(p.locator(".timeline .msg").first).to_be_visible()
        elapsed_ms = (time.monotonic() - started) * 1000
        entries = p.evaluate(
            """() => performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
                 .map((e) => ({ url: e.name, transfer: e.transferSize, encoded: e.encodedBodySize,
                                decoded: e.decodedBodySize }))"""
        )
        weight = sum(e["transfer"] for e in entries)
        decoded = sum(e["decoded"] for e in entries)
        print(
            f"\nfirst load of the chat room: {weight} bytes transferred ({decoded} bytes of bodies once"
            f" decompressed); first message {elapsed_ms:.0f} ms after login"
        )
        # The page and its assets come gzipped (the API's JSON does not).
        assets = [e for e in entries if "/v1/" not in e["url"]]
        assert len(assets) >= 11, assets
        for e in assets:
            assert e["encoded"] < e["decoded"], f"not compressed: {e}"
        assert weight < 60_000, weight
        assert elapsed_ms < 3000, elapsed_ms
    finally:
        person.close()
