"""Attachments in the chat room: a file picked or dropped is uploaded with
its progress shown, then sent with a message; images show inline in a box
of their own size (reserved before the bytes arrive), other files as
download links; a file over the server's limit is refused in the tray."""

import re
import struct
import zlib

from playwright.sync_api import expect

from conftest import DOCS
from test_a11y import audit
from test_chat import create_room, send

# A small limit, so that the refusal is quick to provoke.
SERVER_ARGS = ["--attachment-max-bytes", "1000000"]


def png(width, height):
    """A real PNG (a soft diagonal gradient), made without an imaging library."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows += bytes((90 + x * 140 // width, 140 + y * 90 // height, 230 - (x + y) * 60 // (width + height)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")


def drop(page, name, mime, text):
    """Drops a file on the room, as a file dragged from the desktop."""
    page.evaluate(
        """([name, mime, text]) => {
             const dt = new DataTransfer();
             dt.items.add(new File([text], name, { type: mime }));
             const main = document.querySelector('.room-main');
             for (const type of ['dragenter', 'dragover', 'drop']) {
               main.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
             }
           }""",
        [name, mime, text],
    )


def test_pick_drop_upload_send_and_download_files(people):
    alice = people("alice")
    bob = people("bob")
    alice.signup_via_ui()
    bob.signup_via_ui()
    a, b = alice.page, bob.page
    room_id = create_room(a, "Holiday photos", 5)
    b.goto("/#/rooms")
    b.reload()
    b.locator(f".directory li[data-room-id='{room_id}']").get_by_role("button", name="Join").click()
    b.wait_for_url(re.compile(room_id))
    expect(a.locator(".members li")).to_have_count(2)
    send(b, "Did you bring the camera?")

    # Every state the tray shows is recorded, to see the progress text.
    a.evaluate(
        """() => {
             window.trayStates = [];
             new MutationObserver(() => document.querySelectorAll('.tray-state')
               .forEach((s) => window.trayStates.push(s.textContent)))
               .observe(document.querySelector('.tray'), { subtree: true, childList: true, characterData: true });
           }"""
    )
    # The picker: the paper-clip button opens the file chooser.
    with a.expect_file_chooser() as chooser:
        a.get_by_role("button", name="Attach files").click()
    chooser.value.set_files(files=[{"name": "beach.png", "mimeType": "image/png", "buffer": png(480, 300)}])
    ready = a.locator(".tray-item.ready")
    expect(ready).to_have_count(1)
    expect(ready).to_contain_text("beach.png")
    expect(ready).to_contain_text("Ready to send")
    assert any(re.match(r"Uploading… \d+%", s) for s in a.evaluate("window.trayStates")), a.evaluate("window.trayStates")

    # Drag and drop: a text file joins the tray.
    drop(a, "packing list.txt", "text/plain", "towels\nsunscreen\n")
    expect(a.locator(".tray-item.ready")).to_have_count(2)
    send(a, "Yes! Here is the beach, and the list")
    expect(a.locator(".tray-item")).to_have_count(0)

    for page in (a, b):
        m = page.locator(".timeline .msg:not(.pending)").filter(has_text="Here is the beach")
        img = m.locator("img.att-img")
        # The image's box is reserved by its dimensions before it loads.
        expect(img).to_have_attribute("width", "480")
        expect(img).to_have_attribute("height", "300")
        expect(img).to_have_attribute("alt", "beach.png")
        page.wait_for_function("(img) => img.complete && img.naturalWidth === 480", arg=img.element_handle())
        link = m.locator("a.att-file")
        expect(link).to_contain_text("packing list.txt")

    # A download link saves the file under its name.
    link = b.locator("a.att-file").filter(has_text="packing list.txt")
    with b.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "packing list.txt"
    with open(download.value.path(), encoding="utf-8") as f:
        assert f.read() == "towels\nsunscreen\n"

    # Over the server's limit: refused in the tray, nothing sent.
    a.locator("#attach-input").set_input_files(
        files=[{"name": "huge.bin", "mimeType": "application/octet-stream", "buffer": b"\0" * 1_200_000}]
    )
    failed = a.locator(".tray-item.failed")
    expect(failed).to_contain_text("Too large")
    failed.get_by_role("button", name="Remove huge.bin").click()
    expect(a.locator(".tray-item")).to_have_count(0)

    # An image alone, without text.
    a.locator("#attach-input").set_input_files(
        files=[{"name": "sunset.png", "mimeType": "image/png", "buffer": png(300, 180)}]
    )
    expect(a.locator(".tray-item.ready")).to_have_count(1)
    a.locator("#composer").focus()
    a.keyboard.press("Enter")
    expect(b.locator("img.att-img[alt='sunset.png']")).to_have_attribute("height", "180")
    b.wait_for_function(
        "() => [...document.querySelectorAll('img.att-img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    b.wait_for_timeout(500)
    b.screenshot(path=str(DOCS / "web-chat-attachments.png"))
    found = audit(b, "room with attachments")

    # History after a reload shows the same files.
    b.reload()
    expect(b.locator("img.att-img")).to_have_count(2)
    expect(b.locator("img.att-img[alt='beach.png']")).to_have_attribute("width", "480")
    expect(b.locator("a.att-file")).to_contain_text("packing list.txt")
    assert not found, "axe-core found serious or critical violations:\n" + "\n".join(found)
