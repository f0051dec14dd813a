// Ferryman's operator UI: plain DOM, no framework, no build step.
// Everything the server sends is inserted as text (h() appends strings as text nodes);
// nothing here ever assigns innerHTML, so a VM message such as "<script>" stays text.

const TOKEN_KEY = "ferry.operatorToken";
// Everything arrives over the event stream (VM log lines as vm.message_logged); this poll only
// catches up after the stream dropped.
const POLL_MS = 15000;
const EVENT_TYPES = [
  "group.submitted", "archive.requested", "archive.ready", "group.archived", "vm.created",
  "vm.state_changed", "vm.failed", "vm.message_logged", "vm.configured", "vm.provisioned",
  "db.master.complete",
  "group.ready", "group.halted", "group.resumed", "cutover.requested",
  "cutover.step_completed", "cutover.completed", "cutover.failed",
  "group.cancel_requested", "group.cancelled", "group.cancel_failed",
  "group.finalize_requested", "group.finalized", "group.finalize_failed",
];

// The statuses the listing filters by and the overview counts, in the journey's order
// (shared/states.py: GroupStatus, VmState; tests/unit/test_ui_states.py keeps them in step).
const GROUP_STATUSES = [
  "active", "halted", "ready", "cutting_over", "live", "cancelling", "cancelled", "finalizing",
  "finalized",
];
const VM_STATES = [
  "planned", "archiving", "archived", "creating", "created", "configuring", "configured",
  "provisioning", "provisioned", "loading", "replicating", "ready", "cutting_over", "live",
  "failed", "halted", "rolled_back", "cancelled",
];
const GROUPS_PER_PAGE = 50;
const AUDIT_LINES = 20; // a group's latest audit lines on its page

// The role each action button needs (the gateway checks it too; docs/security.md): a button
// the signed-in token's role may not use is not drawn at all.
const ROLES = ["viewer", "operator", "admin"];
const ACTION_ROLE = {
  retry: "operator", resume: "operator", "prepare-cutover": "operator",
  "start-cutover": "operator", "replay-all": "admin", replay: "admin",
};
function may(action) {
  return ROLES.indexOf(ui.role) >= ROLES.indexOf(ACTION_ROLE[action] || "admin");
}

const $ = (id) => document.getElementById(id);

const ui = {
  token: sessionStorage.getItem(TOKEN_KEY),
  role: null, // the token's role (GET /v1/whoami): which action buttons are drawn
  services: [],
  groups: [], // the page of groups shown
  listing: null, // that page's total and next_cursor
  filter: { name: "", status: "" },
  cursors: [null], // cursors[i]: where page i starts (keyset: still valid as groups arrive)
  page: 0,
  fleet: null,
  selected: decodeURIComponent((location.hash.match(/^#group=(.+)$/) || [])[1] || "") || null,
  detail: null,
  timeline: null,
  cutover: null,
  logs: new Map(), // vm id -> {last: message id, items: [...]}
  events: null,
  shape: null, // what the detail was last drawn from
  busy: null,
  again: false,
};

// ---- DOM helpers -----------------------------------------------------------------------

function h(tag, props = {}, ...children) {
  if (props && props.dataset && props.dataset.action && !may(props.dataset.action)) return null;
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value); // CSSOM: allowed by the CSP
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
  return el;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "";
}

function badge(text, extra = {}) {
  return h("span", { class: `badge ${text}`, ...extra }, text);
}

// "time in phase" ticks locally: the server says how long the VM has been in its state, the
// browser counts on from the moment it heard it (so clock skew does not matter).
function since(seconds, cls = "since") {
  const base = Date.now() - seconds * 1000;
  return h("span", { class: cls, dataset: { base: String(base) } }, duration(seconds));
}

function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-base]")) {
    el.textContent = duration((now - Number(el.dataset.base)) / 1000);
  }
}

let errorTimer = null;
function showError(message) {
  const bar = $("error");
  bar.textContent = message;
  bar.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { bar.hidden = true; }, 10000);
}

// ---- the gateway ---------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${ui.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let payload = {};
  try { payload = await response.json(); } catch { /* empty body */ }
  if (response.status === 401 || response.status === 403) {
    throw new Unauthorized(payload.error || "the operator token was refused");
  }
  if (!response.ok) throw new Error(payload.error || `HTTP ${response.status}`);
  return payload;
}

// ---- sign-in and the live feed -------------------------------------------------------------

function askToken(message) {
  const dialog = $("token-dialog");
  $("token-error").hidden = !message;
  $("token-error").textContent = message || "";
  $("token-input").value = "";
  if (!dialog.open) dialog.showModal();
}

async function signIn(token) {
  ui.token = token;
  try {
    const session = await api("POST", "/v1/ui/session");
    ui.services = session.services;
    const me = await api("GET", "/v1/whoami");
    ui.role = me.role;
    $("whoami").textContent = `${me.name} (${me.role})`;
    document.body.dataset.role = me.role;
    sessionStorage.setItem(TOKEN_KEY, token);
    if ($("token-dialog").open) $("token-dialog").close();
    openEvents(session.events);
    await refresh();
  } catch (err) {
    if (err instanceof Unauthorized) {
      ui.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      askToken("That token was refused.");
    } else if (sessionStorage.getItem(TOKEN_KEY) === token) {
      // The gateway is away (restarting?): keep the token and try again.
      setLive(false, "offline");
      showError(`Cannot reach the gateway: ${err.message}`);
      setTimeout(() => { if (ui.token === token) signIn(token); }, 5000);
    } else {
      ui.token = null;
      askToken(`Cannot sign in: ${err.message}`);
    }
  }
}

function signOut() {
  ui.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (ui.events) ui.events.close();
  ui.events = null;
  setLive(false, "offline");
  fetch("/v1/ui/session", { method: "DELETE" });
  askToken();
}

function setLive(on, text) {
  const el = $("live");
  el.className = `live ${on ? "on" : "off"}`;
  el.textContent = text;
}

// The event stream authenticates by the HttpOnly cookie that POST /v1/ui/session set (an
// EventSource cannot send an Authorization header); see services/gateway/auth.py.
function openEvents(path) {
  if (ui.events) ui.events.close();
  const source = new EventSource(path);
  ui.events = source;
  source.onopen = () => setLive(true, "live");
  source.onerror = () => {
    setLive(false, "reconnecting");
    if (source.readyState === EventSource.CLOSED && ui.token) {
      setTimeout(() => { if (ui.events === source && ui.token) signIn(ui.token); }, 3000);
    }
  };
  let count = 0;
  const heard = (message) => {
    $("live").dataset.heard = String(++count); // how many events this page heard live
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    const group = ui.detail;
    if (event.type === "vm.message_logged") logStreamed(event);
    if (!group || event.group_id === group.id || event.type === "group.submitted") soon();
    else soonGroups();
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, heard);
}

// A streamed log line goes straight into its VM's log. `last` (what the next fetch asks after)
// is not moved: a line the stream missed would be skipped; the fetch skips what is shown.
function logStreamed(event) {
  const log = ui.logs.get(event.vm_id);
  const { message_id: id, level, text } = event.payload;
  if (!log || log.ids.has(id)) return;
  keep(log, { id, vm_id: event.vm_id, level, text, at: event.occurred_at });
}

function keep(log, message) {
  log.ids.add(message.id);
  log.items.push(message);
  log.items.sort((a, b) => a.id - b.id);
  if (log.items.length > 500) {
    for (const gone of log.items.splice(0, log.items.length - 500)) log.ids.delete(gone.id);
  }
}

let soonTimer = null;
function soon() {
  clearTimeout(soonTimer);
  soonTimer = setTimeout(refresh, 100);
}
let groupsTimer = null;
function soonGroups() {
  clearTimeout(groupsTimer);
  groupsTimer = setTimeout(() => refreshGroups().catch(failed), 200);
}

function failed(err) {
  if (err instanceof Unauthorized) signOut();
  else showError(err.message);
}

// ---- loading -------------------------------------------------------------------------------

async function refresh() {
  if (!ui.token) return;
  if (ui.busy) { ui.again = true; return; }
  ui.busy = (async () => {
    try {
      await refreshGroups();
      await refreshDetail();
    } catch (err) {
      failed(err);
    }
  })();
  await ui.busy;
  ui.busy = null;
  if (ui.again) { ui.again = false; await refresh(); }
}

async function refreshGroups() {
  const query = new URLSearchParams({ limit: String(GROUPS_PER_PAGE) });
  if (ui.cursors[ui.page]) query.set("cursor", ui.cursors[ui.page]);
  if (ui.filter.name) query.set("name", ui.filter.name);
  if (ui.filter.status) query.set("status", ui.filter.status);
  const [listing, fleet] = await Promise.all([
    api("GET", `/v1/groups?${query}`), api("GET", "/v1/fleet"),
  ]);
  ui.groups = listing.groups;
  ui.listing = listing;
  ui.cursors[ui.page + 1] = listing.next_cursor;
  ui.fleet = fleet;
  if (!ui.selected && ui.groups.length) ui.selected = ui.groups[0].name;
  renderGroups();
  renderFleet();
}

// The filter as its controls say; a new filter starts again at the first page (a cursor pages
// within its own filter).
function filterGroups() {
  ui.filter = { name: $("filter-name").value.trim(), status: $("filter-status").value };
  ui.cursors = [null];
  ui.page = 0;
  refreshGroups().catch(failed);
}

function turnPage(step) {
  ui.page = Math.max(0, ui.page + step);
  refreshGroups().catch(failed);
}

async function refreshDetail() {
  if (!ui.selected) { ui.detail = null; renderDetail(); return; }
  const ref = encodeURIComponent(ui.selected);
  const [detail, timeline, cutover, audit] = await Promise.all([
    api("GET", `/v1/groups/${ref}`),
    api("GET", `/v1/groups/${ref}/timeline`),
    api("GET", `/v1/groups/${ref}/cutover`),
    api("GET", `/v1/audit?group=${ref}&limit=${AUDIT_LINES}`),
  ]);
  if (ui.detail && ui.detail.id !== detail.id) ui.logs.clear();
  await Promise.all(detail.vms.map(async (vm) => {
    const log = ui.logs.get(vm.id) || { last: 0, items: [], ids: new Set() };
    const { messages } = await api("GET", `/v1/vms/${vm.id}/messages?after=${log.last}`);
    for (const message of messages) {
      if (!log.ids.has(message.id)) keep(log, message);
      log.last = Math.max(log.last, message.id);
    }
    ui.logs.set(vm.id, log);
  }));
  // Redraw only when something changed (a redraw every poll would lose the operator's text
  // selection); seconds_in_state always changes and is ticked locally anyway.
  const shape = JSON.stringify([
    detail.status, detail.halted_reason, detail.closing_error, detail.vms.map(({ seconds_in_state, ...vm }) => vm),
    timeline, cutover, audit, ui.role, [...ui.logs.values()].map((log) => log.items.map((m) => m.id).join()),
  ]);
  ui.detail = detail;
  ui.timeline = timeline;
  ui.cutover = cutover;
  ui.audit = audit;
  if (shape !== ui.shape || !document.querySelector("#detail #group-name")) {
    ui.shape = shape;
    renderDetail();
  }
}

// ---- actions (each behind a confirmation) ---------------------------------------------------

function confirmAction(title, text) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function act(title, text, call) {
  if (!(await confirmAction(title, text))) return;
  try {
    await call();
    $("error").hidden = true; // an earlier refusal no longer applies
  } catch (err) {
    failed(err);
  }
  await refresh();
}

const actions = {
  resume: (group) => act(`Resume ${group.name}?`,
    `The halt on ${group.name} is lifted and its held VMs carry on from where they stopped.`,
    () => api("POST", `/v1/groups/${encodeURIComponent(group.name)}/resume`)),
  retry: (vm) => act(`Retry ${vm.name}?`,
    `${vm.name} goes back to redo the phase it failed in (${vm.failed_from || "unknown"}); ` +
    "it starts once the group is resumed.",
    () => api("POST", `/v1/vms/${vm.id}/retry`)),
  cutover: (group, prepare) => act(
    prepare ? `Prepare the cutover of ${group.name}?` : `Start the cutover of ${group.name}?`,
    prepare ? "Only the steps ahead of the window run; traffic does not move."
      : "Traffic moves from the legacy hosts to the new VMs. There is a short downtime.",
    () => api("POST", `/v1/groups/${encodeURIComponent(group.name)}/cutover`, { prepare })),
  replay: (service, id) => act(
    id ? `Replay one dead letter of ${service}?` : `Replay every dead letter of ${service}?`,
    id ? `Message ${id} goes back on the ${service} queue.`
      : `All of ${service}'s dead letters go back on its queue.`,
    async () => {
      const query = id ? `?id=${encodeURIComponent(id)}` : "";
      await api("POST", `/v1/dead-letters/${service}/replay${query}`);
      await loadDeadLetters();
    }),
};

// ---- rendering -----------------------------------------------------------------------------

// A group is picked by its name, which shows the newest group of that name; where an older one
// (cancelled, or live) shares it, each is picked by its id instead.
function groupKey(g) {
  return ui.groups.filter((other) => other.name === g.name).length > 1 ? g.id : g.name;
}

function renderGroups() {
  const list = $("groups");
  list.replaceChildren(...ui.groups.map((g) => h("li", {},
    h("button", {
      type: "button", dataset: { group: g.name }, "aria-current": groupKey(g) === ui.selected ? "true" : "false",
      onclick: () => select(groupKey(g)),
    }, h("span", { class: "name" }, g.name), badge(g.status), g.simulated ? simulatedBadge() : null))));
  const filtered = Boolean(ui.filter.name || ui.filter.status);
  $("no-groups").hidden = ui.groups.length > 0 || filtered;
  $("no-match").hidden = ui.groups.length > 0 || !filtered;
  const total = ui.listing ? ui.listing.total : 0;
  const first = ui.page * GROUPS_PER_PAGE;
  $("groups-count").textContent = ui.groups.length
    ? `${first + 1}–${first + ui.groups.length} of ${total}` : `0 of ${total}`;
  $("groups-newer").disabled = ui.page === 0;
  $("groups-older").disabled = !(ui.listing && ui.listing.next_cursor);
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// The fleet at a glance: groups by status (each a filter of the list) and VMs by state.
function renderFleet() {
  const f = ui.fleet;
  if (!f) return;
  const ordered = (counts, order) => order.filter((k) => counts[k]).map((k) => [k, counts[k]])
    .concat(Object.entries(counts).filter(([k]) => !order.includes(k)));
  $("fleet").replaceChildren(
    h("div", { class: "counts", id: "fleet-groups" }, h("strong", {}, plural(f.groups, "group")),
      ordered(f.group_statuses, GROUP_STATUSES).map(([status, n]) => h("button", {
        type: "button", class: `badge ${status}`, dataset: { status },
        "aria-pressed": ui.filter.status === status ? "true" : "false",
        title: `list the ${status} groups`,
        onclick: () => {
          $("filter-status").value = ui.filter.status === status ? "" : status;
          filterGroups();
        },
      }, `${status} ${n}`))),
    h("div", { class: "counts", id: "fleet-vms" }, h("strong", {}, plural(f.vms, "VM")),
      ordered(f.vm_states, VM_STATES).map(([state, n]) => h("span", {
        class: `badge ${state}`, dataset: { state },
      }, `${state} ${n}`))));
}

// A group of simulated VMs (provider sim) says so wherever it is shown.
function simulatedBadge() {
  return h("span", { class: "badge simulated", title: "simulated VMs: nothing real is migrated" }, "simulated");
}

function select(name) {
  ui.selected = name;
  ui.logs.clear();
  ui.detail = null;
  history.replaceState(null, "", `#group=${encodeURIComponent(name)}`);
  $("dead-letters").hidden = true;
  $("detail").hidden = false;
  renderGroups();
  refresh();
}

function logList(vmId, limit) {
  const items = (ui.logs.get(vmId) || { items: [] }).items;
  const shown = limit ? items.slice(-limit) : items;
  const list = h("ol", { class: "log" }, shown.map((m) => h("li", { class: m.level },
    h("span", { class: "at" }, clock(m.at)), m.text)));
  if (!shown.length) list.append(h("li", { class: "muted" }, "no messages yet"));
  return list;
}

// A halted group is resumed only once no VM of it is failed (the gateway refuses otherwise):
// while one is, the banner names the VMs to retry first and offers no resume.
function failedVms(group) {
  return group.vms.filter((vm) => vm.state === "failed");
}

function haltBanner(group) {
  const failing = failedVms(group);
  const names = failing.map((vm) => vm.name).join(", ");
  return h("div", { id: "halt", class: "card halt" },
    h("h3", {}, `Group halted: ${group.halted_reason || "a VM failed"}`),
    failing.length
      ? [h("p", { class: "first", id: "retry-first" },
        `Retry ${names} first: the group can be resumed once none of its VMs is failed.`),
      failing.map((vm) => h("div", { class: "failing", dataset: { vm: vm.name } },
        h("p", {}, h("strong", { class: "failing-vm" }, vm.name), ` failed while ${vm.failed_from || "?"}`,
          vm.step ? ` at step ${vm.step}` : "", vm.message ? `: ${vm.message}` : ""),
        h("p", { class: "muted" }, "Last messages:"),
        logList(vm.id, 8),
        h("p", {}, h("button", { type: "button", class: "danger", dataset: { action: "retry" },
          onclick: () => actions.retry(vm) }, `Retry ${vm.name}`))))]
      : [h("p", {}, "No VM is failed any more: resume the group to let the held VMs carry on."),
        h("p", {}, h("button", { type: "button", class: "primary", dataset: { action: "resume" },
          onclick: () => actions.resume(group) }, `Resume ${group.name}`))]);
}

// A group at its end: cancelled or finalized (closed), on its way there, or stopped short.
function endBanner(group) {
  const when = group.closed_at ? ` at ${clock(group.closed_at)}` : "";
  const text = {
    cancelling: "Cancelling: its VMs are being deleted through the provider.",
    cancelled: `Cancelled${when}: its VMs were deleted and its archives removed; the legacy hosts were not touched. Its name is free again.`,
    finalizing: "Finalizing: closing the group after its cutover.",
    finalized: `Finalized${when}: the forwarding on the legacy hosts was ${group.legacy_forwarding || "?"}; its archives and VM tokens were removed. The group is closed.`,
  }[group.status];
  if (!text) return null;
  return h("div", { id: "ended", class: `card ended ${group.status}` },
    h("p", {}, text),
    group.closing_error ? h("p", { class: "error", id: "closing-error" },
      `Stopped: ${group.closing_error}`) : null);
}

function vmCard(vm) {
  const held = vm.held_state ? ` (held at ${vm.held_state})` : "";
  return h("article", { class: `card vm ${vm.state}`, dataset: { vm: vm.name } },
    h("div", { class: "vm-head" },
      h("h3", {}, vm.name), h("span", { class: "muted" }, vm.role),
      h("span", { class: `badge state ${vm.state}` }, vm.state), held),
    h("dl", { class: "facts" },
      h("dt", {}, "step"), h("dd", { class: "step" }, vm.step || "—"),
      h("dt", {}, "in phase"), h("dd", {}, since(vm.seconds_in_state)),
      // Why it is not moving on: it waits for a slot (docs/operations.md, "Limits").
      vm.waiting ? [h("dt", {}, "waiting"), h("dd", { class: "waiting" }, vm.waiting)] : null,
      vm.system ? [h("dt", {}, "legacy system"), h("dd", { class: "system" }, systemText(vm.system))] : null,
      vm.message ? [h("dt", {}, "message"), h("dd", { class: "message" }, vm.message)] : null),
    vm.state === "failed" ? h("p", {}, h("button", { type: "button", class: "danger",
      dataset: { action: "retry" }, onclick: () => actions.retry(vm) }, `Retry ${vm.name}`)) : null,
    logList(vm.id));
}

// The legacy host's system as the archiver read it: "Debian GNU/Linux 11 · sysvinit · ifupdown (eth0)".
function systemText(s) {
  const name = s.name || `${s.family} ${s.release}`;
  return `${name} · ${s.init} · ${s.network} (${s.interface || "eth0"})`;
}

function timelineCard() {
  const t = ui.timeline;
  if (!t || !t.vms.length) return null;
  const rows = t.vms.map((vm) => {
    const phases = vm.phases.map((p) => ({
      ...p, shown: p.seconds ?? Math.max(0, (Date.now() - new Date(p.entered_at)) / 1000),
    }));
    const total = phases.reduce((sum, p) => sum + p.shown, 0) || 1;
    return h("div", { class: "timeline-vm", dataset: { vm: vm.vm } },
      h("strong", {}, vm.vm),
      h("div", { class: "bar" }, phases.map((p) => h("span", {
        class: `phase-${p.state}`, style: { flex: String(Math.max(p.shown / total, 0.01)) },
        title: `${p.state}${p.step ? ` (${p.step})` : ""}: ${duration(p.shown)}`,
      }))),
      h("table", { class: "phases" },
        h("tr", {}, h("th", {}, "phase"), h("th", {}, "step"), h("th", {}, "entered"), h("th", {}, "time")),
        phases.map((p) => h("tr", {},
          h("td", {}, badge(p.state)), h("td", {}, p.step || ""), h("td", {}, clock(p.entered_at)),
          h("td", {}, p.seconds === null ? since(p.shown) : duration(p.seconds))))));
  });
  return h("details", { class: "card", id: "timeline" },
    h("summary", {}, h("strong", {}, "Timeline"), " each VM's phases and the time spent in each"),
    rows);
}

function cutoverCard(group) {
  const runs = (ui.cutover || { runs: [] }).runs;
  const ready = group.status === "ready";
  const closed = ["cancelling", "cancelled", "finalizing", "finalized"].includes(group.status);
  return h("div", { class: "card", id: "cutover" },
    h("div", { class: "group-head" }, h("h3", {}, "Cutover"),
      h("div", { class: "actions" },
        h("button", { type: "button", dataset: { action: "prepare-cutover" }, disabled: !ready,
          title: ready ? null : "only a ready group can cut over",
          onclick: () => actions.cutover(group, true) }, "Prepare cutover"),
        h("button", { type: "button", class: "primary", dataset: { action: "start-cutover" },
          disabled: !ready, title: ready ? null : "only a ready group can cut over",
          onclick: () => actions.cutover(group, false) }, "Start cutover"))),
    runs.length ? h("table", { class: "runs" },
      h("tr", {}, ["run", "kind", "status", "downtime", "requested", "finished", "reason"].map((c) => h("th", {}, c))),
      runs.map((run) => [
        h("tr", { class: "run", dataset: { run: run.id } },
          h("td", { class: "mono" }, run.id.slice(0, 8)), h("td", {}, run.prepare ? "prepare" : "cutover"),
          h("td", {}, badge(run.status)),
          h("td", { class: "downtime" }, run.downtime_s === null ? "—" : `${run.downtime_s.toFixed(1)}s`),
          h("td", {}, clock(run.created_at)), h("td", {}, clock(run.finished_at)), h("td", {}, run.reason || "")),
        run.steps.length ? h("tr", {}, h("td", {}), h("td", { colspan: 6 }, h("table", { class: "steps" },
          h("tr", {}, ["#", "step", "status", "started", "time", "what it did"].map((c) => h("th", {}, c))),
          run.steps.map((s) => h("tr", {}, h("td", {}, s.position), h("td", {}, s.name),
            h("td", {}, badge(s.status)), h("td", {}, clock(s.started_at)),
            h("td", {}, s.seconds === null ? "" : s.seconds < 10 ? `${s.seconds.toFixed(1)}s` : duration(s.seconds)),
            // A failure (or a failed undo) first; otherwise what the step did.
            s.error || s.undo_error
              ? h("td", { class: "error" }, [s.error, s.undo_error && `undo: ${s.undo_error}`].filter(Boolean).join("; "))
              : h("td", {}, s.detail || "")))))) : null,
      ])) : h("p", { class: "muted" }, ready ? "No cutover yet."
      : closed ? "The group has ended without a cutover." : "The group is not ready yet."));
}

function renderDetail() {
  const section = $("detail");
  const group = ui.detail;
  if (!group) {
    section.replaceChildren(h("p", { class: "muted", id: "pick" }, ui.groups.length ? "Loading…" : "Pick a group."));
    return;
  }
  const scroll = new Map([...section.querySelectorAll("[data-vm] .log")].map((el) => [el.closest("[data-vm]").dataset.vm, el.scrollTop]));
  const timelineOpen = $("timeline") ? $("timeline").open : false;
  const states = Object.entries(group.states).map(([s, n]) => `${s}: ${n}`).join(", ");
  section.replaceChildren(...[
    group.status === "halted" ? haltBanner(group) : null,
    endBanner(group),
    h("div", { class: "card" }, h("div", { class: "group-head" },
      h("h2", { id: "group-name" }, group.name),
      h("span", { id: "group-status", class: `badge ${group.status}` }, group.status),
      group.simulated ? simulatedBadge() : null,
      h("span", { class: "muted" }, `${group.vm_count} VMs — ${states}`),
      h("div", { class: "actions" }, group.status === "halted" && !failedVms(group).length
        ? h("button", { type: "button", dataset: { action: "resume" }, onclick: () => actions.resume(group) }, "Resume group")
        : null))),
    h("div", { class: "vms" }, group.vms.map(vmCard)),
    timelineCard(),
    cutoverCard(group),
    auditCard(),
  ].filter(Boolean));
  if (timelineOpen) $("timeline").open = true;
  for (const log of section.querySelectorAll(".vms [data-vm] .log")) {
    const before = scroll.get(log.closest("[data-vm]").dataset.vm);
    log.scrollTop = before === undefined || before + log.clientHeight >= log.scrollHeight - 40 ? log.scrollHeight : before;
  }
}

// Who did what to this group: its latest audit lines, newest first (`ferry audit GROUP`).
function auditCard() {
  const lines = (ui.audit || { lines: [] }).lines;
  return h("details", { class: "card", id: "audit" },
    h("summary", {}, h("strong", {}, "Audit"), ` the latest ${AUDIT_LINES} actions on this group`),
    lines.length ? h("table", { class: "audit" },
      h("tr", {}, ["at", "token", "role", "action", "status"].map((c) => h("th", {}, c))),
      lines.map((l) => h("tr", { class: "audit-line", dataset: { status: String(l.status) } },
        h("td", {}, clock(l.at)), h("td", {}, l.actor), h("td", {}, l.role),
        h("td", { class: "mono" }, `${l.method} ${l.path}`),
        h("td", { class: l.status >= 400 ? "error" : "" }, String(l.status)))))
      : h("p", { class: "muted" }, "No action yet."));
}

async function loadDeadLetters() {
  const box = $("dead-letter-list");
  const cards = await Promise.all(ui.services.map(async (service) => {
    let letters;
    try {
      letters = (await api("GET", `/v1/dead-letters/${service}`)).messages;
    } catch (err) {
      if (err instanceof Unauthorized) throw err;
      return h("div", { class: "card" }, h("h3", {}, service), h("p", { class: "error" }, err.message));
    }
    return h("div", { class: "card", dataset: { service } },
      h("div", { class: "group-head" }, h("h3", {}, service),
        h("span", { class: "badge count" }, `${letters.length}`),
        h("div", { class: "actions" }, h("button", { type: "button", disabled: !letters.length,
          dataset: { action: "replay-all" }, onclick: () => actions.replay(service) }, "Replay all"))),
      letters.length ? h("table", {},
        h("tr", {}, ["failed at", "type", "message", "attempts", "error", ""].map((c) => h("th", {}, c))),
        letters.map((l) => h("tr", {},
          h("td", {}, l.failed_at || ""), h("td", {}, l.type || ""), h("td", { class: "mono" }, l.message_id || ""),
          h("td", {}, l.attempts ?? ""), h("td", { class: "error mono" }, l.error || ""),
          h("td", {}, l.message_id ? h("button", { type: "button", dataset: { action: "replay" }, onclick: () => actions.replay(service, l.message_id) }, "Replay") : null))))
        : h("p", { class: "muted" }, "none"));
  }));
  box.replaceChildren(...cards);
}

function showDeadLetters() {
  $("detail").hidden = true;
  $("dead-letters").hidden = false;
  loadDeadLetters().catch(failed);
}

// ---- start ---------------------------------------------------------------------------------

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (token) signIn(token);
  });
  $("token-dialog").addEventListener("cancel", (event) => event.preventDefault());
  $("sign-out").addEventListener("click", signOut);
  $("show-dead-letters").addEventListener("click", showDeadLetters);
  $("refresh-dead-letters").addEventListener("click", () => loadDeadLetters().catch(failed));
  $("filter-status").append(...GROUP_STATUSES.map((s) => h("option", { value: s }, s)));
  $("filter-status").addEventListener("change", filterGroups);
  let typing = null; // the list follows the name as it is typed, once the typing pauses
  $("filter-name").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(filterGroups, 250);
  });
  $("group-filter").addEventListener("submit", (event) => event.preventDefault());
  $("groups-newer").addEventListener("click", () => turnPage(-1));
  $("groups-older").addEventListener("click", () => turnPage(1));
  setInterval(tick, 1000);
  setInterval(() => { if (ui.token && document.visibilityState === "visible") refresh(); }, POLL_MS);
  if (ui.token) signIn(ui.token);
  else askToken();
}

start();
