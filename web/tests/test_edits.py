"""Edits and deletes in the chat room: the author edits and deletes their
own messages, the room's owner deletes anyone's, and every open page shows
"edited", the new emotion and tombstones live, and again after a reload."""

import re

from playwright.sync_api import expect

from conftest import DOCS
from test_a11y import audit
from test_chat import create_room, send


def msg(page, text):
    return page.locator(".timeline .msg:not(.pending)").filter(has_text=text)


def test_authors_edit_and_delete_owners_delete_and_every_page_follows(people):
    alice = people("alice")
    bob = people("bob")
    alice.signup_via_ui()
    bob.signup_via_ui()
    a, b = alice.page, bob.page
    room_id = create_room(a, "Edits", 5)
    b.goto("/#/rooms")
    b.reload()
    b.locator(f".directory li[data-room-id='{room_id}']").get_by_role("button", name="Join").click()
    b.wait_for_url(re.compile(room_id))
    expect(a.locator(".members li")).to_have_count(2)

    send(b, "I am so happy we are going to the beach!")
    send(a, "The meeting is at 3pm")
    for page in (a, b):
        expect(page.locator(".timeline .msg .badge")).to_have_count(2)
        expect(msg(page, "beach").locator(".badge")).to_have_attribute("data-label", "joy")

    # Bob may edit and delete his own message, not Alice's; Alice owns the
    # room, so she may delete his but not edit it.
    expect(msg(b, "beach").get_by_role("button", name="Edit")).to_be_visible()
    expect(msg(b, "beach").get_by_role("button", name="Delete")).to_be_visible()
    expect(msg(b, "The meeting is at 3pm").locator(".actions")).to_have_count(0)
    expect(msg(a, "beach").get_by_role("button", name="Edit")).to_have_count(0)
    expect(msg(a, "beach").get_by_role("button", name="Delete")).to_be_visible()

    # Bob edits with the keyboard: Enter saves.
    msg(b, "beach").get_by_role("button", name="Edit").click()
    area = b.locator(".edit-form textarea")
    expect(area).to_be_focused()
    expect(area).to_have_value("I am so happy we are going to the beach!")
    area.fill("I miss the beach so much, I cried all night.")
    area.press("Enter")
    for page in (a, b):
        edited = msg(page, "cried all night")
        expect(edited.locator(".edited")).to_have_text("edited")
        # The edit is classified again and its emotion replaces the first.
        expect(edited.locator(".badge")).to_have_attribute("data-label", "sadness")
        expect(page.locator(".mood-list li[data-label=joy]")).to_have_attribute("data-count", "0")
        expect(page.locator(".mood-list li[data-label=sadness]")).to_have_attribute("data-count", "1")
    expect(b.locator(".edit-form")).to_have_count(0)
    found = audit(b, "room with edits")

    # Alice, the owner, deletes Bob's message, after confirming.
    msg(a, "cried all night").get_by_role("button", name="Delete").click()
    a.locator(".delete-confirm").get_by_role("button", name="Delete").click()
    for page in (a, b):
        expect(page.locator(".timeline .msg.deleted")).to_have_count(1)
        gone = page.locator(".timeline .msg.deleted")
        expect(gone).to_contain_text("This message was deleted.")
        expect(gone).not_to_contain_text("cried")
        expect(gone.locator(".badge")).to_have_count(0)
        expect(gone.locator(".actions")).to_have_count(0)
        # Only Alice's neutral message still counts in the mood.
        expect(page.locator(".mood-list li[data-label=sadness]")).to_have_attribute("data-count", "0")
        expect(page.locator(".mood-list li[data-label=neutral]")).to_have_attribute("data-count", "1")

    # Alice edits her own message, then both reload: history shows the same.
    msg(a, "The meeting is at 3pm").get_by_role("button", name="Edit").click()
    a.locator(".edit-form textarea").fill("The meeting is at 4pm")
    a.locator(".edit-form").get_by_role("button", name="Save").click()
    expect(msg(b, "The meeting is at 4pm").locator(".edited")).to_be_visible()
    send(b, "Oops, sorry. See you at four then!")
    expect(b.locator(".timeline .msg .badge")).to_have_count(2)
    expect(b.locator(".mood-list li[data-label=sadness]")).to_have_attribute("data-count", "1")
    msg(b, "See you at four").get_by_role("button", name="Edit").click()
    b.wait_for_timeout(1500)
    b.screenshot(path=str(DOCS / "web-chat-edits.png"))
    b.keyboard.press("Escape")
    expect(b.locator(".edit-form")).to_have_count(0)
    for page in (a, b):
        page.reload()
        expect(page.locator(".timeline .msg")).to_have_count(3)
        expect(page.locator(".timeline .msg.deleted")).to_contain_text("This message was deleted.")
        expect(msg(page, "The meeting is at 4pm").locator(".edited")).to_be_visible()
        expect(page.locator(".timeline")).not_to_contain_text("beach")
    found += audit(a, "room with a tombstone")
    assert not found, "axe-core found serious or critical violations:\n" + "\n".join(found)


def test_the_korean_interface_names_edit_and_delete(people):
    mina = people("mina_ko", locale="ko-KR")
    mina.signup_via_ui()
    p = mina.page
    create_room(p, "수정", 3)
    send(p, "안녕하세요")
    m = msg(p, "안녕하세요")
    expect(m.get_by_role("button", name="수정")).to_be_visible()
    m.get_by_role("button", name="삭제").click()
    p.locator(".delete-confirm").get_by_role("button", name="삭제").click()
    expect(p.locator(".timeline .msg.deleted")).to_contain_text("삭제된 메시지입니다.")
