"""Two people chat in a room; a third finds it full."""

import re

from playwright.sync_api import expect

from conftest import DOCS


def create_room(page, name, capacity):
    page.goto("/#/rooms")
    page.fill("#new-room-name", name)
    page.fill("#new-room-cap", str(capacity))
    page.click(".create-room button[type=submit]")
    page.wait_for_url(re.compile(r"#/room/"))
    expect(page.locator(".room-title")).to_have_text(name)
    return page.url.split("#/room/")[1]


def send(page, text):
    page.fill("#composer", text)
    page.keyboard.press("Enter")


def test_two_people_chat_with_typing_and_emotions_and_a_third_finds_the_room_full(people, server):
    alice = people("alice")
    bob = people("bob")
    alice.signup_via_ui()
    bob.signup_via_ui()

    room_id = create_room(alice.page, "Weekend plans", 2)
    a, b = alice.page, bob.page

    # Bob finds the room in the directory and joins it (after a reload:
    # the session survives it).
    b.goto("/#/rooms")
    b.reload()
    b.fill("#room-filter", "weekend")
    row = b.locator(f".directory li[data-room-id='{room_id}']")
    expect(row).to_contain_text("1 / 2")
    row.get_by_role("button", name="Join").click()
    b.wait_for_url(re.compile(room_id))
    expect(b.locator(".room-title")).to_have_text("Weekend plans")
    # Alice sees Bob arrive: the notice, the member list, the count.
    expect(a.locator(".timeline .notice")).to_contain_text("bob joined")
    expect(a.locator(".members li")).to_have_count(2)
    expect(a.locator(".room-count")).to_have_text("2 / 2 members")

    # Typing, both ways.
    b.locator("#composer").press_sequentially("I am so happy", delay=20)
    expect(a.locator(".typing")).to_contain_text("bob is typing")
    send(b, "I am so happy we are going to the beach, what a wonderful idea!")
    a.locator("#composer").press_sequentially("Oh no", delay=20)
    expect(b.locator(".typing")).to_contain_text("alice is typing")
    send(a, "I am afraid it will rain and I am scared of the storm.")
    send(a, "Anyway, see you on Saturday.")

    for page in (a, b):
        msgs = page.locator(".timeline .msg:not(.pending)")
        expect(msgs).to_have_count(3)
        expect(msgs.nth(0)).to_contain_text("wonderful idea")
        expect(msgs.nth(1)).to_contain_text("scared of the storm")
        # Every message gets its emotion badge from the emotion stream.
        expect(page.locator(".timeline .msg .badge")).to_have_count(3)
        expect(msgs.nth(0).locator(".badge")).to_have_attribute("data-label", "joy")
        expect(msgs.nth(1).locator(".badge")).to_have_attribute("data-label", "fear")
        expect(msgs.nth(0).locator(".badge")).to_contain_text(re.compile(r"joy \d+%"))
        # The mood panel follows the emotions.
        expect(page.locator(".mood-list li[data-label=joy]")).to_have_attribute("data-count", "1")
        expect(page.locator(".mood-list li[data-label=fear]")).to_have_attribute("data-count", "1")
        # The activity chart counts this hour's messages.
        expect(page.locator(".activity .chart .bar title").filter(has_text="3 messages")).to_have_count(1)
    # Own messages are delivered (acked), never left pending.
    expect(a.locator(".timeline .msg.mine .delivery.ok")).to_have_count(2)
    expect(a.locator(".timeline .pending")).to_have_count(0)

    # Emotion display can be switched off.
    b.locator(".switch").click()
    expect(b.locator(".timeline .badge").first).to_be_hidden()
    b.locator(".switch").click()
    expect(b.locator(".timeline .badge").first).to_be_visible()

    # A little more conversation for the screenshot in docs/.
    send(b, "Don't worry, I checked: sunny all weekend. I can't wait!")
    send(b, "Ugh, but I hate the sand in the car, it is so gross.")
    send(a, "Wow, really? What a surprise, the forecast said rain!")
    expect(a.locator(".timeline .msg .badge")).to_have_count(6)
    expect(a.locator(".activity .chart .bar title").filter(has_text="6 messages")).to_have_count(1, timeout=10000)
    a.locator("#composer").press_sequentially("See you", delay=10)
    b.locator("#composer").press_sequentially("Bring snacks", delay=10)
    expect(a.locator(".typing")).to_contain_text("bob is typing")
    a.wait_for_timeout(400)
    a.screenshot(path=str(DOCS / "web-chat-desktop.png"))

    # A third person finds the room full.
    carol = people("carol")
    carol.signup_via_ui()
    c = carol.page
    c.goto("/#/rooms")
    c.reload()
    row = c.locator(f".directory li[data-room-id='{room_id}']")
    expect(row).to_contain_text("2 / 2")
    row.get_by_role("button", name="Join").click()
    expect(row.locator(".row-msg")).to_have_text("Room full")
    assert "#/room/" not in c.url
    status, body = server.call("GET", f"/v1/rooms/{room_id}")
    assert body["member_count"] == 2
