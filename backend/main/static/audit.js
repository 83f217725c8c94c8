// The audit trail in a browser (GET /audit). Plain JavaScript, no library, nothing from
// another origin. Everything the page shows comes from the JSON API with the bearer token of
// POST /login, which lives in sessionStorage only: never in a cookie, never in a URL. Every
// value is set as text (textContent, setAttribute), never parsed as HTML; the page's
// Content-Security-Policy (Trusted Types with no policy) makes innerHTML and its kin throw.
"use strict";

(() => {
  const PAGE_SIZE = 50;
  const TOKEN_KEY = "audit-trail.token";
  const USER_KEY = "audit-trail.user";
  const SVG = "http://www.w3.org/2000/svg";
  // Bottom to top in a bar: the levels that matter most sit on the axis, where they show.
  const STACK = ["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"];

  const $ = (id) => document.getElementById(id);
  const urls = {
    login: document.body.dataset.loginUrl,
    logout: document.body.dataset.logoutUrl,
    logs: document.body.dataset.logsUrl,
    stats: document.body.dataset.statsUrl,
    export: document.body.dataset.exportUrl,
  };

  // Which listing is on screen: an answer to an older one (filters changed meanwhile) is dropped.
  let generation = 0;
  let listing = { params: new URLSearchParams(), next: null, shown: 0 };

  class SessionEnded extends Error {}

  // --- the session -------------------------------------------------------------------------

  function session() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return null;
    let user = null;
    try {
      user = JSON.parse(sessionStorage.getItem(USER_KEY));
    } catch {
      user = null;
    }
    return { token, user };
  }

  function startSession(login) {
    sessionStorage.setItem(TOKEN_KEY, login.token);
    sessionStorage.setItem(USER_KEY, JSON.stringify(login.user));
    showTrail();
  }

  function endSession(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    generation += 1;
    $("filters").reset();
    clearListing();
    $("chart").replaceChildren();
    $("trail").hidden = true;
    $("trail").setAttribute("aria-busy", "false");
    $("session").hidden = true;
    $("sign-in").hidden = false;
    notify(message);
    $("username").focus();
  }

  // One request to the API. `credentials: "omit"`: the API uses no cookies, and a 401 with
  // `WWW-Authenticate: Basic` (a failed login) must not make the browser ask for a password
  // in a dialog of its own, which it does for requests that may carry credentials.
  async function call(url, { method = "GET", json, auth = true, accept = "application/json" } = {}) {
    const headers = { Accept: accept };
    const current = auth ? session() : null;
    if (current) headers.Authorization = `Bearer ${current.token}`;
    const options = { method, headers, credentials: "omit", cache: "no-store" };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(json);
    }
    const response = await fetch(url, options);
    if (response.status === 401 && current) {
      endSession("Your session has ended: sign in again.");
      throw new SessionEnded();
    }
    return response;
  }

  // The error body of the API as one line: its message, then each bad field's messages.
  async function problem(response) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch {
      error = null;
    }
    if (!error) return `The server answered ${response.status}.`;
    const details = Object.entries(error.details || {})
      .map(([field, messages]) => `${field}: ${[].concat(messages).join(" ")}`);
    return [error.message, ...details].join(" ");
  }

  // Runs an event handler; a session that ended has said so already, anything else is shown.
  function guarded(handler) {
    return async (event) => {
      try {
        await handler(event);
      } catch (error) {
        if (!(error instanceof SessionEnded)) notify(`Something went wrong: ${error.message}`);
      }
    };
  }

  function showError(element, message) {
    element.textContent = message || "";
    element.hidden = !message;
  }

  function notify(message) {
    showError($("notice"), message);
  }

  // --- signing in and out ------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const button = form.querySelector("button[type=submit]");
    showError($("sign-in-error"), "");
    button.disabled = true;
    try {
      // A JSON body, not HTTP Basic: the contract takes both, and this one needs no base64 of
      // a password that may hold any character.
      const response = await call(urls.login, {
        method: "POST",
        auth: false,
        json: { username: form.elements.username.value, password: form.elements.password.value },
      });
      form.elements.password.value = "";
      if (response.ok) {
        startSession(await response.json());
      } else if (response.status === 401) {
        showError($("sign-in-error"), "Wrong user name or password.");
      } else if (response.status === 429) {
        const wait = response.headers.get("Retry-After");
        showError($("sign-in-error"), `Too many failed attempts: try again in ${wait} s.`);
      } else {
        showError($("sign-in-error"), await problem(response));
      }
    } finally {
      button.disabled = false;
    }
  }

  async function signOut() {
    const current = session();
    let message = "Signed out.";
    if (current) {
      try {
        const response = await fetch(urls.logout, {
          headers: { Authorization: `Bearer ${current.token}`, Accept: "application/json" },
          credentials: "omit",
          cache: "no-store",
        });
        if (!response.ok && response.status !== 401) {
          message = `Signed out of this page, but the server answered ${response.status}:`
            + " the token stays valid until it expires.";
        }
      } catch {
        message = "Signed out of this page, but the server could not be reached:"
          + " the token stays valid until it expires.";
      }
    }
    endSession(message);
  }

  function showTrail() {
    const { user } = session();
    $("session-user").textContent = user ? user.username : "";
    $("session-role").textContent = user && user.is_admin ? "(admin: every row)" : "(your own rows)";
    $("session").hidden = false;
    $("sign-in").hidden = true;
    $("trail").hidden = false;
    notify("");
    return reload();
  }

  // --- filters -----------------------------------------------------------------------------

  // The query of /v1/logs from the form: empty fields are left out; times are UTC.
  function filterParams() {
    const form = $("filters");
    const params = new URLSearchParams();
    for (const name of ["user", "source", "event", "q"]) {
      const value = form.elements[name].value;
      if (value !== "") params.set(name, value);
    }
    const levels = [...form.querySelectorAll("input[name=level]:checked")].map((box) => box.value);
    if (levels.length) params.set("level", levels.join(","));
    for (const name of ["since", "until"]) {
      const value = form.elements[name].value;  // "2026-11-21T10:00" or "...T10:00:05"
      if (value !== "") params.set(name, `${value.length === 16 ? `${value}:00` : value}Z`);
    }
    return params;
  }

  function reload() {
    generation += 1;
    const params = filterParams();
    clearListing();
    listing.params = params;
    showError($("filter-error"), "");
    for (const format of ["ndjson", "csv"]) {
      const query = new URLSearchParams(params);
      query.set("format", format);
      $(`export-${format}`).href = `${urls.export}?${query}`;
    }
    return busy(generation, Promise.all([loadRows(generation), loadChart(generation)]));
  }

  // aria-busy on the listing while it loads: screen readers wait for it, and so do the tests.
  async function busy(run, work) {
    $("trail").setAttribute("aria-busy", "true");
    try {
      await work;
    } finally {
      if (run === generation) $("trail").setAttribute("aria-busy", "false");
    }
  }

  // --- the rows ----------------------------------------------------------------------------

  function clearListing() {
    listing = { params: new URLSearchParams(), next: null, shown: 0 };
    $("rows").tBodies[0].replaceChildren();
    $("load-more").hidden = true;
    $("rows-status").textContent = "";
    closeDetail();
  }

  async function loadRows(run) {
    const query = new URLSearchParams(listing.params);
    query.set("limit", PAGE_SIZE);
    if (listing.next) query.set("after", listing.next);
    $("load-more").disabled = true;
    const response = await call(`${urls.logs}?${query}`);
    if (run !== generation) return;
    $("load-more").disabled = false;
    if (!response.ok) {
      showError($("filter-error"), await problem(response));
      return;
    }
    const page = await response.json();
    if (run !== generation) return;
    const body = $("rows").tBodies[0];
    for (const row of page.items) body.append(rowElement(row));
    listing.next = page.next;
    listing.shown += page.items.length;
    $("load-more").hidden = page.next === null;
    $("rows-status").textContent = listing.shown === 0 ? "No rows match."
      : `${listing.shown} rows${page.next === null ? "" : ", newest first; more below"}`;
  }

  function rowElement(row) {
    const tr = document.createElement("tr");
    tr.dataset.id = row.id;
    tr.dataset.level = row.level;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = row.id;
    open.title = "Show every field of this row";
    cell(tr, "").append(open);
    cell(tr, row.created_at.replace("T", " ").replace(/\.\d+Z$/, ""), "time");
    cell(tr, row.level, "level");
    cell(tr, row.source);
    cell(tr, row.event);
    cell(tr, row.user, "user");
    cell(tr, row.ip);
    cell(tr, row.status);
    cell(tr, row.track, "track");
    tr.addEventListener("click", () => showDetail(row, tr));
    return tr;
  }

  function cell(tr, value, className) {
    const td = document.createElement("td");
    if (value === null || value === undefined) {
      td.textContent = "—";
      td.classList.add("none");
    } else {
      td.textContent = String(value);
    }
    if (className) td.classList.add(className);
    tr.append(td);
    return td;
  }

  function showDetail(row, tr) {
    const fields = $("detail-fields");
    fields.replaceChildren();
    for (const [name, value] of Object.entries(row)) {
      const term = document.createElement("dt");
      term.textContent = name;
      const description = document.createElement("dd");
      description.textContent =
        value === null ? "null" : typeof value === "object" ? JSON.stringify(value) : String(value);
      description.dataset.field = name;
      fields.append(term, description);
    }
    deselectRows();
    tr.classList.add("selected");
    $("detail-id").textContent = row.id;
    $("detail").hidden = false;
    $("detail-close").focus();
  }

  function closeDetail() {
    $("detail").hidden = true;
    $("detail-fields").replaceChildren();
    deselectRows();
  }

  function deselectRows() {
    for (const selected of document.querySelectorAll("tr.selected")) {
      selected.classList.remove("selected");
    }
  }

  // --- the chart ---------------------------------------------------------------------------

  async function loadChart(run) {
    const query = new URLSearchParams(listing.params);
    query.set("bucket", $("filter-bucket").value);
    const response = await call(`${urls.stats}?${query}`);
    if (run !== generation) return;
    if (!response.ok) {
      $("chart").replaceChildren();
      showError($("filter-error"), await problem(response));
      return;
    }
    const stats = await response.json();
    if (run !== generation) return;
    drawChart(stats);
  }

  function svgElement(name, attributes = {}, text = null) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (text !== null) element.textContent = text;
    return element;
  }

  function bucketLabel(start, bucket) {
    const text = start.replace("T", " ");
    return bucket === "day" ? text.slice(0, 10) : text.slice(0, 16);
  }

  // One bar per bucket that has rows, one segment per level in it; no library, no markup.
  function drawChart(stats) {
    const svg = $("chart");
    svg.replaceChildren();
    $("chart-bucket").textContent = stats.bucket;
    $("chart-total").textContent = stats.total;
    $("chart-since").textContent = bucketLabel(stats.since, "hour");
    $("chart-until").textContent = bucketLabel(stats.until, "hour");
    const [width, height] = [960, 220];
    const plot = { left: 44, right: 8, top: 10, bottom: 26 };
    const plotWidth = width - plot.left - plot.right;
    const plotHeight = height - plot.top - plot.bottom;
    const base = plot.top + plotHeight;
    const slot = plotWidth / Math.max(1, stats.buckets.length);
    const barWidth = Math.max(1, slot * 0.8);
    const highest = Math.max(1, ...stats.buckets.map((bucket) => bucket.total));

    for (const value of [...new Set([0, Math.round(highest / 2), highest])]) {
      const y = base - (value / highest) * plotHeight;
      svg.append(svgElement("line", { class: "grid", x1: plot.left, x2: width - plot.right, y1: y, y2: y }));
      svg.append(svgElement("text", { class: "axis", x: plot.left - 6, y: y + 4, "text-anchor": "end" }, String(value)));
    }
    const last = stats.buckets.length - 1;
    for (const index of [...new Set([0, Math.floor(last / 2), last])]) {
      if (index < 0) continue;
      const anchor = index === 0 ? "start" : index === last ? "end" : "middle";
      const x = plot.left + index * slot + (index === last ? slot : index === 0 ? 0 : slot / 2);
      svg.append(svgElement("text", { class: "axis", x, y: height - 8, "text-anchor": anchor },
        bucketLabel(stats.buckets[index].start, stats.bucket)));
    }

    stats.buckets.forEach((bucket, index) => {
      if (bucket.total === 0) return;
      const group = svgElement("g", { class: "bar", "data-start": bucket.start });
      group.append(svgElement("title", {}, `${bucketLabel(bucket.start, stats.bucket)} UTC: ${bucket.total} events`));
      let top = base;
      for (const level of STACK) {
        const count = bucket.counts[level] || 0;
        if (count === 0) continue;
        const segment = (count / highest) * plotHeight;
        top -= segment;
        const rect = svgElement("rect", {
          class: `segment level-${level}`, "data-level": level, "data-count": count,
          x: plot.left + index * slot + (slot - barWidth) / 2, y: top, width: barWidth, height: segment,
        });
        rect.append(svgElement("title", {}, `${bucketLabel(bucket.start, stats.bucket)} UTC: ${count} ${level}`));
        group.append(rect);
      }
      svg.append(group);
    });
  }

  // --- the export --------------------------------------------------------------------------

  // A link cannot carry the bearer token: fetch the file with it, then hand the browser the
  // bytes as a download of its own (an object URL), under the file name the link names.
  async function download(event) {
    event.preventDefault();
    const link = event.currentTarget;
    link.setAttribute("aria-busy", "true");
    try {
      const response = await call(link.href, { accept: "*/*" });
      if (!response.ok) {
        notify(await problem(response));
        return;
      }
      const url = URL.createObjectURL(await response.blob());
      const save = document.createElement("a");
      save.href = url;
      save.download = link.getAttribute("download");
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } finally {
      link.removeAttribute("aria-busy");
    }
  }

  // --- wiring ------------------------------------------------------------------------------

  $("sign-in-form").addEventListener("submit", guarded(signIn));
  $("sign-out").addEventListener("click", guarded(signOut));
  $("filters").addEventListener("submit", guarded((event) => {
    event.preventDefault();
    return reload();
  }));
  // The reset event comes before the form is reset: reload once it is.
  $("filters").addEventListener("reset", () => {
    if (session()) setTimeout(guarded(reload), 0);
  });
  $("filter-bucket").addEventListener("change", guarded(() => busy(generation, loadChart(generation))));
  $("load-more").addEventListener("click", guarded(() => busy(generation, loadRows(generation))));
  $("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDetail();
  });
  for (const format of ["ndjson", "csv"]) {
    $(`export-${format}`).addEventListener("click", guarded(download));
  }

  if (session()) {
    guarded(showTrail)();
  } else {
    $("sign-in").hidden = false;
  }
})();
