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
    verify: document.body.dataset.verifyUrl,
    stream: document.body.dataset.streamUrl,
  };
  // The filters that are one text field or menu each, in the form and in the page's URL.
  const FIELDS = ["user", "target", "ip", "source", "event", "q"];
  // The filters that are a set of boxes each, sent as one comma-separated parameter.
  const CHOICES = ["level", "outcome"];
  // Cells of a row that filter the listing by their value when clicked.
  const FILTER_CELLS = ["level", "source", "event", "user", "target", "ip"];

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
    stopLive();
    $("live").checked = false;
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    generation += 1;
    $("filters").reset();
    clearListing();
    showIntegrity("unknown", "unknown", "not verified from this page yet");
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
    $("verify").hidden = !(user && user.is_admin);
    if (!(user && user.is_admin)) {
      showIntegrity("unknown", "unknown", "only an admin can verify the whole trail");
    }
    $("session").hidden = false;
    $("sign-in").hidden = true;
    $("trail").hidden = false;
    notify("");
    return reload();
  }

  // --- filters ---------------------------------------------------------------------------

  // The query of /v1/logs from the form: empty fields are left out; times are UTC.
  function filterParams() {
    const form = $("filters");
    const params = new URLSearchParams();
    for (const name of FIELDS) {
      const value = form.elements[name].value.trim();
      if (value !== "") params.set(name, value);
    }
    for (const name of CHOICES) {
      const ticked = [...form.querySelectorAll(`input[name=${name}]:checked`)].map((box) => box.value);
      if (ticked.length) params.set(name, ticked.join(","));
    }
    for (const name of ["since", "until"]) {
      const value = momentParam(form.elements[name].value.trim());
      if (value !== "") params.set(name, value);
    }
    if (!form.elements.own_reads.checked) params.set("own_reads", "exclude");
    return params;
  }

  // "2026-11-21 13:05" (or with T, or seconds) as the API's RFC 3339 in UTC; a date alone
  // stays a date (the API reads it as that day's midnight UTC).
  function momentParam(text) {
    const match = /^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d)(:\d\d)?$/.exec(text);
    return match ? `${match[1]}T${match[2]}${match[3] || ":00"}Z` : text;
  }

  // The other way, for the form: "2026-11-21T13:05:00Z" shows as "2026-11-21 13:05:00".
  function momentField(param) {
    return param.replace("T", " ").replace(/(\.\d+)?Z$/i, "");
  }

  // The form set to the filters of a URL's query (the page's own: reload, back, a shared link).
  function showFilters(params) {
    const form = $("filters");
    for (const name of FIELDS) form.elements[name].value = params.get(name) || "";
    for (const name of CHOICES) {
      const chosen = (params.get(name) || "").split(",").map((value) => value.toLowerCase());
      for (const box of form.querySelectorAll(`input[name=${name}]`)) {
        box.checked = chosen.includes(box.value.toLowerCase());
      }
    }
    for (const name of ["since", "until"]) {
      form.elements[name].value = momentField(params.get(name) || "");
    }
    form.elements.own_reads.checked = params.get("own_reads") !== "exclude";
    form.elements.bucket.value = params.get("bucket") === "day" ? "day" : "hour";
  }

  // The page's URL holds its filters (never a token), so that a reload, the back button and
  // a copied link show the same rows. The page hides your own reads of the trail unless the
  // URL says own_reads=include.
  function pageQuery() {
    const params = filterParams();
    if (params.get("own_reads") === "exclude") params.delete("own_reads");
    else params.set("own_reads", "include");
    if ($("filter-bucket").value !== "hour") params.set("bucket", $("filter-bucket").value);
    return params.toString();
  }

  function urlFilters() {
    const params = new URLSearchParams(window.location.search);
    if (!params.has("own_reads")) params.set("own_reads", "exclude");
    return params;
  }

  function remember() {
    const query = pageQuery();
    if (query !== window.location.search.replace(/^\?/, "")) {
      window.history.pushState(null, "", query ? `?${query}` : window.location.pathname);
    }
  }

  function applyFilters() {
    remember();
    return reload();
  }

  // A click on a cell's value: the listing filtered by it (a level alone: only that level).
  function filterBy(name, value) {
    const form = $("filters");
    if (CHOICES.includes(name)) {
      for (const box of form.querySelectorAll(`input[name=${name}]`)) box.checked = box.value === value;
    } else {
      form.elements[name].value = value;
    }
    return applyFilters();
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
    stopLive();
    const run = generation;
    return busy(run, Promise.all([loadRows(run), loadChart(run)])).then(() => {
      if (run === generation && $("live").checked) startLive(run);
    });
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
    filterCell(tr, "level", row.level);
    filterCell(tr, "source", row.source);
    filterCell(tr, "event", row.event);
    filterCell(tr, "user", row.user);
    filterCell(tr, "target", row.target).title = targetTitle(row);
    filterCell(tr, "ip", row.ip);
    cell(tr, row.status);
    cell(tr, row.track, "track");
    tr.addEventListener("click", (event) => {
      const filter = event.target.closest("button.filter-by");
      if (filter) {
        guarded(() => filterBy(filter.dataset.filter, filter.dataset.value))();
      } else {
        showDetail(row, tr);
      }
    });
    return tr;
  }

  // What a target is, for its cell's tooltip: `user 7`, `trail`, ...
  function targetTitle(row) {
    if (!row.target_type) return "";
    return [row.target_type, row.target_id].filter((part) => part !== null).join(" ");
  }

  // A cell whose value is a button that filters the listing by it (none for an empty value).
  function filterCell(tr, name, value) {
    const td = cell(tr, value, name);
    if (value === null || value === undefined || !FILTER_CELLS.includes(name)) return td;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "filter-by";
    button.dataset.filter = name;
    button.dataset.value = value;
    button.textContent = String(value);
    button.title = `Show only the rows whose ${name} is ${value}`;
    td.replaceChildren(button);
    return td;
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
      if (name === "details" && value && Object.keys(value).length) {
        description.append(...detailLines(value));
      } else {
        description.textContent =
          value === null ? "null" : typeof value === "object" ? JSON.stringify(value) : String(value);
      }
      description.dataset.field = name;
      fields.append(term, description);
    }
    deselectRows();
    tr.classList.add("selected");
    $("detail-id").textContent = row.id;
    $("detail").hidden = false;
    $("listing").classList.add("with-detail");
    $("detail-close").focus();
  }

  // A row's `details`, one line each: every change as `field: old -> new`, then the other facts.
  function detailLines(details) {
    const lines = [];
    const line = (className, text) => {
      const element = document.createElement("div");
      element.className = className;
      element.textContent = text;
      lines.push(element);
    };
    for (const [field, [before, after]] of Object.entries(details.changes || {})) {
      line("change", `${field}: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
    }
    for (const [key, value] of Object.entries(details)) {
      if (key !== "changes") line("fact", `${key}: ${JSON.stringify(value)}`);
    }
    return lines;
  }

  // Closing gives the focus back to the row's button, so the keyboard goes on from there.
  function closeDetail() {
    const selected = document.querySelector("#rows tr.selected button.open");
    const open = !$("detail").hidden;
    $("detail").hidden = true;
    $("listing").classList.remove("with-detail");
    $("detail-fields").replaceChildren();
    deselectRows();
    if (open && selected) selected.focus();
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

  // --- integrity -----------------------------------------------------------------------------

  // GET /v1/logs/verify walks the whole chain: on request only, never on every page load.
  async function verifyTrail() {
    const button = $("verify");
    button.disabled = true;
    showIntegrity("checking", "checking", "walking the hash chain and its signatures…");
    try {
      const response = await call(urls.verify);
      if (!response.ok) {
        showIntegrity("unknown", "unknown", await problem(response));
        return;
      }
      const verdict = await response.json();
      const checked = new Date().toISOString().slice(0, 19).replace("T", " ");
      if (verdict.intact) {
        const signed = verdict.signed_up_to === null ? "no signed checkpoint yet"
          : `signed up to row ${verdict.signed_up_to}`;
        showIntegrity("intact", "intact", `${verdict.rows} rows checked at ${checked} UTC; ${signed}`);
      } else {
        showIntegrity("broken", `broken at row ${verdict.broken_row}`,
          `${verdict.problem} (checked at ${checked} UTC)`);
      }
    } finally {
      button.disabled = false;
    }
  }

  function showIntegrity(state, verdict, detail) {
    $("integrity").dataset.state = state;
    $("integrity-verdict").textContent = verdict;
    $("integrity-detail").textContent = detail;
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

  // --- live: each new row at the top as it is committed (GET /v1/logs/stream) -------------
  // fetch, not EventSource, which cannot send the bearer token; the listing's filters apply.

  let live = null;  // the AbortController of the stream being read

  function stopLive() {
    if (live) live.abort();
    live = null;
  }

  async function startLive(run) {
    stopLive();
    const controller = new AbortController();
    live = controller;
    const query = new URLSearchParams(listing.params);
    const newest = $("rows").tBodies[0].rows[0];
    if (newest) query.set("after_id", newest.dataset.id);  // else: from the next new row
    try {
      const response = await fetch(`${urls.stream}?${query}`, {
        headers: { Authorization: `Bearer ${session().token}`, Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (!response.ok) {
        showError($("filter-error"), await problem(response));
        $("live").checked = false;
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done || run !== generation) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          showLiveEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") throw error;
    } finally {
      if (live === controller) live = null;
    }
  }

  // One event of the stream: its `data:` lines are a row (comments and heartbeats have none).
  function showLiveEvent(block) {
    const data = block.split("\n").filter((line) => line.startsWith("data: "))
      .map((line) => line.slice(6)).join("\n");
    if (!data) return;
    $("rows").tBodies[0].prepend(rowElement(JSON.parse(data)));
    listing.shown += 1;
    $("rows-status").textContent = `${listing.shown} rows, newest first (live)`;
  }

  // --- wiring ------------------------------------------------------------------------------

  $("sign-in-form").addEventListener("submit", guarded(signIn));
  $("sign-out").addEventListener("click", guarded(signOut));
  $("filters").addEventListener("submit", guarded((event) => {
    event.preventDefault();
    return applyFilters();
  }));
  // The reset event comes before the form is reset: apply the empty form once it is.
  $("filters").addEventListener("reset", () => {
    if (session()) setTimeout(guarded(applyFilters), 0);
  });
  $("filter-bucket").addEventListener("change", guarded(() => {
    remember();
    return busy(generation, loadChart(generation));
  }));
  // Back and forward move between filters: show the ones of that URL.
  window.addEventListener("popstate", guarded(() => {
    showFilters(urlFilters());
    return session() ? reload() : null;
  }));
  $("verify").addEventListener("click", guarded(verifyTrail));
  $("load-more").addEventListener("click", guarded(() => busy(generation, loadRows(generation))));
  $("detail-close").addEventListener("click", closeDetail);
  $("live").addEventListener("change", guarded(() => ($("live").checked ? startLive(generation) : stopLive())));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDetail();
  });
  for (const format of ["ndjson", "csv"]) {
    $(`export-${format}`).addEventListener("click", guarded(download));
  }

  showFilters(urlFilters());
  if (session()) {
    guarded(showTrail)();
  } else {
    $("sign-in").hidden = false;
  }
})();
