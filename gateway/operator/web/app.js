// iotgw live page: a small hand-written ES module, no framework, no build step.
//
// Data flow: sign in with an operator token (sessionStorage, sent as Bearer on every API
// call and in the feed's subscribe message), load the device list and the selected
// device's history from the HTTP API, then apply the live feed (WebSocket
// /api/v1/feed, docs/live.md) as messages arrive. Gateway status is re-read every 5 s.
// In a fleet (docs/scale-out.md: status has `fleet`, each device a `gateway`) the page says
// which gateway holds each device; this gateway's feed does not hear a device arrive on another
// gateway, so the device list's fleet fields are re-read with the status.
// Every string from a device goes into the page with textContent, never as HTML.

import { applyCommand, describeResult, renderControls } from "./controls.js";

const API = "/api/v1";
const TOKEN_KEY = "iotgw.token";
const LIVE_WINDOW_MS = 5 * 60_000;
const WINDOWS = {
  live: { span: LIVE_WINDOW_MS, every: null, label: "last 5 min" },
  "1h": { span: 3_600_000, every: 10_000, label: "last hour" },
  "24h": { span: 86_400_000, every: 240_000, label: "last 24 h" },
};
const MIN_LIVE_SPAN_MS = 30_000;
const MAX_POINTS = 6000;
const MAX_COMMANDS = 30;
const MAX_EVENTS = 50;

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  role: null,
  devices: new Map(), // name -> device (API fields, merged with feed updates)
  selected: null,
  window: "live",
  series: new Map(), // metric -> {points: [[ts, value]], kind: "number"|"bool"|"text", latest, seq}
  loading: false,
  pendingSamples: [], // feed readings of the selected device that arrive while history loads
  commands: new Map(), // id -> command
  feed: null,
  lastId: 0,
  epoch: null,
  backoff: 500,
  statusTimer: null,
  drawQueued: false,
  fleet: null, // /api/v1/status `fleet` (this gateway's name, peers, connected), null when alone
  fleetRefresh: null, // timer of a device-list re-read after a device left this gateway
};

// -- helpers ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "type" || key === "for") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 2) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function age(ms) {
  const s = Math.max(0, ms / 1000);
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function formatValue(value) {
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 0.001 || abs >= 1e6)) return value.toExponential(3);
    return String(Math.round(value * 1000) / 1000);
  }
  if (typeof value === "boolean") return value ? "on" : "off";
  if (value === null || value === undefined) return "–";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function count(n) {
  return typeof n === "number" ? n.toLocaleString() : "–";
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${state.token}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Unauthorized(body.detail || "token refused");
  if (!response.ok) {
    const error = new Error(body.detail || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// -- sign in / out -------------------------------------------------------------------------

function showSignIn(message = "") {
  $("signin").hidden = false;
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("operator").textContent = "";
  $("signin-error").textContent = message;
  setFeedState("idle", "signed out");
  $("token").focus();
}

function signOut(message = "") {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.feed) {
    state.feed.onclose = null;
    state.feed.close();
    state.feed = null;
  }
  clearInterval(state.statusTimer);
  clearTimeout(state.fleetRefresh);
  state.fleet = null;
  renderFleet();
  state.devices.clear();
  state.selected = null;
  state.lastId = 0;
  state.epoch = null;
  showSignIn(message);
}

async function signIn(token) {
  state.token = token;
  try {
    await refreshStatus();
  } catch (error) {
    state.token = null;
    if (error instanceof Unauthorized) showSignIn("That token was refused by the gateway (401).");
    else showSignIn(`Cannot reach the gateway: ${error.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("signin-error").textContent = "";
  await loadDevices();
  connectFeed();
  clearInterval(state.statusTimer);
  state.statusTimer = setInterval(() => refreshStatus().then(refreshFleetDevices).catch(handleError), 5000);
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted && state.devices.has(wanted)) selectDevice(wanted);
}

function handleError(error) {
  if (error instanceof Unauthorized) signOut("Your token is no longer accepted; sign in again.");
  else console.warn(error);
}

// -- gateway status --------------------------------------------------------------------------

async function refreshStatus() {
  const s = await api("/status");
  $("gw-version").textContent = `v${s.version}`;
  // in a fleet: online anywhere in the fleet (as the device list says), and where
  const elsewhere = s.fleet && typeof s.fleet.devices_elsewhere === "number" ? s.fleet.devices_elsewhere : null;
  const online = elsewhere === null ? s.devices_connected : s.devices_connected + elsewhere;
  $("st-devices").textContent = `${count(online)} / ${count(s.devices_registered)}`;
  $("st-devices-detail").textContent = elsewhere === null ? "" : `${count(s.devices_connected)} here · ${count(elsewhere)} on peers`;
  $("st-ingest").textContent = `${formatValue(s.ingest.samples_per_s)} samples/s`;
  $("st-pending").textContent = `${count(s.ingest.pending_samples)} samples`;
  const open = s.commands_open || {};
  $("st-commands").textContent = count((open.queued || 0) + (open.sent || 0));
  const fw = (s.forwarders || []).find((f) => f.name === "influx") || (s.forwarders || [])[0];
  if (!fw) {
    $("st-forwarder").textContent = "not configured";
    $("st-forwarder-detail").textContent = "";
    $("st-backlog").textContent = "–";
    $("st-dead").textContent = "–";
  } else {
    // An error is shown while it is the latest news; after a later success it moves to the tooltip.
    const current = fw.last_error && fw.state !== "ok" && !(fw.last_success_ms > (fw.last_error_ms || 0));
    $("st-forwarder").textContent = fw.state || "–";
    $("st-forwarder-detail").textContent = current ? fw.last_error : "";
    $("st-forwarder-detail").title = current ? fw.last_error : "";
    $("st-forwarder").dataset.state = fw.state || "";
    const past = fw.last_error && !current ? `\nlast error ${fw.last_error_ms ? ago(fw.last_error_ms) : ""}: ${fw.last_error}` : "";
    $("st-forwarder").title = `${fw.target || ""}${past}`;
    if (typeof fw.pending_readings === "number") {
      const oldest = fw.pending_readings && fw.oldest_pending_ts ? ` · oldest ${age(Date.now() - fw.oldest_pending_ts)}` : "";
      $("st-backlog").textContent = `${count(fw.pending_readings)} readings${oldest}`;
    } else {
      $("st-backlog").textContent = `${count(fw.sent_readings)} sent`;
    }
    $("st-dead").textContent = typeof fw.dead_letters === "number" ? count(fw.dead_letters) : "–";
  }
  const wasFleet = Boolean(state.fleet);
  state.fleet = s.fleet || null;
  renderFleet();
  if (wasFleet !== Boolean(state.fleet)) renderDeviceList();
  return s;
}

function renderFleet() {
  const f = state.fleet;
  $("st-fleet-tile").hidden = !f;
  $("gw-name").hidden = !f;
  document.title = f ? `iotgw · ${f.gateway} · live` : "iotgw · live";
  if (!f) return;
  $("gw-name").textContent = f.gateway;
  const peers = f.peers || [];
  const value = $("st-fleet");
  value.textContent = f.gateway;
  value.dataset.state = f.connected ? "connected" : "disconnected";
  value.title = `this gateway is ${f.gateway} in a fleet of ${peers.length + 1}`;
  const detail = $("st-fleet-detail");
  const parts = [f.connected ? "connected" : "fleet link down"];
  parts.push(peers.length ? `peers ${peers.join(", ")}` : "no peers");
  detail.textContent = parts.join(" · ");
  detail.title = detail.textContent;
  detail.dataset.state = value.dataset.state;
}

/** The gateway holding a device, as the page says it: null when not in a fleet or nobody holds it. */
function holderOf(d) {
  if (!state.fleet || !d.gateway) return null;
  return { name: d.gateway, here: d.gateway === state.fleet.gateway };
}

/** In a fleet: re-read where the devices are (a device arriving on a peer is not in this feed). */
async function refreshFleetDevices() {
  if (!state.fleet || !state.token) return;
  const list = await api("/devices");
  for (const d of list) {
    const known = state.devices.get(d.name);
    if (!known) {
      updateDevice(d.name, d);
      continue;
    }
    // where it is, and what it declared (a peer's hello reaches this gateway's store: docs/scale-out.md);
    // commands and outputs only when they changed, so an open command form is not redrawn every poll
    const fields = {};
    if (known.gateway !== d.gateway || known.online !== d.online) Object.assign(fields, { online: d.online, gateway: d.gateway, peer: d.peer });
    if (JSON.stringify(known.commands) !== JSON.stringify(d.commands)) fields.commands = d.commands;
    if ((known.info || {}).outputs !== (d.info || {}).outputs) fields.info = d.info;
    if (known.agent !== d.agent) fields.agent = d.agent;
    if (Object.keys(fields).length) updateDevice(d.name, fields);
  }
}

function scheduleFleetRefresh() {
  if (!state.fleet) return;
  clearTimeout(state.fleetRefresh);
  state.fleetRefresh = setTimeout(() => refreshStatus().then(refreshFleetDevices).catch(handleError), 1500);
}

// -- devices ------------------------------------------------------------------------------------

async function loadDevices() {
  const list = await api("/devices");
  state.devices = new Map(list.map((d) => [d.name, d]));
  deviceItems.clear();
  renderDeviceList();
  if (state.selected && state.devices.has(state.selected)) renderDeviceHead();
}

function sortedDevices() {
  const filter = $("device-filter").value.trim().toLowerCase();
  return [...state.devices.values()]
    .filter((d) => !filter || d.name.toLowerCase().includes(filter) || (d.agent || "").toLowerCase().includes(filter))
    .sort((a, b) => (b.online - a.online) || a.name.localeCompare(b.name));
}

const deviceItems = new Map(); // name -> <li>, updated in place so clicks and focus survive updates

function renderDeviceList() {
  const list = $("device-list");
  const devices = sortedDevices();
  for (const d of devices) {
    let item = deviceItems.get(d.name);
    if (!item) {
      item = deviceItem(d.name);
      deviceItems.set(d.name, item);
    }
    fillDeviceItem(item, d);
  }
  const order = devices.map((d) => d.name);
  const shown = [...list.children].map((li) => li.dataset.name);
  if (shown.join("\n") !== order.join("\n")) list.replaceChildren(...order.map((name) => deviceItems.get(name)));
  const online = [...state.devices.values()].filter((d) => d.online).length;
  $("device-count").textContent = `${online} / ${state.devices.size} online`;
  $("no-devices").hidden = state.devices.size > 0;
}

function deviceItem(name) {
  const button = el(
    "button",
    { type: "button", "data-device": name },
    el("span", { class: "dot" }),
    el("span", { class: "name-row" }, el("span", { class: "name", text: name }), el("span", { class: "via", hidden: true })),
    el("span", { class: "seen" }),
    el("span", { class: "sub" }),
  );
  button.addEventListener("click", () => selectDevice(name));
  return el("li", { "data-name": name }, button);
}

function fillDeviceItem(item, d) {
  const button = item.firstChild;
  button.setAttribute("aria-current", String(d.name === state.selected));
  const dot = button.querySelector(".dot");
  dot.dataset.online = String(d.online);
  dot.title = d.online ? "online" : "offline";
  const seen = button.querySelector(".seen");
  seen.dataset.ts = d.last_seen_ms ?? "";
  seen.textContent = ago(d.last_seen_ms);
  const holder = holderOf(d);
  fillVia(button.querySelector(".via"), holder);
  const agent = d.agent || (holder ? "not connected here yet" : "never connected");
  button.querySelector(".sub").textContent = `${agent} · buf ${count(d.buffered)} · drop ${count(d.dropped)}`;
}

/** The "via gw-b" tag: the fleet gateway holding the device (this one's name, muted, when here). */
function fillVia(tag, holder) {
  tag.hidden = !holder;
  if (!holder) {
    delete tag.dataset.gateway;
    return;
  }
  tag.dataset.gateway = holder.name;
  tag.dataset.here = String(holder.here);
  tag.textContent = holder.here ? holder.name : `via ${holder.name}`;
  tag.title = holder.here
    ? `held by this gateway (${holder.name})`
    : `held by gateway ${holder.name}: commands sent here are routed there`;
}

function updateDevice(name, fields) {
  let device = state.devices.get(name);
  if (!device) {
    device = { name, online: false, last_seen_ms: null, agent: "", labels: {}, sensors: [], commands: [], info: {}, buffered: 0, dropped: 0, last_seq: 0 };
    state.devices.set(name, device);
  }
  const outputs = device.info?.outputs;
  Object.assign(device, fields);
  scheduleListRender();
  if (name === state.selected) {
    renderDeviceHead();
    if ("commands" in fields || "gateway" in fields || device.info?.outputs !== outputs) renderCommandForm();
  }
}

let listRenderQueued = false;
function scheduleListRender() {
  if (listRenderQueued) return;
  listRenderQueued = true;
  requestAnimationFrame(() => {
    listRenderQueued = false;
    renderDeviceList();
  });
}

async function selectDevice(name) {
  state.selected = name;
  history.replaceState(null, "", `#${encodeURIComponent(name)}`);
  state.series = new Map();
  state.commands = new Map();
  $("no-device").hidden = true;
  $("device-view").hidden = false;
  $("charts").replaceChildren();
  $("events").replaceChildren();
  $("command-log").replaceChildren();
  $("cmd-error").textContent = "";
  renderDeviceList();
  renderDeviceHead();
  renderCommandForm();
  await Promise.all([loadHistory(), loadCommands()]).catch(handleError);
}

function renderDeviceHead() {
  const d = state.devices.get(state.selected);
  if (!d) return;
  $("dv-name").textContent = d.name;
  const badge = $("dv-online");
  badge.dataset.online = String(d.online);
  badge.textContent = d.online ? "online" : "offline";
  badge.title = d.peer || "";
  const holder = holderOf(d);
  fillVia($("dv-via"), holder);
  $("dv-gateway-fact").hidden = !state.fleet;
  $("dv-gateway").textContent = !holder ? "none" : holder.here ? `${holder.name} (this one)` : `${holder.name} (routed)`;
  const seen = $("dv-seen");
  seen.dataset.ts = d.last_seen_ms ?? "";
  seen.textContent = ago(d.last_seen_ms);
  $("dv-seq").textContent = d.last_seq ? String(d.last_seq) : "–";
  $("dv-agent").textContent = d.agent || "–";
  $("dv-buffered").textContent = count(d.buffered);
  $("dv-dropped").textContent = count(d.dropped);
  const labels = Object.entries(d.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  $("dv-labels").textContent = labels || "–";
}

// -- readings: history + live ----------------------------------------------------------------

function unitOf(device, metric) {
  const sensor = (device?.sensors || []).find((s) => s.metric === metric);
  return sensor?.unit || "";
}

function kindOf(value) {
  return typeof value === "number" ? "number" : typeof value === "boolean" ? "bool" : "text";
}

async function loadHistory() {
  const name = state.selected;
  const windowName = state.window;
  const win = WINDOWS[windowName];
  state.loading = true;
  state.pendingSamples = [];
  const enc = encodeURIComponent(name);
  try {
    const latest = await api(`/devices/${enc}/readings/latest`);
    const metrics = new Set(Object.keys(latest.values)); // a chart per metric with data
    const start = Date.now() - win.span;
    const series = new Map();
    await Promise.all([...metrics].map(async (metric) => {
      const point = latest.values[metric];
      const kind = point ? kindOf(point.value) : "number";
      const entry = { points: [], kind, latest: point ? point.value : undefined, ts: point ? point.ts : null };
      series.set(metric, entry);
      if (kind === "text") return;
      const every = win.every ? `&every=${win.every}` : "";
      const h = await api(`/devices/${enc}/readings?metric=${encodeURIComponent(metric)}&start=${start}&limit=${MAX_POINTS}${every}`);
      entry.points = h.every ? h.buckets.map((b) => [b.ts, b.mean]) : h.points.map((p) => [p.ts, toNumber(p.value)]).filter((p) => p[1] !== null);
    }));
    const events = await api(`/devices/${enc}/events?start=${start}&limit=${MAX_EVENTS * 4}`);
    if (state.selected !== name || state.window !== windowName) return; // the user moved on
    state.series = series;
    renderEvents(events.events.slice(-MAX_EVENTS));
  } finally {
    if (state.selected === name) {
      state.loading = false;
      const pending = state.pendingSamples;
      state.pendingSamples = [];
      for (const [seq, sample] of pending) addSample(seq, sample);
      renderCharts();
    }
  }
}

function toNumber(value) {
  if (typeof value === "number") return value;
  if (typeof value === "boolean") return value ? 1 : 0;
  return null;
}

function addSample(seq, sample) {
  for (const [metric, value] of Object.entries(sample.values)) {
    let entry = state.series.get(metric);
    if (!entry) {
      entry = { points: [], kind: kindOf(value), latest: undefined, ts: null };
      state.series.set(metric, entry);
      state.chartsStale = true;
    }
    const n = toNumber(value);
    const last = entry.points[entry.points.length - 1];
    if (n !== null && (!last || sample.ts >= last[0])) {
      entry.points.push([sample.ts, n]);
      if (entry.points.length > MAX_POINTS) entry.points.splice(0, entry.points.length - MAX_POINTS);
    }
    if (entry.ts === null || sample.ts >= entry.ts) {
      entry.latest = value;
      entry.ts = sample.ts;
      entry.seq = seq;
    }
  }
}

function renderCharts() {
  const charts = $("charts");
  const device = state.devices.get(state.selected);
  const metrics = [...state.series.keys()].sort();
  const existing = new Map([...charts.children].map((fig) => [fig.dataset.metric, fig]));
  const figures = metrics.map((metric) => existing.get(metric) || chartFigure(metric, unitOf(device, metric)));
  charts.replaceChildren(...figures);
  $("no-readings").hidden = metrics.length > 0;
  const holder = device ? holderOf(device) : null;
  // readings are stored by the gateway that received them (docs/scale-out.md): say so
  $("no-readings").textContent = holder && !holder.here
    ? `No readings here in this window: ${holder.name} holds this device now and stores what it sends.`
    : "No readings in this window yet.";
  state.chartsStale = false;
  drawAll();
}

function chartFigure(metric, unit) {
  const entry = state.series.get(metric);
  const text = entry.kind === "text";
  const latest = el("span", { class: "latest", "data-metric": metric });
  const fig = el(
    "figure",
    { class: text ? "chart text" : "chart", "data-metric": metric },
    el("figcaption", {}, el("span", { class: "metric", text: metric, title: metric }), el("span", {}, latest, el("span", { class: "unit", text: unit }))),
    text ? null : el("canvas", { "aria-label": `${metric} over time`, role: "img" }),
    el("div", { class: "when" }),
  );
  return fig;
}

function scheduleDraw() {
  if (state.drawQueued) return;
  state.drawQueued = true;
  requestAnimationFrame(() => {
    state.drawQueued = false;
    if (state.chartsStale) renderCharts();
    else drawAll();
  });
}

function drawAll() {
  const win = WINDOWS[state.window];
  const now = Date.now();
  for (const fig of $("charts").children) {
    const entry = state.series.get(fig.dataset.metric);
    if (!entry) continue;
    const latest = fig.querySelector(".latest");
    latest.textContent = formatValue(entry.latest);
    if (entry.seq !== undefined) latest.dataset.seq = String(entry.seq);
    fig.querySelector(".when").textContent = entry.ts ? `${clock(entry.ts)} · ${win.label}` : win.label;
    const canvas = fig.querySelector("canvas");
    if (!canvas) continue;
    let x0 = now - win.span;
    if (state.window === "live" && entry.points.length) {
      // a device that just started fills the chart instead of a sliver at its right edge
      x0 = Math.max(x0, Math.min(entry.points[0][0], now - MIN_LIVE_SPAN_MS));
    }
    drawChart(canvas, entry, x0, now, entry.kind === "bool");
  }
}

function drawChart(canvas, entry, x0, x1, step) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const css = getComputedStyle(document.documentElement);
  const color = css.getPropertyValue("--chart").trim();
  const fill = css.getPropertyValue("--chart-fill").trim();
  const grid = css.getPropertyValue("--grid").trim();
  const muted = css.getPropertyValue("--muted").trim();
  const points = entry.points.filter((p) => p[0] >= x0);
  // drop what scrolled out of the window, so memory stays bounded in a long session
  if (points.length < entry.points.length - 1) entry.points.splice(0, entry.points.length - points.length - 1);
  let lo = Infinity;
  let hi = -Infinity;
  for (const [, v] of points) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (step) {
    lo = 0;
    hi = 1;
  } else if (!points.length) {
    lo = 0;
    hi = 1;
  } else if (lo === hi) {
    lo -= Math.abs(lo) * 0.05 || 1;
    hi += Math.abs(hi) * 0.05 || 1;
  } else {
    const pad = (hi - lo) * 0.08;
    lo -= pad;
    hi += pad;
  }
  const left = 44;
  const right = 6;
  const top = 6;
  const bottom = 18;
  const w = width - left - right;
  const h = height - top - bottom;
  const xs = (t) => left + ((t - x0) / (x1 - x0)) * w;
  const ys = (v) => top + (1 - (v - lo) / (hi - lo)) * h;
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.strokeStyle = grid;
  ctx.fillStyle = muted;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  const ticks = step ? [0, 1] : [lo, (lo + hi) / 2, hi];
  for (const v of ticks) {
    const y = Math.round(ys(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(width - right, y);
    ctx.stroke();
    ctx.fillText(step ? (v ? "on" : "off") : formatValue(Number(v.toPrecision(3))), left - 6, y);
  }
  ctx.textBaseline = "alphabetic";
  ctx.textAlign = "left";
  ctx.fillText(`-${age(x1 - x0)}`, left, height - 3);
  ctx.textAlign = "right";
  ctx.fillText("now", width - right, height - 3);
  if (!points.length) return;
  ctx.beginPath();
  points.forEach(([t, v], i) => {
    const x = xs(t);
    const y = ys(v);
    if (i === 0) ctx.moveTo(x, y);
    else if (step) {
      ctx.lineTo(x, ys(points[i - 1][1]));
      ctx.lineTo(x, y);
    } else ctx.lineTo(x, y);
  });
  const lastX = xs(points[points.length - 1][0]);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.75;
  ctx.lineJoin = "round";
  ctx.stroke();
  ctx.lineTo(lastX, top + h);
  ctx.lineTo(xs(points[0][0]), top + h);
  ctx.closePath();
  ctx.fillStyle = fill;
  ctx.fill();
  const [lt, lv] = points[points.length - 1];
  ctx.beginPath();
  ctx.arc(xs(lt), ys(lv), 3, 0, Math.PI * 2);
  ctx.fillStyle = color;
  ctx.fill();
}

function renderEvents(events) {
  const list = $("events");
  list.replaceChildren(...events.reverse().map(eventItem));
  $("no-events").hidden = events.length > 0;
}

function eventItem(e) {
  const data = Object.entries(e.data || {}).map(([k, v]) => `${k}=${formatValue(v)}`).join(" ");
  return el("li", { "data-seq": String(e.seq) }, el("time", { text: clock(e.ts) }), el("span", { text: `${e.name} ${data}`.trim() }));
}

function addEvent(e) {
  const list = $("events");
  list.prepend(eventItem(e));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  $("no-events").hidden = true;
}

// -- commands ------------------------------------------------------------------------------

function renderCommandForm() {
  const device = state.devices.get(state.selected);
  const declared = device?.commands || [];
  const select = $("cmd-name");
  const previous = select.value;
  select.replaceChildren(...declared.map((c) => el("option", { value: c.name, text: c.name })));
  if (declared.some((c) => c.name === previous)) select.value = previous;
  const readOnly = state.role === "read";
  const none = declared.length === 0;
  $("command-form").hidden = none;
  $("cmd-send").disabled = readOnly;
  const note = $("cmd-note");
  note.hidden = !(none || readOnly);
  const holder = device ? holderOf(device) : null;
  note.textContent = none && holder && !holder.here && !device.agent
    ? `This device is held by ${holder.name} and has not connected to this gateway yet: its commands and outputs are not known here (${holder.name}'s page lists them).`
    : none
      ? "This device declares no commands."
      : "Your token has the read role: sending commands needs a control token.";
  renderArgs();
  renderControls(device, { send: postCommand, readOnly });
}

function renderArgs() {
  const device = state.devices.get(state.selected);
  const command = (device?.commands || []).find((c) => c.name === $("cmd-name").value);
  $("cmd-description").textContent = command?.description || "";
  const args = Object.entries(command?.args || {});
  $("cmd-args").replaceChildren(...args.map(([name, description]) => el(
    "div",
    { class: "field" },
    el("label", { for: `arg-${name}`, text: name }),
    el("input", { id: `arg-${name}`, name, placeholder: description, title: description, autocomplete: "off", "data-arg": name }),
  )));
}

function parseArg(text) {
  const trimmed = text.trim();
  if (trimmed === "") return undefined;
  try {
    return JSON.parse(trimmed); // 1, 0.5, true, "quoted", {"a": 1}
  } catch {
    return trimmed;
  }
}

async function sendCommand(event) {
  event.preventDefault();
  const name = $("cmd-name").value;
  if (!name || !state.selected) return;
  const args = {};
  for (const input of $("cmd-args").querySelectorAll("input[data-arg]")) {
    const value = parseArg(input.value);
    if (value !== undefined) args[input.dataset.arg] = value;
  }
  $("cmd-error").textContent = "";
  $("cmd-send").disabled = true;
  try {
    await postCommand(name, args);
  } catch (error) {
    $("cmd-error").textContent = error.message;
  } finally {
    $("cmd-send").disabled = state.role === "read";
  }
}

/**
 * Send a command to the selected device and resolve with its final record (the feed shows
 * the states in between; the long poll is the backstop while the feed is down). Throws an
 * Error with a readable message when the gateway refuses it; signs out on 401.
 */
async function postCommand(name, args) {
  const timeout = Math.min(300, Math.max(0.1, Number($("cmd-timeout").value) || 10));
  const device = state.selected;
  try {
    const record = await api(`/devices/${encodeURIComponent(device)}/commands`, {
      method: "POST",
      body: { name, args, timeout, wait: false },
    });
    showCommand(record);
    if (FINAL.has(record.state)) return record;
    const final = await api(`/commands/${encodeURIComponent(record.id)}?wait=${timeout + 1}`);
    if (state.selected === device) showCommand(final);
    return final;
  } catch (error) {
    if (error instanceof Unauthorized) {
      handleError(error);
      throw new Error("your token is no longer accepted");
    }
    if (error.status === 403) throw new Error("your token may not send commands (it needs the control role)");
    throw error;
  }
}

async function loadCommands() {
  const name = state.selected;
  const result = await api(`/devices/${encodeURIComponent(name)}/commands?limit=${MAX_COMMANDS}`);
  if (state.selected !== name) return;
  for (const command of result.commands.reverse()) showCommand(command);
}

const FINAL = new Set(["succeeded", "failed", "expired"]);

function showCommand(command) {
  if (command.device !== state.selected) return;
  const known = state.commands.get(command.id);
  // states only move forward: ignore a stale snapshot that arrives late
  if (known && FINAL.has(known.state) && !FINAL.has(command.state)) return;
  state.commands.set(command.id, { ...known, ...command });
  const merged = state.commands.get(command.id);
  const row = commandRow(merged);
  const log = $("command-log");
  const old = log.querySelector(`tr[data-command-id="${CSS.escape(command.id)}"]`);
  if (old) old.replaceWith(row);
  else log.prepend(row);
  while (log.children.length > MAX_COMMANDS) log.lastChild.remove();
  applyCommand(merged);
}

function commandRow(c) {
  const args = Object.entries(c.args || {}).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
  const result = el("td", { class: "result", text: describeResult(c) });
  // the raw value stays at hand: as a tooltip for people, as data-value for scripts
  if (c.value !== null && c.value !== undefined) {
    result.title = JSON.stringify(c.value);
    result.dataset.value = JSON.stringify(c.value);
  }
  return el(
    "tr",
    { "data-command-id": c.id, "data-state": c.state },
    el("td", { text: clock(c.created_ms) }),
    el("td", { text: `${c.name}${args ? " " + args : ""}` }),
    el("td", {}, el("span", { class: "state", "data-state": c.state, text: c.state })),
    result,
    el("td", { text: c.sender || "" }),
  );
}

// -- the live feed ----------------------------------------------------------------------------

function setFeedState(stateName, text) {
  const pill = $("feed-state");
  pill.dataset.state = stateName;
  pill.textContent = text;
}

function connectFeed() {
  if (!state.token) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${API}/feed`);
  state.feed = ws;
  setFeedState("connecting", "connecting…");
  ws.onopen = () => {
    // The token goes in the first message, not the URL, so it never reaches a log.
    const subscribe = { type: "subscribe", token: state.token };
    if (state.epoch) {
      subscribe.after = state.lastId;
      subscribe.epoch = state.epoch;
    }
    ws.send(JSON.stringify(subscribe));
  };
  ws.onmessage = (event) => onFeedMessage(JSON.parse(event.data));
  ws.onclose = (event) => {
    if (state.feed !== ws) return;
    state.feed = null;
    if (event.code === 4401) {
      signOut("The live feed refused your token; sign in again.");
      return;
    }
    setFeedState("down", "reconnecting…");
    setTimeout(connectFeed, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 10_000);
  };
}

function onFeedMessage(m) {
  if (m.type === "subscribed") {
    state.backoff = 500;
    state.role = m.role;
    $("operator").textContent = `${m.operator} (${m.role})`;
    setFeedState("live", "live");
    const missed = !m.resumed || (state.epoch && state.epoch !== m.epoch);
    state.epoch = m.epoch;
    if (!m.resumed || state.lastId === 0) state.lastId = m.last_id;
    if (missed) {
      // Messages were lost while disconnected: reload what the page shows from the store.
      loadDevices().catch(handleError);
      if (state.selected) selectDevice(state.selected);
    } else if (state.selected) renderCommandForm();
    return;
  }
  if (typeof m.id === "number") state.lastId = m.id;
  switch (m.type) {
    case "readings": {
      const last = m.samples[m.samples.length - 1];
      updateDevice(m.device, { last_seen_ms: m.at, last_seq: m.seq });
      if (m.device === state.selected) {
        for (const sample of m.samples) {
          if (state.loading) state.pendingSamples.push([m.seq, sample]);
          else addSample(m.seq, sample);
        }
        if (!state.loading && last) scheduleDraw();
      }
      break;
    }
    case "event":
      updateDevice(m.device, { last_seen_ms: m.at, last_seq: m.seq });
      if (m.device === state.selected) addEvent(m);
      break;
    case "device": {
      const { id, type, device, at, ...fields } = m;
      if (fields.online === false) fields.peer = null;
      if (state.fleet && "online" in fields) {
        // held here now; or gone from here, maybe to a peer: where it is is re-read soon
        fields.gateway = fields.online ? state.fleet.gateway : null;
        scheduleFleetRefresh();
      }
      if ("online" in fields || "buffered" in fields) fields.last_seen_ms = at;
      // a status frame's info (health figures) adds to what hello declared (e.g. outputs)
      if (fields.info && !("agent" in fields)) fields.info = { ...(state.devices.get(device)?.info || {}), ...fields.info };
      updateDevice(device, fields);
      break;
    }
    case "command":
      showCommand({ device: m.device, ...m.command });
      break;
    default:
      break;
  }
}

// -- wiring -----------------------------------------------------------------------------------

function tick() {
  for (const node of document.querySelectorAll("[data-ts]")) {
    const ts = node.dataset.ts;
    node.textContent = ago(ts === "" ? null : Number(ts));
  }
  if (state.selected && !state.loading) drawAll(); // the time axis moves even when nothing arrives
}

function init() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token) signIn(token);
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("device-filter").addEventListener("input", renderDeviceList);
  $("cmd-name").addEventListener("change", renderArgs);
  $("command-form").addEventListener("submit", sendCommand);
  for (const button of $("window").querySelectorAll("button")) {
    button.addEventListener("click", () => {
      state.window = button.dataset.window;
      for (const b of $("window").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === button));
      state.series = new Map();
      $("charts").replaceChildren();
      loadHistory().catch(handleError);
    });
  }
  window.addEventListener("resize", scheduleDraw);
  setInterval(tick, 1000);
  if (state.token) signIn(state.token);
  else showSignIn();
}

init();
