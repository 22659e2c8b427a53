// portcullis console. Served by portcullis itself under a Content-Security-Policy that allows
// no inline script and no other host. Every text that came from a user or the server is put
// on the page through setText (textContent, hidden characters shown), never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "portcullis.token";
  const AUDIT_PAGE = 50;

  // A failure in a report: where (a group, a region, an Auto Scaling group or an instance), then
  // what went wrong.
  function failureText(f) {
    if (typeof f === "string") return f;
    const t = f.target || {};
    const where = t.group ? t.group.group_id + " (" + t.group.region + ")"
      : t.region ? "region " + t.region
      : t.asg ? t.asg.asg + " (" + t.asg.region + ")"
      : t.instance ? t.instance.instance_id + " (" + t.instance.region + ")"
      : "";
    return (where ? where + ": " : "") + f.message;
  }

  // The audit log's actions (core::Action::ALL; a test in routes/console.rs keeps this in step).
  const ACTIONS = [
    "added", "refreshed", "removed", "expired", "drift-repaired", "refused", "approved", "denied",
    "adopted", "token-created", "token-revoked", "lifecycle-completed", "change-reverted",
    "change-requested", "change-approved", "change-denied", "change-expired", "change-applied",
    "change-failed", "change-reported", "break-glass", "baseline-recorded",
  ];
  const SOURCES = { "manual": "manual", "self-service": "self-service", "asg-member": "member", "approved-change": "approved" };

  const $ = (id) => document.getElementById(id);
  let me = null;           // GET /connection's answer: who we are, where from, what we may see
  let guardTerms = null;   // the terms guard is configured with (GET /v1/status), read once per sign-in
  let skewMs = 0;          // the server's clock less ours, from each answer's Date header
  let auditCursors = [];   // the `before` of each audit page shown so far (null: the newest)
  let statusTimer = null;

  // ---- talking to the server -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json", "Authorization": "Bearer " + token() };
    const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "unreachable", "The server could not be reached (" + err.message + "). Check your connection and try again.");
    }
    const date = Date.parse(response.headers.get("Date") || "");
    if (!Number.isNaN(date)) {
      skewMs = date - Date.now();
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      const message = error.message || response.statusText || "the request failed";
      const failure = new ApiError(response.status, error.code || "http_" + response.status, message);
      if (response.status === 401) {
        signOut("The server did not accept the token (" + message + "). Sign in again with a valid one.");
      }
      throw failure;
    }
    return { status: response.status, data };
  }

  function describe(err) {
    if (err instanceof ApiError) {
      return err.status ? err.message + " (HTTP " + err.status + ", " + err.code + ")" : err.message;
    }
    return String(err && err.message ? err.message : err);
  }

  // ---- messages --------------------------------------------------------------------------

  function showError(err) {
    if (err instanceof ApiError && err.status === 401) {
      return; // signOut already said why
    }
    const box = $("error");
    setText(box, describe(err));
    box.hidden = false;
    $("notice").hidden = true;
  }

  function showNotice(text) {
    const box = $("notice");
    setText(box, text);
    box.hidden = false;
    $("error").hidden = true;
  }

  function clearMessages() {
    $("error").hidden = true;
    $("notice").hidden = true;
  }

  // ---- time ------------------------------------------------------------------------------

  function serverNow() {
    return Date.now() + skewMs;
  }

  function left(ms) {
    if (ms <= 0) {
      return "expired";
    }
    let s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d > 0) return d + "d " + h + "h " + m + "m";
    if (h > 0) return h + "h " + m + "m " + s + "s";
    return m + "m " + s + "s";
  }

  function ago(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function utc(iso) {
    const t = new Date(iso);
    return Number.isNaN(t.getTime()) ? iso : t.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  // A <time> that counts down to `iso` (updated every second by tick()).
  function countdown(iso) {
    const el = document.createElement("time");
    el.dateTime = iso;
    el.title = visible(utc(iso));
    el.dataset.expires = iso;
    setText(el, left(Date.parse(iso) - serverNow()));
    return el;
  }

  function tick() {
    for (const el of document.querySelectorAll("[data-expires]")) {
      const ms = Date.parse(el.dataset.expires) - serverNow();
      setText(el, left(ms));
      if (ms <= 0 && el.dataset.onexpire === "access" && !el.dataset.fired) {
        el.dataset.fired = "1";
        loadAccess().catch(showError);
      }
    }
  }

  // ---- building the page -----------------------------------------------------------------

  // Characters that reorder or hide text (bidirectional controls, zero-width marks): shown as
  // their code point, so text from any source (a rule's description, a reason, a name) reads
  // on the page as it is stored and cannot disguise itself.
  const HIDDEN = /[\u061C\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]/g;

  function visible(text) {
    return String(text).replace(HIDDEN, (c) => "[U+" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "]");
  }

  // The one way text reaches the page.
  function setText(node, text) {
    node.textContent = visible(text);
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) setText(node, text);
    if (className) node.className = className;
    return node;
  }

  function cell(label, content, className) {
    const td = document.createElement("td");
    if (label) td.dataset.label = label;
    if (className) td.className = className;
    if (content instanceof Node) td.append(content);
    else setText(td, content === undefined || content === null ? "" : content);
    return td;
  }

  function button(text, onClick, className) {
    const b = el("button", text, className);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  function options(select, values, selected, allLabel) {
    select.replaceChildren();
    if (allLabel) {
      select.append(new Option(allLabel, ""));
    }
    for (const v of values) {
      select.append(new Option(v, v, false, v === selected));
    }
  }

  function ttlWords(ttl) {
    const m = /^(\d+)([smhd])$/.exec(ttl || "");
    if (!m) return ttl;
    return m[1] + " " + { s: "s", m: "min", h: "h", d: "d" }[m[2]];
  }

  function owner(o) {
    if (!o) return "";
    return o.display_name ? o.display_name + " (" + o.name + ")" : o.name;
  }

  function source(grant) {
    const label = SOURCES[grant.source] || grant.source;
    return grant.instance ? label + " " + grant.instance : label;
  }

  function rule(r) {
    const s = r.source || {};
    const kind = Object.keys(s)[0];
    const from = kind === "group" ? "group " + s.group : s[kind];
    let ports = "";
    if (r.from_port !== undefined && r.from_port !== null) {
      ports = r.from_port === r.to_port ? " " + r.from_port : " " + r.from_port + "-" + r.to_port;
    }
    const proto = r.protocol === "-1" ? "all traffic" : r.protocol;
    return proto + ports + " from " + from + (r.description ? " — " + r.description : "");
  }

  // ---- views -----------------------------------------------------------------------------

  const VIEWS = ["signin", "access", "grants", "audit", "requests", "status"];
  const ADMIN_VIEWS = ["grants", "audit", "requests", "status"];

  function show(view) {
    for (const v of VIEWS) {
      $("view-" + v).hidden = v !== view;
    }
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.view === view) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const heading = $(view + "-title");
    if (heading) heading.focus();
    if (statusTimer) {
      clearInterval(statusTimer);
      statusTimer = null;
    }
  }

  async function route() {
    clearMessages();
    if (!token()) {
      show("signin");
      $("token").focus();
      return;
    }
    let view = (location.hash || "#access").slice(1);
    if (!VIEWS.includes(view) || view === "signin") view = "access";
    try {
      // Who we are is asked once per sign-in; My access asks again itself, to show it fresh.
      const known = me !== null;
      if (!known) await whoami();
      if (ADMIN_VIEWS.includes(view) && !me.admin) {
        view = "access";
        showError(new ApiError(403, "not_admin", "That page needs an admin token."));
      }
      show(view);
      if (view === "access") await (known ? loadAccess() : renderAccess());
      if (view === "grants") await loadGrants();
      if (view === "audit") {
        auditCursors = [null];
        await loadAudit();
      }
      if (view === "requests") await loadRequests();
      if (view === "status") {
        await loadStatus();
        statusTimer = setInterval(() => loadStatus().catch(showError), 10000);
      }
    } catch (err) {
      showError(err);
      // A server that cannot be reached at start: show the page the error is about.
      if (token() && VIEWS.every((v) => $("view-" + v).hidden)) show(view);
    }
  }

  // -- sign in / out

  async function signIn(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) {
      showError(new ApiError(0, "empty", "Paste an API token first."));
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    me = null;
    if (!location.hash || location.hash === "#signin") location.hash = "#access";
    else await route();
  }

  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    guardTerms = null;
    $("nav").hidden = true;
    $("signout").hidden = true;
    setText($("who"), "");
    show("signin");
    if (reason) {
      const box = $("error");
      setText(box, reason);
      box.hidden = false;
    }
  }

  // Who the token is, and what it may see: GET /connection.
  async function whoami(env) {
    const query = env ? "?env=" + encodeURIComponent(env) : "";
    me = (await api("GET", "/connection" + query)).data;
    $("nav").hidden = false;
    $("signout").hidden = false;
    for (const a of document.querySelectorAll("#nav a[data-admin]")) a.hidden = !me.admin;
    setText($("who"), me.principal + (me.admin ? " (admin)" : ""));
    return me;
  }

  // -- my access

  async function loadAccess(env) {
    await whoami(env || $("access-env").value || me.environment);
    renderAccess();
  }

  // My access as `me` says it is.
  function renderAccess() {
    options($("access-env"), me.environments, me.environment);
    setText($("access-address"), me.address);
    setText($("access-open"), (me.grant ? "Renew for " : "Open for ") + ttlWords(me.ttl));
    const state = $("access-state");
    state.replaceChildren();
    if (me.grant && me.grant.expires_at) {
      const timer = countdown(me.grant.expires_at);
      timer.dataset.onexpire = "access";
      timer.id = "access-countdown";
      state.append(el("span", "Open", "good"), " — closes in ", timer);
      $("access-close").disabled = false;
    } else if (me.grant) {
      state.append(el("span", "Open", "good"), " (no expiry)");
      $("access-close").disabled = false;
    } else {
      state.append(el("span", "Closed", "warn"));
      $("access-close").disabled = true;
    }
  }

  async function changeAccess(method) {
    clearMessages();
    const env = $("access-env").value;
    try {
      const { data } = await api(method, "/connection?env=" + encodeURIComponent(env));
      const failed = (data.failures || []).length;
      const verb = method === "POST" ? (data.result === "refreshed" ? "Renewed" : "Opened") : "Closed";
      showNotice(verb + " " + data.address + " in " + data.environment + (failed ? "; some groups failed: " + data.failures.join("; ") : "."));
      const targets = (data.targets || []).map((t) => (t.group_id || t.region) + ": " + t.outcome);
      setText($("access-targets"), targets.length ? "Groups: " + targets.join(", ") : "");
    } catch (err) {
      showError(err);
    }
    await loadAccess(env).catch(showError);
  }

  // -- grants

  async function loadGrants() {
    const filter = $("grants-env");
    const chosen = filter.value;
    options(filter, me.environments, chosen, "every environment");
    options($("grant-env"), me.environments, $("grant-env").value || me.environment);
    const query = filter.value ? "?env=" + encodeURIComponent(filter.value) : "?all=true";
    const grants = (await api("GET", "/v1/grants" + query)).data;
    grants.sort((a, b) => (a.environment + a.cidr).localeCompare(b.environment + b.cidr));
    const body = $("grants-body");
    body.replaceChildren();
    for (const g of grants) {
      const tr = document.createElement("tr");
      const remove = button("Remove", () => removeGrant(g), "danger");
      remove.setAttribute("aria-label", visible("Remove " + g.cidr + " from " + g.environment));
      tr.append(
        cell("Address", g.cidr, "mono"),
        cell("Environment", g.environment),
        cell("Owner", owner(g.owner)),
        cell("Source", source(g)),
        cell("Description", g.description, "wrap"),
        cell("Time left", g.expires_at ? countdown(g.expires_at) : "no expiry"),
        cell("", g.source === "asg-member" ? "" : remove),
      );
      body.append(tr);
    }
    $("grants-empty").hidden = grants.length > 0;
    setText($("grants-count"), grants.length + (grants.length === 1 ? " grant" : " grants"));
  }

  async function addGrant(event) {
    event.preventDefault();
    clearMessages();
    const body = {
      cidr: $("grant-cidr").value.trim(),
      env: $("grant-env").value,
      ttl: $("grant-ttl").value.trim() || undefined,
      description: $("grant-description").value,
    };
    try {
      const { status, data } = await api("POST", "/v1/grants", body);
      const g = data.grant;
      const failures = data.failures || [];
      showNotice((status === 201 ? "Added " : "Refreshed ") + g.cidr + " in " + g.environment +
        (failures.length ? "; some groups failed: " + failures.join("; ") : "."));
      $("grant-cidr").value = "";
      $("grant-description").value = "";
    } catch (err) {
      showError(err);
    }
    await loadGrants().catch(showError);
  }

  async function removeGrant(g) {
    if (!window.confirm("Remove " + g.cidr + " from " + g.environment + "? Its rules are revoked at once.")) return;
    clearMessages();
    try {
      const path = "/v1/grants/" + encodeURIComponent(g.environment) + "/" + encodeURIComponent(g.cidr);
      const { data } = await api("DELETE", path);
      const failures = data.failures || [];
      showNotice("Removed " + g.cidr + " from " + g.environment + (failures.length ? "; some groups failed: " + failures.join("; ") : "."));
    } catch (err) {
      showError(err);
    }
    await loadGrants().catch(showError);
  }

  // -- audit

  function auditQuery(before) {
    const q = new URLSearchParams({ limit: String(AUDIT_PAGE + 1) });
    if ($("audit-env").value) q.set("env", $("audit-env").value);
    if ($("audit-action").value) q.set("action", $("audit-action").value);
    if ($("audit-user").value.trim()) q.set("user", $("audit-user").value.trim());
    if (before !== null && before !== undefined) q.set("before", String(before));
    return "/v1/audit?" + q.toString();
  }

  async function loadAudit() {
    if ($("audit-env").options.length === 0) {
      options($("audit-env"), me.environments, "", "every environment");
      options($("audit-action"), ACTIONS, "", "any action");
    }
    const before = auditCursors[auditCursors.length - 1];
    const events = (await api("GET", auditQuery(before))).data;
    const more = events.length > AUDIT_PAGE;
    const page = events.slice(0, AUDIT_PAGE);
    const body = $("audit-body");
    body.replaceChildren();
    for (const e of page) {
      const tr = document.createElement("tr");
      tr.dataset.id = String(e.id);
      tr.append(
        cell("Time", utc(e.at), "mono"),
        cell("Action", e.action),
        cell("Environment", e.environment),
        cell("User", e.actor),
        cell("Via", e.interface),
        cell("Address", e.cidr || "", "mono"),
        cell("Details", e.reason, "wrap"),
      );
      body.append(tr);
    }
    $("audit-empty").hidden = page.length > 0;
    $("audit-newer").disabled = auditCursors.length <= 1;
    $("audit-older").disabled = !more;
    $("audit-older").dataset.next = page.length ? String(page[page.length - 1].id) : "";
    setText($("audit-page"), "Page " + auditCursors.length);
  }

  // -- change requests

  async function loadRequests() {
    if (guardTerms === null) {
      const { data } = await api("GET", "/v1/status");
      guardTerms = { temporary: data.temporary_approval || null };
    }
    const status = $("requests-status").value;
    const list = $("requests-list");
    let requests;
    try {
      requests = (await api("GET", "/v1/requests?status=" + encodeURIComponent(status))).data;
    } catch (err) {
      if (err instanceof ApiError && err.code === "guard_not_configured") {
        list.replaceChildren(el("p", "Guard is not configured on this server, so there are no change requests.", "hint"));
        $("requests-empty").hidden = true;
        return;
      }
      throw err;
    }
    requests.sort((a, b) => b.created_at.localeCompare(a.created_at));
    list.replaceChildren();
    for (const r of requests) list.append(requestCard(r));
    $("requests-empty").hidden = requests.length > 0;
  }

  function requestCard(r) {
    const card = el("article", null, "card");
    card.append(el("h2", r.group_id + " in " + r.region + (r.account ? " (account " + r.account + ")" : "")));
    const facts = el("dl", null, "facts");
    const fact = (name, value) => facts.append(el("dt", name), value instanceof Node ? wrap(value) : el("dd", value));
    const wrap = (node) => {
      const dd = document.createElement("dd");
      dd.append(node);
      return dd;
    };
    fact("Status", r.status);
    fact("Made by", r.requester + (r.requester_user ? " (" + r.requester_user + ")" : ""));
    fact("Filed", utc(r.created_at));
    if (r.status === "pending") fact("Expires in", countdown(r.expires_at));
    if (r.approvals && r.approvals.length) fact("Approved by", r.approvals.join(", "));
    if (r.denied_by) fact("Denied by", r.denied_by + (r.reason ? ": " + r.reason : ""));
    if (r.temporary && r.temporary.until) fact("Timed rule until", utc(r.temporary.until));
    if (r.break_glass) fact("Break-glass", r.break_glass);
    if (r.failure) fact("Apply failed", r.failure + " (the guard sweep retries)");
    card.append(facts);
    const rules = (title, list) => {
      if (!list || !list.length) return;
      card.append(el("p", title, "hint"));
      const ul = el("ul", null, "plain rules");
      for (const x of list) ul.append(el("li", rule(x), "mono"));
      card.append(ul);
    };
    rules("It added (reverted; approval puts it back):", r.add);
    rules("It removed (restored; approval removes it again):", r.remove);
    for (const note of r.notes || []) card.append(el("p", note, "hint"));
    if (r.status === "pending") {
      const actions = el("div", null, "actions");
      actions.append(button("Approve", () => decide(r, "approve", {})));
      const addition = (r.add || []).length > 0 && (r.remove || []).length === 0;
      if (addition && guardTerms.temporary) {
        const term = guardTerms.temporary;
        actions.append(button("Approve for " + ttlWords(term), () => decide(r, "approve", { for: term })));
      }
      card.append(actions);
      const deny = el("form", null, "deny");
      const label = el("label", "Reason (optional) ");
      const reason = document.createElement("input");
      reason.maxLength = 500;
      label.append(reason);
      const submit = el("button", "Deny", "danger");
      submit.type = "submit";
      deny.append(label, submit);
      deny.addEventListener("submit", (event) => {
        event.preventDefault();
        decide(r, "deny", reason.value.trim() ? { reason: reason.value.trim() } : {});
      });
      card.append(deny);
    }
    return card;
  }

  async function decide(r, verb, body) {
    clearMessages();
    try {
      const { data } = await api("POST", "/v1/requests/" + encodeURIComponent(r.id) + "/" + verb, body);
      const failures = data.failures || [];
      showNotice("Request " + r.id + " is now " + data.request.status + (failures.length ? "; failures: " + failures.join("; ") : "."));
    } catch (err) {
      showError(err);
    }
    await loadRequests().catch(showError);
  }

  // -- status

  async function loadStatus() {
    const s = (await api("GET", "/v1/status")).data;
    const facts = $("status-facts");
    facts.replaceChildren();
    const fact = (name, ...content) => {
      const dd = document.createElement("dd");
      dd.append(...content);
      facts.append(el("dt", name), dd);
    };
    const r = s.last_reconcile;
    if (r) {
      const outcome = el("span", r.ok ? "ok" : "failed", r.ok ? "good" : "bad");
      fact("Last reconcile", outcome, " — " + r.cause + ", " + ago(serverNow() - Date.parse(r.at)) + " (" + utc(r.at) + "); " +
        r.authorized + " authorized, " + r.revoked + " revoked, " + r.updated + " updated");
    } else {
      fact("Last reconcile", "none by this replica yet");
    }
    fact("Next expiry", s.next_expiry ? countdown(s.next_expiry) : "none");
    const overdue = s.overdue || [];
    fact("Overdue expiries", el("span", String(overdue.length), overdue.length ? "bad" : "good"));
    fact("Outbox backlog", el("span", s.outbox_pending + " announcement(s) waiting", s.outbox_pending ? "warn" : "good"));
    const lease = s.sweeper_lease_holder;
    if (lease) {
      const mine = lease.holder === s.instance;
      fact("Sweeper lease", el("span", lease.holder, "mono"), mine ? " (this replica)" : " (another replica)", " until " + utc(lease.until));
    } else if (s.sweeper_lease === null || s.sweeper_lease === undefined) {
      fact("Sweeper lease", "this process runs without one");
    } else {
      fact("Sweeper lease", el("span", "no replica holds it: nothing sweeps expiries now", "bad"));
    }
    fact("This replica", el("span", s.instance, "mono"));

    const failures = $("status-failures");
    failures.replaceChildren();
    for (const f of (r && r.failures) || []) failures.append(el("li", failureText(f)));
    if (!failures.children.length) failures.append(el("li", "none", "hint"));

    const body = $("status-overdue");
    body.replaceChildren();
    for (const g of overdue) {
      const tr = document.createElement("tr");
      tr.append(
        cell("Address", g.cidr, "mono"),
        cell("Environment", g.environment),
        cell("Owner", owner(g.owner)),
        cell("Overdue by", ago(serverNow() - Date.parse(g.expires_at)).replace(" ago", "")),
      );
      body.append(tr);
    }
    $("status-overdue-none").hidden = overdue.length > 0;
    const refused = $("status-refused");
    refused.replaceChildren();
    for (const x of s.refused_grants || []) refused.append(el("li", x.grant.cidr + " in " + x.grant.environment + ": " + x.reason));
    if (!refused.children.length) refused.append(el("li", "none", "hint"));
  }

  // ---- wiring ----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => {
      signOut();
      location.hash = "";
    });
    $("access-open").addEventListener("click", () => changeAccess("POST"));
    $("access-close").addEventListener("click", () => changeAccess("DELETE"));
    $("access-reload").addEventListener("click", () => loadAccess().catch(showError));
    $("access-env").addEventListener("change", () => loadAccess($("access-env").value).catch(showError));
    $("grant-form").addEventListener("submit", addGrant);
    $("grants-env").addEventListener("change", () => loadGrants().catch(showError));
    $("grants-reload").addEventListener("click", () => loadGrants().catch(showError));
    $("audit-form").addEventListener("submit", (event) => {
      event.preventDefault();
      clearMessages();
      auditCursors = [null];
      loadAudit().catch(showError);
    });
    $("audit-older").addEventListener("click", () => {
      auditCursors.push(Number($("audit-older").dataset.next));
      loadAudit().catch(showError);
    });
    $("audit-newer").addEventListener("click", () => {
      if (auditCursors.length > 1) auditCursors.pop();
      loadAudit().catch(showError);
    });
    $("requests-status").addEventListener("change", () => loadRequests().catch(showError));
    $("requests-reload").addEventListener("click", () => loadRequests().catch(showError));
    $("status-reload").addEventListener("click", () => loadStatus().catch(showError));
    window.addEventListener("hashchange", route);
    // Choosing the page already shown loads it again (no hashchange fires for it).
    for (const a of document.querySelectorAll("#nav a")) {
      a.addEventListener("click", () => {
        if (location.hash === "#" + a.dataset.view) route();
      });
    }
    setInterval(tick, 1000);
    route();
  });
})();
