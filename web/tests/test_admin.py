"""The admin console: an account made admin with the shared token (the
bootstrap) finds users by prefix, deletes and restores one, makes another
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
    p.screenshot(path=str(DOCS / "web-admin.png"))
    found = audit(p, "admin console")
    assert not found, "axe-core found serious or critical violations:\n" + "\n".join(found)
