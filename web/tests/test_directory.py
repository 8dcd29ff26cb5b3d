"""The room directory's name filter is the server's (`GET /v1/rooms?q=`):
it finds a room beyond the pages loaded so far, ignoring case."""

from playwright.sync_api import expect

SERVER_ARGS = ["--room-limit", "off"]


def test_the_directory_filter_finds_rooms_beyond_the_loaded_pages(people, server):
    server.signup("zed")
    token = server.login("zed")["access_token"]
    for i in range(60):
        assert server.call("POST", "/v1/rooms", {"name": f"Hay {i:02}"}, token)[0] == 201
    # Room ids are random: make zebra rooms until one is beyond the first
    # page of 50 (by id), which the page has not loaded.
    zebras = []
    while True:
        status, room = server.call("POST", "/v1/rooms", {"name": f"Zebra crossing {len(zebras)}"}, token)
        assert status == 201
        zebras.append(room["room_id"])
        ids = sorted(r["room_id"] for r in server.call("GET", "/v1/rooms?limit=1000")[1]["rooms"])
        if room["room_id"] > ids[49]:
            beyond = room["room_id"]
            break
    total = len(ids)

    zed = people("zed")
    p = zed.page
    asked = []
    p.on("request", lambda r: "/v1/rooms?" in r.url and asked.append(r.url))
    zed.login_via_ui()
    rows = p.locator(".directory li")
    expect(rows).to_have_count(50)  # the first page
    expect(p.get_by_role("button", name="Load more")).to_be_visible()
    expect(p.locator(f".directory li[data-room-id='{beyond}']")).to_have_count(0)

    p.fill("#room-filter", "ZEBRA")  # any case
    expect(rows).to_have_count(len(zebras))
    expect(p.locator(f".directory li[data-room-id='{beyond}']")).to_be_visible()
    ids_shown = [li.get_attribute("data-room-id") for li in rows.all()]
    assert ids_shown == sorted(zebras), ids_shown
    assert any("q=ZEBRA" in u for u in asked), asked
    expect(p.get_by_role("button", name="Load more")).to_be_hidden()

    p.fill("#room-filter", "no such room")
    expect(p.locator(".directory-page")).to_contain_text("No room matches.")
    expect(rows).to_have_count(0)
    p.fill("#room-filter", "")
    expect(rows).to_have_count(50)
    p.get_by_role("button", name="Load more").click()
    expect(rows).to_have_count(total)
