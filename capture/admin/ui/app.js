// The capture web UI: sign-in, sessions, the live flow table, detail, overview, onboarding.

import {api, get, post, whenSignedOut, ApiError} from "./api.js";
import {h, fill, bytes, ms} from "./dom.js";
import {FlowTable} from "./flowtable.js";
import {FlowDetail} from "./detail.js";
import {overview} from "./charts.js";

const $ = (selector) => document.querySelector(selector);

const FILTER_HELP = [
  ["~q", "request has no response"], ["~s", "response present"], ["~e", "flow has an error"],
  ["~m REGEX", "method"], ["~u REGEX", "URL"], ["~d REGEX", "domain (host)"], ["~c CODE", "response status code"],
  ["~h REGEX", "header, request or response"], ["~hq REGEX", "request header"], ["~hs REGEX", "response header"],
  ["~b REGEX", "body, request or response"], ["~bq REGEX", "request body"], ["~bs REGEX", "response body"],
  ["~t REGEX", "content type"], ["~tq REGEX", "request content type"], ["~ts REGEX", "response content type"],
  ["~src REGEX", "client address"], ["~dst REGEX", "server address"], ["~a", "asset: CSS, JavaScript, images, fonts"],
  ["~http", "HTTP flows"], ["~tcp", "raw TCP tunnels"], ["~websocket", "WebSockets"],
  ["!", "not"], ["&", "and (also: two expressions side by side)"], ["|", "or"], ["( )", "grouping"],
  ["word", "a bare word matches the URL; regexes are case-insensitive"],
];

/** ``~c`` takes one code (as in mitmproxy): a class is the hundred codes in it, which the store still answers from SQL. */
function statusClass(digit) {
  return "(" + Array.from({length: 100}, (_, i) => `~c ${digit * 100 + i}`).join(" | ") + ")";
}

const CHIPS = [
  ["GET", "~m ^GET$"], ["POST", "~m ^POST$"], ["PUT", "~m ^PUT$"], ["DELETE", "~m ^DELETE$"],
  ["2xx", statusClass(2)], ["3xx", statusClass(3)], ["4xx", statusClass(4)], ["5xx", statusClass(5)], ["Errors", "~e"],
  ["JSON", "~t json"], ["HTML", "~t html"], ["Images", "~t image"],
];

const state = {sessions: [], session: null, view: "flows", events: null, chips: new Set(), hostChip: "", holding: false};

function release() {
  state.holding = false;
  drawSessions();
}

let table, detail;

function signedIn(yes) {
  $("#signin").hidden = yes;
  for (const selector of ["#tabs", "#session-pick", "#signout"]) $(selector).hidden = !yes;
  for (const view of document.querySelectorAll(".view")) view.hidden = !yes || view.id !== `view-${state.view}`;
  if (!yes) {
    state.events?.close();
    state.events = null;
    $("#token").focus();
  }
}

async function signIn(event) {
  event.preventDefault();
  const response = await fetch("/ui/signin", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({token: $("#token").value}),
  });
  if (!response.ok) {
    $("#signin-error").textContent = response.status === 401 ? "Wrong admin token." : `Sign-in failed (HTTP ${response.status}).`;
    return;
  }
  $("#token").value = "";
  $("#signin-error").textContent = "";
  await start();
}

async function signOut() {
  await fetch("/ui/signout", {method: "POST", credentials: "same-origin"});
  signedIn(false);
}

function show(view) {
  state.view = view;
  for (const button of document.querySelectorAll("#tabs button")) button.setAttribute("aria-pressed", String(button.dataset.view === view));
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  if (view === "sessions") loadSessions();
  if (view === "overview") loadOverview();
  if (view === "onboarding") loadOnboarding();
}

// -- sessions ---------------------------------------------------------------------------------

async function loadSessions() {
  let result;
  try { result = await get("/api/sessions"); } catch (error) { if (error.status !== 401) $("#sessions-error").textContent = error.message; return; }
  state.sessions = result.sessions;
  drawSessionPicker();
  drawSessions();
}

function drawSessionPicker() {
  const select = $("#session-select");
  fill(select, state.sessions.length ? state.sessions.map((s) => h("option", {value: s.id, selected: s.id === state.session}, `${s.name} (${s.state})`))
    : h("option", {value: ""}, "no sessions"));
}

function duration(session) {
  const end = session.stopped ? Date.parse(session.stopped) : Date.now();
  return ms(end - Date.parse(session.created));
}

function drawSessions() {
  if (state.holding) return; // a rename being typed or a delete waiting for its second press: redrawn after
  const body = $("#sessions-table tbody");
  fill(body, state.sessions.map((s) => {
    const size = h("td", {}, "");
    get(`/api/sessions/${s.id}/stats`).then((stats) => { size.textContent = bytes(stats.request_bytes + stats.response_bytes); }, () => {});
    const act = (label, action) => h("button", {type: "button", onclick: (event) => action(s, event.currentTarget)}, label);
    return h("tr", {dataset: {id: s.id}, "aria-label": s.name},
      h("td", {}, s.name), h("td", {}, h(`span.state.st-${s.state}`, {}, s.state)),
      h("td", {}, s.clients.length ? s.clients.join(", ") : "every device"),
      h("td", {}, String(s.flow_count)), size, h("td", {}, duration(s)),
      h("td.actions", {},
        act("Open", (x) => { openSession(x.id); show("flows"); }),
        s.state === "capturing" ? act("Pause", (x) => change(x, "pause")) : null,
        s.state === "paused" ? act("Resume", (x) => change(x, "resume")) : null,
        s.state !== "stopped" ? act("Stop", (x) => change(x, "stop")) : null,
        s.state !== "stopped" ? act("Clear", (x) => change(x, "clear")) : null,
        act("Rename", rename), act("Delete", remove)));
  }));
}

async function change(session, action) {
  try { await post(`/api/sessions/${session.id}/${action}`); $("#sessions-error").textContent = ""; }
  catch (error) { $("#sessions-error").textContent = error.message; }
  if (action === "clear" && session.id === state.session) table.reload();
  loadSessions();
}

async function rename(session) {
  const row = document.querySelector(`#sessions-table tr[data-id="${session.id}"]`);
  const input = h("input", {"aria-label": "New name", value: session.name,
    onkeydown: (event) => { if (event.key === "Escape") { event.stopPropagation(); release(); } }});
  const form = h("form.inline", {onsubmit: async (event) => {
    event.preventDefault();
    state.holding = false;
    try { await api("PATCH", `/api/sessions/${session.id}`, {name: input.value}); $("#sessions-error").textContent = ""; }
    catch (error) { $("#sessions-error").textContent = error.message; }
    loadSessions();
  }}, input, h("button", {type: "submit"}, "Save name"));
  state.holding = true;
  fill(row.firstChild, form);
  input.focus();
}

async function remove(session, button) {
  if (button.dataset.armed !== "yes") { // a second press confirms: no dialog to dismiss
    button.dataset.armed = "yes";
    button.textContent = "Confirm delete";
    state.holding = true;
    setTimeout(() => { if (button.isConnected && button.dataset.armed === "yes") release(); }, 8000); // unconfirmed: disarm
    return;
  }
  state.holding = false;
  try { await api("DELETE", `/api/sessions/${session.id}`); } catch (error) { $("#sessions-error").textContent = error.message; }
  if (session.id === state.session) openSession(null);
  loadSessions();
}

async function startSession(event) {
  event.preventDefault();
  const form = event.target;
  const list = (text) => text.split(/[\s,]+/).filter((x) => x);
  const fields = {
    name: form.name.value, clients: list(form.clients.value), filter: form.filter.value,
    capture_responses: form.capture_responses.checked,
    cookies: {enabled: form.cookies.checked, domains: list(form.domains.value)},
  };
  try {
    const session = await post("/api/sessions", fields);
    $("#sessions-error").textContent = "";
    form.reset();
    await loadSessions();
    openSession(session.id);
  } catch (error) {
    $("#sessions-error").textContent = error.message;
  }
}

// -- flows ------------------------------------------------------------------------------------

function openSession(id) {
  state.session = id;
  drawSessionPicker();
  state.events?.close();
  state.events = null;
  detail.close();
  table.open(id);
  if (id === null) return;
  const events = new EventSource(`/api/sessions/${id}/events`);
  events.addEventListener("flow", (event) => table.added(JSON.parse(event.data)));
  events.addEventListener("state", () => { if (state.view === "sessions") loadSessions(); });
  events.addEventListener("open", () => { if (state.events === events && table.total) table.refetchSoon(); }); // catch up after a reconnect
  state.events = events;
}

function currentFilter() {
  const parts = [];
  const typed = $("#filter").value.trim();
  if (typed) parts.push(`(${typed})`);
  for (const chip of state.chips) parts.push(CHIPS.find(([label]) => label === chip)[1]);
  if (state.hostChip) parts.push(`~d "${state.hostChip.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`);
  if ($("#hide-assets").checked) parts.push("!~a");
  return parts.join(" & ");
}

let filterTimer = 0;
function filterChanged() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => table.setFilter(currentFilter()), 250);
}

function drawChips() {
  const chips = CHIPS.map(([label]) => h("button.chip", {type: "button", "aria-pressed": String(state.chips.has(label)), onclick: () => {
    if (state.chips.has(label)) state.chips.delete(label); else state.chips.add(label);
    drawChips();
    filterChanged();
  }}, label));
  if (state.hostChip) {
    chips.push(h("button.chip", {type: "button", "aria-pressed": "true", onclick: () => { state.hostChip = ""; drawChips(); filterChanged(); }}, `host ${state.hostChip} ✕`));
  }
  fill($("#chips"), chips);
}

function drawFilterHelp() {
  fill($("#filter-help"),
    h("h3", {}, "Filter expressions"),
    h("table.pairs", {}, h("tbody", {}, FILTER_HELP.map(([expr, meaning]) => h("tr", {}, h("th", {}, h("code", {}, expr)), h("td", {}, meaning))))),
    h("p.muted", {}, "Example: ~d api.example.com & ~m POST & !~c 200"));
}

function toggleHelp() {
  const help = $("#filter-help");
  help.hidden = !help.hidden;
  $("#filter-help-button").setAttribute("aria-expanded", String(!help.hidden));
}

function exportFlows(kind) {
  if (state.session === null) return;
  const params = new URLSearchParams();
  const filter = currentFilter();
  if (filter) params.set("filter", filter);
  const link = h("a", {href: `/api/sessions/${state.session}/${kind}${filter ? "?" + params : ""}`, download: ""});
  document.body.append(link);
  link.click();
  link.remove();
}

async function openFlow(id) {
  await detail.show(id);
  const flow = detail.flow;
  if (flow && flow.host && state.hostChip !== flow.host) {
    const chip = h("button.chip", {type: "button", onclick: () => { state.hostChip = flow.host; drawChips(); filterChanged(); }}, `Only ${flow.host}`);
    detail.node.querySelector(".actions")?.prepend(chip);
  }
}

// -- overview and onboarding ----------------------------------------------------------------

async function loadOverview() {
  if (state.session === null) { fill($("#charts"), h("p.muted", {}, "Pick a session first.")); return; }
  const stats = await get(`/api/sessions/${state.session}/stats`);
  const {totals, charts} = overview(stats);
  fill($("#totals"), totals);
  fill($("#charts"), charts);
}

async function loadOnboarding() {
  const info = await get("/api/onboarding");
  $("#proxy-host").textContent = info.proxy_host;
  $("#proxy-port").textContent = String(info.proxy_port);
  $("#ca-fingerprint").textContent = info.ca_sha256;
  const link = $("#onboarding-url");
  link.textContent = info.onboarding_url;
  link.href = info.onboarding_url;
  $("#qr").src = info.qr_svg;
}

// -- start ------------------------------------------------------------------------------------

async function start() {
  const session = await (await fetch("/ui/session", {credentials: "same-origin"})).json();
  if (!session.signed_in) { signedIn(false); return; }
  try {
    state.sessions = (await get("/api/sessions")).sessions;
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) { signedIn(false); $("#signin-error").textContent = error.message; }
    return; // a 401 has shown the sign-in form
  }
  signedIn(true);
  const live = state.sessions.filter((s) => s.state !== "stopped");
  const pick = live.length ? live[live.length - 1] : state.sessions[state.sessions.length - 1];
  if (state.session === null && pick) openSession(pick.id);
  show(state.view);
}

function setup() {
  table = new FlowTable({
    grid: $("#flow-table"), head: $("#flow-head"), viewport: $("#viewport"), spacer: $("#spacer"), rows: $("#rows"),
    onOpen: (id) => openFlow(id),
    onCount: (n) => { $("#flow-count").textContent = `${n} flows`; },
    onFilterError: (message) => {
      $("#filter-error").textContent = message ? `Filter: ${message}` : "";
      $("#filter").setAttribute("aria-invalid", message ? "true" : "false");
    },
  });
  table.onScrolledAway = () => { table.follow = false; $("#follow").checked = false; };
  table.onClose = () => { detail.close(); $("#flow-table").focus(); };
  detail = new FlowDetail($("#detail"), {
    onClose: () => { detail.close(); $("#flow-table").focus(); },
    onReplayed: () => table.refetchSoon(),
  });
  whenSignedOut(() => signedIn(false));
  $("#signin-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", signOut);
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => show(button.dataset.view));
  $("#session-select").addEventListener("change", (event) => openSession(event.target.value ? Number(event.target.value) : null));
  $("#start-form").addEventListener("submit", startSession);
  $("#filter").addEventListener("input", filterChanged);
  $("#hide-assets").addEventListener("change", filterChanged);
  $("#follow").addEventListener("change", (event) => { table.follow = event.target.checked; if (table.follow) table.scrollToEnd(); });
  $("#filter-help-button").addEventListener("click", toggleHelp);
  for (const button of document.querySelectorAll("[data-export]")) button.addEventListener("click", () => exportFlows(button.dataset.export));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      if (!$("#filter-help").hidden) toggleHelp();
      else if (!$("#detail").hidden) { detail.close(); $("#flow-table").focus(); }
    }
  });
  drawChips();
  drawFilterHelp();
  if (location.hash === "#signin-failed") {
    $("#signin-error").textContent = "Wrong admin token in the sign-in link.";
    history.replaceState(null, "", "/ui/");
  }
  start();
}

setup();
