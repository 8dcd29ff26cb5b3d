"""The admin console: an account made admin with the shared token (the
bootstrap) sees the week's figures (sign-ups and messages per day as
charts, the emotion mix, totals, online now) and the audit of admin
actions, finds users by prefix, deletes and restores one, makes another
admin; a non-admin is told the page is not for them."""

import json
import urllib.request

from playwright.sync_api import expect

from conftest import DOCS, PASSWORD
from test_a11y import audit

TOKEN = "web-admin-token"
SERVER_ARGS = ["--admin-token", TOKEN]


def grant(server, user_id):
    req = urllib.request.Request(f"{server.url}/v1/admin/users/{user_id}/admin", method="PUT")
    req.add_header("x-admin-token", TOKEN)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["admin"] is True


def test_an_admin_finds_deletes_restores_and_grants(people, server):
    root = people("root")
    root.signup_via_ui()
    for name in ("tom", "tina", "zed"):
        server.signup(name)
    # Three messages today, one of them joyful.
    status, tom = server.call("POST", "/v1/auth/login", {"username": "tom", "password": PASSWORD})
    status, room = server.call("POST", "/v1/rooms", {"name": "busy"}, token=tom["access_token"])
    for i, text in enumerate(["what a wonderful day", "ok", "fine"]):
        sent = server.call("POST", f"/v1/rooms/{room['room_id']}/messages",
                           {"client_msg_id": f"m{i}", "text": text}, token=tom["access_token"])
        assert sent[0] == 202, sent
    p = root.page

    # Not an admin yet: the page says so, the account page has no link.
    p.goto("/#/admin")
    expect(p.locator(".admin-page .error")).to_have_text("Only admins can see this page.")
    p.goto("/#/account")
    expect(p.locator(".admin-link")).to_be_hidden()

    status, me = server.call("POST", "/v1/auth/login", {"username": "root", "password": PASSWORD})
    grant(server, me["user_id"])
    p.reload()
    expect(p.locator(".admin-link")).to_be_visible()
    p.locator(".admin-link").click()
    users = p.locator(".admin-users li")
    expect(users).to_have_count(4)
    p.fill("#user-search", "t")
    expect(users).to_have_count(2)
    tom = users.filter(has_text="tom")
    tom.get_by_role("button", name="Delete").click()
    expect(tom.locator(".tag.status-deleted")).to_have_text("deleted")
    assert server.call("POST", "/v1/auth/login", {"username": "tom", "password": PASSWORD})[0] == 401
    tom.get_by_role("button", name="Restore").click()
    expect(tom.locator(".tag.status-active")).to_have_text("active")
    tina = users.filter(has_text="tina")
    tina.get_by_role("button", name="Make admin").click()
    expect(tina.locator(".tag.admin")).to_have_text("admin")
    p.fill("#user-search", "")
    expect(users).to_have_count(4)
    expect(users.filter(has_text="root").locator(".online")).to_be_visible()

    # The week's figures: four accounts signed up today, three messages, the
    # emotion mix of those messages, root online now.
    stats = p.locator(".admin-stats")
    expect(stats.locator(".tile.users .tile-n")).to_have_text("4")
    expect(stats.locator(".tile.online .tile-n")).to_have_text("1")
    signups = stats.locator("[data-chart=signups_per_day] svg")
    expect(signups).to_have_attribute("data-total", "4")
    expect(signups.locator("rect.bar")).to_have_count(7)
    expect(signups.locator("rect.bar").last).to_have_attribute("data-n", "4")
    messages = stats.locator("[data-chart=messages_per_day] svg")
    expect(messages).to_have_attribute("data-total", "3", timeout=15000)
    expect(stats.locator(".emotion-mix li[data-label=joy]")).to_have_attribute("data-count", "1", timeout=15000)

    # The audit: what root did, newest first, in words.
    audit_rows = p.locator(".admin-audit .audit li")
    expect(audit_rows).to_have_count(4, timeout=15000)
    expect(audit_rows.nth(0)).to_have_attribute("data-action", "admin_granted")
    expect(audit_rows.nth(0)).to_contain_text("root made tina an admin")
    expect(audit_rows.filter(has_text="root deleted tom")).to_have_count(1)
    expect(audit_rows.filter(has_text="root restored tom")).to_have_count(1)
    expect(audit_rows.nth(3)).to_contain_text("the admin token made root an admin")
    p.screenshot(path=str(DOCS / "web-admin.png"))
    found = audit(p, "admin console")
    assert not found, "axe-core found serious or critical violations:\n" + "\n".join(found)
