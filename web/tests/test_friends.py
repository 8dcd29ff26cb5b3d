"""Friends and direct messages: a request by username, its acceptance, a
direct-message room opened from a friend (listed under the other person's
name), a block that ends both, in two browsers."""

import re

from playwright.sync_api import expect

from conftest import DOCS
from test_a11y import audit
from test_chat import send

FAST = 3000  # a notification over the socket reloads the lists at once (they are also polled every 10 s)


def test_request_accept_message_and_block(people):
    alice = people("alice")
    bob = people("bob")
    alice.signup_via_ui()
    bob.signup_via_ui()
    a, b = alice.page, bob.page

    b.goto("/#/friends")
    expect(b.locator(".people.incoming li")).to_have_count(0)
    b.wait_for_timeout(300)
    # Alice asks Bob by username, from the sidebar's Friends page.
    a.locator(".sidebar .friends-link").click()
    a.wait_for_url(re.compile("#/friends"))
    a.fill("#friend-name", "bob")
    a.locator(".add-friend button[type=submit]").click()
    expect(a.locator(".add-friend .ok-note")).to_have_text("Request sent to bob.")
    expect(a.locator(".people.outgoing li")).to_contain_text("bob")
    # Asking for nobody is refused clearly.
    a.fill("#friend-name", "nobody_at_all")
    a.locator(".add-friend button[type=submit]").click()
    expect(a.locator(".add-friend .error")).to_have_text("No such user.")

    # Bob, already on his friends page, sees the request arrive (the
    # socket's notification) and accepts it; Alice's page learns it the same
    # way; both see each other as friends, Alice online.
    incoming = b.locator(".people.incoming li")
    expect(incoming).to_contain_text("alice", timeout=FAST)
    incoming.get_by_role("button", name="Accept").click()
    friend = b.locator(".people.friends li").filter(has_text="alice")
    expect(friend).to_contain_text("online")
    expect(a.locator(".people.friends li").filter(has_text="bob")).to_be_visible(timeout=FAST)
    expect(a.locator(".people.outgoing li")).to_have_count(0)
    b.screenshot(path=str(DOCS / "web-friends.png"))
    found = audit(b, "friends")

    # Bob opens the direct messages with Alice: a room of two, named after her.
    friend.get_by_role("button", name="Message").click()
    b.wait_for_url(re.compile("#/room/"))
    room_id = b.url.split("#/room/")[1]
    expect(b.locator(".room-title")).to_have_text("alice")
    expect(b.locator(f".sidebar a[href='#/room/{room_id}']")).to_contain_text("alice")
    send(b, "Hi Alice, I am so happy we are friends!")
    expect(b.locator(".timeline .msg .badge")).to_have_count(1)

    # Alice opens it from her side: the same room, named after Bob, live.
    a.locator(".people.friends li").filter(has_text="bob").get_by_role("button", name="Message").click()
    a.wait_for_url(re.compile(room_id))
    expect(a.locator(".room-title")).to_have_text("bob")
    expect(a.locator(".timeline .msg")).to_contain_text("so happy we are friends")
    send(a, "Me too!")
    expect(b.locator(".timeline .msg").filter(has_text="Me too!")).to_be_visible()

    # Bob blocks Alice: no more friendship, and she cannot ask again.
    b.goto("/#/friends")
    b.locator(".people.friends li").filter(has_text="alice").get_by_role("button", name="Block").click()
    expect(b.locator(".people.blocked li")).to_contain_text("alice")
    expect(b.locator(".people.friends li")).to_have_count(0)
    a.goto("/#/friends")
    expect(a.locator(".people.friends li")).to_have_count(0, timeout=12000)
    a.fill("#friend-name", "bob")
    a.locator(".add-friend button[type=submit]").click()
    expect(a.locator(".add-friend .error")).to_have_text("One of you blocks the other.")
    found += audit(a, "friends with an error")
    assert not found, "axe-core found serious or critical violations:\n" + "\n".join(found)
