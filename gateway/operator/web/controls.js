// iotgw live page: actuator controls and command results as text.
//
// A device declares its outputs in hello.info.outputs ("name:type,...", docs/commands.md §5)
// and its commands in hello.commands. Each output gets a control that fits its kind: a switch
// for on/off outputs (led, output, buzzer), a slider for pwm_led (0 … 1) and servo (-1 … 1).
// Each declared command without arguments gets a button. A control always shows the state the
// device last reported in a command result (`value` of set/toggle/blink, `actuators` of ping),
// never the click: while a command is on its way the control says so and waits for the result.
// app.js calls renderControls() when the device or its declaration changes and
// applyCommand() for every command snapshot it sees (history, feed, long poll).

const SWITCH_KINDS = new Set(["led", "output", "buzzer", ""]);
const SLIDERS = {
  pwm_led: { min: 0, max: 1, step: 0.05 },
  servo: { min: -1, max: 1, step: 0.05 },
};
const FINAL = new Set(["succeeded", "failed", "expired"]);
const ACTUATOR_COMMANDS = new Set(["set", "toggle", "blink"]);

const view = {
  device: null, // the device name the controls belong to
  outputs: [], // [{name, kind}]
  states: new Map(), // output name -> {value, pin_state, blinking, at}
  pending: new Map(), // output name -> command id on its way
  errors: new Map(), // output name -> readable error of its last command
  send: null, // async (name, args) => final command record; throws with a readable message
  readOnly: false,
};

function node(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "text") n.textContent = value;
    else if (key === "class") n.className = value;
    else n.setAttribute(key, value);
  }
  for (const child of children) if (child) n.append(child);
  return n;
}

/** The outputs a device declares: [{name, kind}] from info.outputs ("name:type,..."). */
export function outputsOf(device) {
  const raw = device?.info?.outputs;
  if (typeof raw !== "string" || !raw.trim()) return [];
  return raw.split(",").map((part) => {
    const [name, kind = ""] = part.trim().split(":");
    return { name: name.trim(), kind: kind.trim() };
  }).filter((o) => o.name);
}

function num(value) {
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : String(Math.round(value * 1000) / 1000);
}

function seconds(value) {
  if (typeof value !== "number") return String(value);
  if (value < 60) return `${num(value)} s`;
  if (value < 3600) return `${num(value / 60)} min`;
  if (value < 86400) return `${num(value / 3600)} h`;
  return `${num(value / 86400)} d`;
}

function stateWord(kind, value) {
  if (typeof value === "boolean") return value ? "on" : "off";
  if (value === null || value === undefined) return kind === "servo" ? "detached" : "unknown";
  if (kind === "pwm_led" && typeof value === "number") return `${Math.round(value * 100)} %`;
  return num(value);
}

function plain(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "on" : "off";
  if (typeof value === "number") return num(value);
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return value.map(plain).join(", ");
  return Object.entries(value).map(([k, v]) => `${k}: ${plain(v)}`).join(", ");
}

/** One actuator's state from a set/toggle/blink value, as a sentence. */
function actuatorSentence(v) {
  let text = `${v.target} is ${typeof v.value === "number" ? "at " : ""}${stateWord(v.type, v.value)}`;
  if (v.pin !== undefined && v.pin !== null) {
    const level = v.pin_state === true || v.pin_state === 1 ? "high" : v.pin_state === false || v.pin_state === 0 ? "low" : plain(v.pin_state);
    text += ` (GPIO${v.pin} ${level})`;
  }
  if (v.blinking) {
    const b = v.blinking;
    const times = b.n === null || b.n === undefined ? "until the next set" : `${b.n}×`;
    text += `, blinking ${num(b.on_time)} s on / ${num(b.off_time)} s off, ${times}`;
  }
  return text;
}

/** A command's result as text for people: what happened, not the raw JSON. */
export function describeResult(c) {
  if (c.state === "queued") return "waiting for the device to be online…";
  if (c.state === "sent") return "waiting for the device…";
  if (c.state === "expired") return c.error ? `expired: ${c.error}` : "expired: the device did not answer in time";
  if (c.state === "failed") {
    const out = c.value && typeof c.value === "object" && c.value.stderr ? ` (${lastLine(c.value.stderr)})` : "";
    return `failed: ${c.error || "no reason given"}${out}`;
  }
  if (c.state !== "succeeded") return c.error || "";
  const v = c.value;
  if (v === null || v === undefined) return "done";
  if (typeof v !== "object" || Array.isArray(v)) return plain(v);
  if ("target" in v && "value" in v) return actuatorSentence(v);
  if (v.pong) {
    const parts = ["pong"];
    if (typeof v.uptime_s === "number") parts.push(`up ${seconds(v.uptime_s)}`);
    if (typeof v.interval_s === "number") parts.push(`every ${seconds(v.interval_s)}`);
    for (const [name, value] of Object.entries(v.actuators || {})) parts.push(`${name} ${stateWord("", value)}`);
    return parts.join(" · ");
  }
  if ("interval_s" in v && "previous_s" in v) return `interval now ${seconds(v.interval_s)} (was ${seconds(v.previous_s)})`;
  if ("exit_code" in v) {
    const out = lastLine(v.stdout || "");
    return `exited with code ${v.exit_code}${out ? `: ${out}` : ""}`;
  }
  if (v.values && typeof v.values === "object") {
    const values = Object.entries(v.values).map(([k, x]) => `${k} = ${plain(x)}`);
    return `read ${values.length} value${values.length === 1 ? "" : "s"}${values.length ? ": " + values.join(", ") : ""}`;
  }
  return plain(v);
}

function lastLine(text) {
  const lines = String(text).trim().split("\n");
  return lines[lines.length - 1].slice(0, 200);
}

/** Learn actuator states (and pending/error marks) from a command snapshot of the shown device. */
export function applyCommand(c) {
  if (c.device !== view.device) return;
  const target = c.args?.target ?? (view.outputs.length === 1 ? view.outputs[0].name : undefined);
  if (ACTUATOR_COMMANDS.has(c.name) && target !== undefined) {
    if (!FINAL.has(c.state)) {
      view.pending.set(target, c.id);
    } else {
      if (view.pending.get(target) === c.id) view.pending.delete(target);
      if (c.state === "succeeded") view.errors.delete(target);
      else if (!view.pending.has(target)) view.errors.set(target, `${c.name} ${describeResult(c)}`);
    }
  }
  if (c.state === "succeeded" && c.value && typeof c.value === "object") {
    const at = c.updated_ms ?? 0;
    const learn = (name, fields) => {
      const known = view.states.get(name);
      if (!known || at >= known.at) view.states.set(name, { ...fields, at });
    };
    if ("target" in c.value && "value" in c.value) learn(c.value.target, c.value);
    for (const [name, value] of Object.entries(c.value.actuators || {})) learn(name, { value });
  }
  paint();
}

/**
 * Build the controls of ``device`` into #controls. ``send(name, args)`` posts a command and
 * resolves with its final record (or throws an Error whose message is readable).
 * Keeps the states learnt so far when the same device is rendered again.
 */
export function renderControls(device, { send, readOnly }) {
  if (!device || device.name !== view.device) {
    view.states.clear();
    view.pending.clear();
    view.errors.clear();
  }
  view.device = device?.name ?? null;
  view.send = send;
  view.readOnly = readOnly;
  view.outputs = outputsOf(device);
  const commands = (device?.commands || []).filter((c) => Object.keys(c.args || {}).length === 0);
  const box = document.getElementById("controls");
  const outputs = view.outputs.map(outputControl);
  const buttons = commands.map((c) => node(
    "button",
    { type: "button", class: "ghost action", "data-command": c.name, title: c.description || c.name, text: c.name },
  ));
  for (const button of buttons) button.addEventListener("click", () => run(button.dataset.command, {}, null, button));
  box.replaceChildren(...outputs, buttons.length ? node("div", { class: "actions" }, ...buttons) : null);
  box.hidden = outputs.length + buttons.length === 0;
  paint();
}

function outputControl({ name, kind }) {
  const slider = SLIDERS[kind];
  const label = node("span", { class: "out-name", text: name });
  const kindLabel = node("span", { class: "out-kind muted", text: kind || "output" });
  const status = node("span", { class: "out-state", "aria-live": "polite" });
  const error = node("span", { class: "out-error error", role: "alert" });
  let control;
  if (slider) {
    control = node("input", { type: "range", min: slider.min, max: slider.max, step: slider.step, value: slider.min, "aria-label": `${name} level` });
    control.addEventListener("change", () => {
      const value = Number(control.value);
      run("set", { target: name, value }, name, control);
    });
  } else {
    control = node("button", { type: "button", role: "switch", class: "switch", "aria-checked": "false", "aria-label": `${name} on/off` }, node("span", { class: "knob" }));
    control.addEventListener("click", () => {
      const known = view.states.get(name);
      run("set", { target: name, value: !(known && known.value === true) }, name, control);
    });
  }
  control.classList.add("out-control");
  return node("div", { class: "output", "data-output": name, "data-kind": kind }, node("div", { class: "out-head" }, label, kindLabel), control, status, error);
}

async function run(command, args, target, control) {
  if (!view.send || view.readOnly) return;
  const device = view.device;
  if (target !== null) {
    view.errors.delete(target);
    view.pending.set(target, "sending");
  }
  control.disabled = true;
  paint();
  try {
    const record = await view.send(command, args);
    if (device === view.device && record) applyCommand({ device, ...record });
  } catch (error) {
    if (device === view.device && target !== null) view.errors.set(target, `${command} not sent: ${error.message}`);
    else if (device === view.device) document.getElementById("cmd-error").textContent = `${command} not sent: ${error.message}`;
  } finally {
    if (device === view.device) {
      if (target !== null && view.pending.get(target) === "sending") view.pending.delete(target);
      control.disabled = view.readOnly;
      paint();
    }
  }
}

function paint() {
  const box = document.getElementById("controls");
  if (!box) return;
  for (const row of box.querySelectorAll(".output")) {
    const name = row.dataset.output;
    const kind = row.dataset.kind;
    const known = view.states.get(name);
    const pending = view.pending.has(name);
    const control = row.querySelector(".out-control");
    const word = known ? stateWord(kind, known.value) : "unknown";
    row.dataset.state = known ? word : "unknown";
    row.dataset.pending = String(pending);
    control.disabled = view.readOnly || pending;
    if (control.type === "range") {
      if (known && typeof known.value === "number" && document.activeElement !== control) control.value = String(known.value);
    } else {
      control.setAttribute("aria-checked", String(Boolean(known && known.value === true)));
      control.dataset.known = String(Boolean(known));
    }
    let text = known ? word : "state unknown: send ping to read it";
    if (pending) text = `${known ? word : "unknown"} · waiting for the device…`;
    else if (known && known.blinking) text += " · blinking";
    row.querySelector(".out-state").textContent = text;
    row.querySelector(".out-error").textContent = view.errors.get(name) || "";
  }
  for (const button of box.querySelectorAll("button.action")) button.disabled = view.readOnly;
}
