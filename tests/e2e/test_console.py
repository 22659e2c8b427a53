"""The operators' console in a real browser: Debian's Chromium driven by Playwright, against a
real `serve` on moto. Screenshots of each page are saved under the target directory
(console-screenshots/) for a reviewer to look at."""

import datetime
import json
import re
import urllib.parse

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import ROOT, TARGET, World, aws, eventually, rules_of, unique

SHOTS = TARGET / "console-screenshots"
CHROMIUM = "/usr/bin/chromium"
HOSTILE = "<img src=x onerror=alert(1)>"
# As a root process on a machine with no network beyond loopback: no sandbox (root), and none
# of Chromium's own calls home, which this machine would refuse.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions"]


class Browser:
    """One page in Chromium, watching every request, error and dialog it makes."""

    def __init__(self, server, playwright, width=1280, height=900):
        self.server = server
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        self.context = self.browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.requests = []
        self.errors = []
        self.dialogs = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("dialog", self.on_dialog)
        self.page.set_default_timeout(15000)

    def on_dialog(self, dialog):
        self.dialogs.append((dialog.type, dialog.message))
        if dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()

    def open(self, hash_=""):
        self.page.goto(self.server.url("/" + hash_))

    def sign_in(self, token):
        """Signs in with the keyboard alone: the token field has focus, Enter submits."""
        self.open()
        expect(self.page.locator("#view-signin")).to_be_visible()
        expect(self.page.locator("#token")).to_be_focused()
        self.page.keyboard.type(token)
        self.page.keyboard.press("Enter")
        expect(self.page.locator("#view-access")).to_be_visible()

    def shot(self, name):
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self):
        self.browser.close()

    def check_clean(self):
        """No request left for another host, no script error, no alert."""
        origin = urllib.parse.urlsplit(self.server.base)
        foreign = [u for u in self.requests if urllib.parse.urlsplit(u)[:2] != origin[:2]]
        assert self.requests, "the page made no request at all"
        assert foreign == [], f"requests left for other hosts: {foreign}"
        # A 401 or 4xx answer shows up as a failed resource load in the console; that is the
        # API answering, not the page failing.
        errors = [e for e in self.errors if "Failed to load resource" not in e]
        assert errors == [], f"the page logged errors: {errors}"
        assert [d for d in self.dialogs if d[0] != "confirm"] == [], f"the page opened dialogs: {self.dialogs}"


@pytest.fixture
def browse():
    """Opens browsers signed in to a server with a token; after the test, checks that none
    sent a request to another host, logged a script error or opened an alert, and closes them."""
    browsers = []
    with sync_playwright() as playwright:
        def open_(server, token, width=1280, height=900):
            b = Browser(server, playwright, width, height)
            browsers.append(b)
            b.sign_in(token)
            return b

        try:
            yield open_
            for b in browsers:
                b.check_clean()
        finally:
            for b in browsers:
                b.close()


def test_my_access_opens_counts_down_and_closes(tmp_path, serve, browse):
    world = World(tmp_path)
    server = serve(world)
    token = world.token("carol", "self-service")
    b = browse(server, token)
    page = b.page
    expect(page.locator("#access-address")).to_have_text("127.0.0.1/32")
    # Signing in asks who we are once, and showing My access asks nothing more.
    assert [urllib.parse.urlsplit(u).path for u in b.requests].count("/connection") == 1, b.requests
    expect(page.locator("#who")).to_have_text("carol")
    expect(page.locator("#nav a[data-view=grants]")).to_be_hidden()  # not an admin
    expect(page.locator("#access-state")).to_contain_text("Closed")
    expect(page.locator("#access-open")).to_have_text("Open for 1 h")
    page.click("#access-open")
    expect(page.locator("#notice")).to_contain_text("Opened 127.0.0.1/32 in dev")
    expect(page.locator("#access-state")).to_contain_text("Open")
    assert ("127.0.0.1/32", 80, "pc:dev carol: self-service") in rules_of(world.group)
    countdown = page.locator("#access-countdown")
    first = countdown.inner_text()
    assert re.fullmatch(r"(59m|1h 0m) \d+s", first), first
    eventually(lambda: countdown.inner_text() != first, "the countdown to change", timeout=5)
    b.shot("access-open")
    page.click("#access-close")
    expect(page.locator("#notice")).to_contain_text("Closed 127.0.0.1/32 in dev")
    expect(page.locator("#access-state")).to_contain_text("Closed")
    assert not [r for r in rules_of(world.group) if r[0] == "127.0.0.1/32"]
    b.shot("access-closed")


def test_grants_add_remove_refusal_and_hostile_text(tmp_path, serve, browse):
    world = World(tmp_path)
    server = serve(world)
    token = world.token("ops")
    b = browse(server, token)
    page = b.page
    page.click("#nav a[data-view=grants]")
    expect(page.locator("#view-grants")).to_be_visible()
    expect(page.locator("#grants-empty")).to_be_visible()

    # A refusal is shown in words, and nothing is added.
    page.fill("#grant-cidr", "0.0.0.0/0")
    page.click("#grant-form button[type=submit]")
    expect(page.locator("#error")).to_contain_text("whole internet")
    expect(page.locator("#error")).to_contain_text("HTTP 400")
    b.shot("grants-refused")

    # A hostile description is stored and shown as text.
    page.fill("#grant-cidr", "198.51.100.7")
    page.fill("#grant-ttl", "2h")
    page.fill("#grant-description", HOSTILE)
    page.click("#grant-form button[type=submit]")
    expect(page.locator("#notice")).to_contain_text("Added 198.51.100.7/32 in dev")
    row = page.locator("#grants-body tr", has_text="198.51.100.7/32")
    expect(row).to_have_count(1)
    expect(row.locator("td[data-label=Description]")).to_have_text(HOSTILE)
    expect(row.locator("td[data-label=Source]")).to_have_text("manual")
    expect(row.locator("td[data-label=Owner]")).to_have_text("ops")
    assert page.locator("#grants-body img").count() == 0, "the description became markup"
    expect(row.locator("td[data-label='Time left'] time")).to_have_text(re.compile(r"^1h 59m \d+s$|^2h 0m \d+s$"))
    assert any(r[0] == "198.51.100.7/32" for r in rules_of(world.group))
    b.shot("grants")

    # Removal asks first, then the rule goes.
    row.get_by_role("button", name="Remove 198.51.100.7/32 from dev").click()
    expect(page.locator("#notice")).to_contain_text("Removed 198.51.100.7/32 from dev")
    expect(page.locator("#grants-empty")).to_be_visible()
    assert ("confirm", "Remove 198.51.100.7/32 from dev? Its rules are revoked at once.") in b.dialogs
    assert not any(r[0] == "198.51.100.7/32" for r in rules_of(world.group))


def test_audit_pages_and_filters(tmp_path, serve, browse):
    world = World(tmp_path)
    world.config.write_text("[connection]\nrate_limit_per_minute = 1000\n")
    server = serve(world)
    token = world.token("ops")
    http = server.session(token)
    # 55 refusals and a token creation: more than one page of 50.
    for i in range(55):
        r = http.post(server.url("/v1/grants"), json={"cidr": f"10.{i}.0.0/16", "ttl": "1h"})
        assert r.status_code == 400, r.text
    b = browse(server, token)
    page = b.page
    page.click("#nav a[data-view=audit]")
    rows = page.locator("#audit-body tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#audit-page")).to_have_text("Page 1")
    expect(page.locator("#audit-newer")).to_be_disabled()
    newest = rows.first.get_attribute("data-id")
    expect(rows.first.locator("td[data-label=Address]")).to_have_text("10.54.0.0/16")
    b.shot("audit")
    page.click("#audit-older")
    expect(page.locator("#audit-page")).to_have_text("Page 2")
    expect(rows).to_have_count(6)  # five refusals and the token's creation
    expect(rows.last.locator("td[data-label=Action]")).to_have_text("token-created")
    expect(page.locator("#audit-older")).to_be_disabled()
    page.click("#audit-newer")
    expect(page.locator("#audit-page")).to_have_text("Page 1")
    expect(rows.first).to_have_attribute("data-id", newest)

    # Filters: by action and by user.
    page.select_option("#audit-action", "token-created")
    page.click("#audit-form button[type=submit]")
    expect(rows).to_have_count(1)
    page.select_option("#audit-action", "refused")
    page.fill("#audit-user", "somebody-else")
    page.click("#audit-form button[type=submit]")
    expect(page.locator("#audit-empty")).to_be_visible()
    page.fill("#audit-user", "ops")
    page.click("#audit-form button[type=submit]")
    expect(rows).to_have_count(50)


def test_status_and_a_revoked_token_returns_to_sign_in(tmp_path, serve, browse):
    world = World(tmp_path)
    server = serve(world)
    token = world.token("ops")
    b = browse(server, token)
    page = b.page
    page.click("#nav a[data-view=status]")
    facts = page.locator("#status-facts")
    expect(facts).to_contain_text("(this replica)")
    expect(facts).to_contain_text("Outbox backlog")
    expect(facts).to_contain_text("Overdue expiries")
    b.shot("status")

    # The token is revoked behind the console's back: the next call returns to sign-in.
    token_id = [line.split()[0] for line in world.cli("token", "list").stdout.splitlines() if " ops " in f" {line} "][0]
    world.cli("token", "revoke", token_id)
    page.click("#status-reload")
    expect(page.locator("#view-signin")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("The server did not accept the token")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.context.cookies() == [], "the token never goes into a cookie"
    assert all("pct_" not in u for u in b.requests), "the token never goes into a URL"


def test_keyboard_only_and_a_phone_width_screen(tmp_path, serve, browse):
    world = World(tmp_path)
    server = serve(world)
    token = world.token("ops")
    world.cli("add", "203.0.113.9", "--ttl", "1d", "--description", "phone check", "--as", "ops")
    b = browse(server, token, width=375, height=740)
    page = b.page
    # Tab from the page's start to the Grants link and follow it with Enter.
    page.locator("body").focus()
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.dataset.view") == "grants":
            break
    else:
        pytest.fail("the Grants link cannot be reached with Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#view-grants")).to_be_visible()
    expect(page.locator("#grants-title")).to_be_focused()
    expect(page.locator("#grants-body tr")).to_have_count(1)
    # Nothing is wider than the screen: tables become one card per row.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    b.shot("grants-phone")
    page.click("#nav a[data-view=access]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    b.shot("access-phone")


def cloudtrail_addition(group, rule_id, cidr, port, by):
    """fixtures/cloudtrail-authorize-ingress.json, made about one rule of `group`."""
    event = json.loads((ROOT / "fixtures" / "cloudtrail-authorize-ingress.json").read_text())
    detail = event["detail"]
    detail["eventID"] = unique("evt")
    detail["eventTime"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    detail["userIdentity"]["arn"] = by
    detail["requestParameters"]["groupId"] = group
    perm = detail["requestParameters"]["ipPermissions"]["items"][0]
    perm.update({"fromPort": port, "toPort": port, "ipRanges": {"items": [{"cidrIp": cidr}]}})
    rule = detail["responseElements"]["securityGroupRuleSet"]["items"][0]
    rule.update({"groupId": group, "securityGroupRuleId": rule_id, "cidrIpv4": cidr, "fromPort": port, "toPort": port})
    rule.pop("description", None)
    return event


def test_a_change_request_is_approved_for_24_hours_from_the_console(tmp_path, serve, browse):
    world = World(tmp_path)
    ec2 = aws("ec2")
    guarded = ec2.create_security_group(GroupName=unique("sg"), Description="guarded")["GroupId"]
    world.config.write_text(f"""
[guard]
groups = ["{guarded}"]
own_principals = ["arn:aws:sts::123456789012:assumed-role/portcullis/*"]
approvers = ["ops"]
[[guard.targets]]
region = "us-east-1"
""")
    server = serve(world)
    token = world.token("ops")
    # Alice opens SSH by hand; CloudTrail's event reaches portcullis, which reverts it.
    ec2.authorize_security_group_ingress(GroupId=guarded, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}])
    rule_id = [r["SecurityGroupRuleId"] for r in ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [guarded]}])["SecurityGroupRules"] if r.get("FromPort") == 22][0]
    event = cloudtrail_addition(guarded, rule_id, "203.0.113.0/24", 22, "arn:aws:iam::123456789012:user/alice")
    # The rule's description carries a right-to-left override, as anyone may write in EC2.
    event["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["description"] = "vendor \u202ekcatta"
    answer = server.session(token).post(server.url("/v1/events"), json=event)
    assert answer.status_code == 200 and answer.json()["outcome"] == "reverted", answer.text
    assert not [r for r in rules_of(guarded) if r[1] == 22], "reverted"

    b = browse(server, token)
    page = b.page
    page.click("#nav a[data-view=requests]")
    card = page.locator("#requests-list article")
    expect(card).to_have_count(1)
    expect(card).to_contain_text(f"{guarded} in us-east-1")
    expect(card).to_contain_text("arn:aws:iam::123456789012:user/alice")
    expect(card).to_contain_text("tcp 22 from 203.0.113.0/24")
    # The override is shown as its code point, never applied to the text around it.
    expect(card).to_contain_text("vendor [U+202E]kcatta")
    assert not page.evaluate("document.body.textContent.includes('\\u202e')"), "a bidirectional control reached the page"
    b.shot("requests")
    card.get_by_role("button", name="Approve for 24 h").click()
    expect(page.locator("#notice")).to_contain_text("is now applied")
    expect(page.locator("#requests-empty")).to_be_visible()
    rules = [r for r in rules_of(guarded) if r[1] == 22]
    assert len(rules) == 1 and rules[0][0] == "203.0.113.0/24" and rules[0][2].startswith("pc:timed/"), rules
    page.select_option("#requests-status", "applied")
    expect(card).to_contain_text("Timed rule until")


def test_the_content_security_policy_holds_in_the_browser(tmp_path, serve, browse):
    """What the Content-Security-Policy header means is what Chromium does with it: text that
    reached the page as markup cannot run, style or phone anywhere, and the console cannot be
    framed. (Playwright's evaluate runs outside the page's policy, as an extension would; what it
    inserts is subject to the policy, as markup that slipped through escaping would be.)"""
    world = World(tmp_path)
    server = serve(world)
    b = browse(server, world.token("ops"))
    page = b.page
    outcome = page.evaluate("""async () => {
        const violations = [];
        document.addEventListener("securitypolicyviolation", e => violations.push(e.effectiveDirective));
        const inline = document.createElement("script");
        inline.textContent = "window.__inline_ran = true";
        document.body.append(inline);
        const handler = document.createElement("div");
        handler.setAttribute("onclick", "window.__handler_ran = true");
        document.body.append(handler);
        handler.click();
        const style = document.createElement("style");
        style.textContent = "body { --pc-injected: 1 }";
        document.head.append(style);
        let fetched = "sent";
        try { await fetch("http://127.0.0.2:9/steal"); } catch (e) { fetched = "refused"; }
        // Violation reports are events queued after the refusal: wait for them, with a deadline.
        const want = ["connect-src", "script-src-attr", "script-src-elem", "style-src-elem"];
        for (const until = Date.now() + 5000; Date.now() < until;) {
            if (want.every(d => violations.includes(d))) break;
            await new Promise(r => setTimeout(r, 20));
        }
        return {
            inline: window.__inline_ran === true,
            handler: window.__handler_ran === true,
            styled: getComputedStyle(document.body).getPropertyValue("--pc-injected").trim() === "1",
            fetched,
            violations: [...new Set(violations)].sort(),
        };
    }""")
    # The refusals are the browser saying so on the console: they are this test's, not the page's.
    b.errors = [e for e in b.errors if "Content Security Policy" not in e]
    assert outcome["inline"] is False, outcome
    assert outcome["handler"] is False, outcome
    assert outcome["styled"] is False, outcome
    assert outcome["fetched"] == "refused", outcome
    for directive in ["connect-src", "script-src-attr", "script-src-elem", "style-src-elem"]:
        assert directive in outcome["violations"], outcome
    # The console inside another origin's frame stays blank (frame-ancestors 'none').
    framer = b.context.new_page()
    framer.set_content(f'<iframe id="f" onload="this.dataset.loaded=1" src="{server.url("/")}"></iframe>')
    framer.wait_for_function("document.getElementById('f').dataset.loaded === '1'")
    frame = framer.frame_locator("#f")
    assert frame.locator("#view-signin").count() == 0, "the console rendered inside a frame"
    framer.close()
    b.requests = [u for u in b.requests if "127.0.0.2" not in u]
