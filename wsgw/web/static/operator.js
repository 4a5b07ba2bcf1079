// wsgw operator page (operator.html): polls GET /info with the operator token and draws what it answers; the forms
// call POST /publish/<topic>, /disconnect and /revoke with the same token. No library, no build step.
"use strict";

const POLL_MS = 2000;
const KEY = "wsgw-operator-token";
const SVG = "http://www.w3.org/2000/svg";
let token = sessionStorage.getItem(KEY) || "";
let timer = null;
let asking = null;  // when the /info request in flight was sent (one at a time: a stalled Redis answers late)

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function setStatus(text, cls) {
  const status = $("status");
  status.textContent = text;
  status.className = "status" + (cls ? " " + cls : "");
}

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function rate(n) {
  return n >= 100 ? String(Math.round(n)) : String(Math.round(n * 10) / 10);
}

// Per-second values of a history series (counts per heartbeat step).
function perSecond(history, name) {
  if (!history || !Array.isArray(history[name]) || !(history.step > 0)) return [];
  return history[name].map((n) => n / history.step);
}

// The instances' series summed point by point from the newest one (their heartbeats are not aligned: a sketch).
function total(instances, name) {
  const series = instances.map((inst) => perSecond(inst.history, name));
  const length = Math.max(0, ...series.map((values) => values.length));
  const sum = new Array(length).fill(0);
  for (const values of series) values.forEach((v, i) => { sum[length - values.length + i] += v; });
  return sum;
}

// Draw ``values`` into ``svg`` (viewBox 0 0 300 60 for charts, 0 0 120 24 for sparklines): an area and a line.
function draw(svg, values) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const box = svg.viewBox.baseVal;
  const w = box.width, h = box.height;
  const max = Math.max(1, ...values);
  svg.dataset.points = String(values.length);
  svg.dataset.max = String(values.length ? Math.max(...values) : 0);
  if (values.length === 0) return;
  const dx = values.length > 1 ? w / (values.length - 1) : 0;
  const pts = values.map((v, i) => `${(i * dx).toFixed(1)},${(h - 1 - (v / max) * (h - 4)).toFixed(1)}`);
  if (values.length === 1) pts.push(`${w},${pts[0].split(",")[1]}`);
  const area = document.createElementNS(SVG, "polygon");
  area.setAttribute("points", `0,${h} ${pts.join(" ")} ${w},${h}`);
  area.setAttribute("class", "area");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", pts.join(" "));
  line.setAttribute("class", "line");
  const title = document.createElementNS(SVG, "title");
  title.textContent = `peak ${rate(Math.max(...values))}/s, now ${rate(values[values.length - 1])}/s`;
  svg.append(area, line, title);
}

function spark(values) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  draw(svg, values);
  return svg;
}

function summary(values) {
  if (!values.length) return "(no data yet)";
  return `now ${rate(values[values.length - 1])}, peak ${rate(Math.max(...values))}, ` +
    `over the last ${values.length} points`;
}

function none() {
  const tr = el("tr");
  tr.append(el("td", "none yet", "hint"), el("td"));
  return tr;
}

function endpoint(inst, name) {
  const open = (inst.connections || {})[name] || 0, sub = (inst.subscribed || {})[name] || 0;
  return `${open} (${sub})`;
}

function render(info) {
  const instances = Array.isArray(info.instances) ? info.instances : [];
  $("registry").textContent = `${instances.length} live, registry: ${info.registry}` +
    (info.skipped ? `, ${info.skipped} records not valid` : "") + (info.error ? ` (${info.error})` : "");
  const rows = [], rooms = [], closes = {};
  for (const inst of instances) {
    const tr = el("tr", null, inst.id === info.self ? "self" : "");
    const bus = inst.bus || {};
    const events = perSecond(inst.history, "events"), deliveries = perSecond(inst.history, "deliveries");
    const cells = [inst.id + (inst.id === info.self ? " (answering)" : ""), inst.version || "?",
      duration(info.at - inst.started), (inst.listen || []).join(" "), endpoint(inst, "ws"),
      endpoint(inst, "chat"), inst.rooms || 0];
    for (const text of cells) tr.append(el("td", text));
    tr.append(el("td", bus.state || "?", bus.connected ? "ok" : "bad"));
    for (const values of [events, deliveries]) {
      const td = el("td", null, "num");
      td.append(spark(values), " " + (values.length ? rate(values[values.length - 1]) : "-"));
      tr.append(td);
    }
    tr.append(el("td", duration(info.at - inst.at) + " ago"));
    tr.dataset.instance = inst.id;
    rows.push(tr);
    const room = el("tr");
    room.append(el("td", inst.id), el("td", inst.rooms || 0, "num"), el("td", bus.state || "?"));
    rooms.push(room);
    for (const [code, n] of Object.entries(inst.closes || {})) closes[code] = (closes[code] || 0) + n;
  }
  $("instances").replaceChildren(...rows);
  $("rooms").replaceChildren(...rooms);
  const codes = Object.keys(closes).sort();
  $("closes").replaceChildren(...(codes.length ? codes.map((code) => {
    const tr = el("tr");
    tr.append(el("td", code), el("td", closes[code], "num"));
    return tr;
  }) : [none()]));
  const events = total(instances, "events"), deliveries = total(instances, "deliveries");
  draw($("chart-events"), events);
  draw($("chart-deliveries"), deliveries);
  $("events-summary").textContent = summary(events);
  $("deliveries-summary").textContent = summary(deliveries);
}

async function poll() {
  if (!token) return;
  if (asking !== null) {
    setStatus(`waiting for /info since ${asking.toLocaleTimeString()} (the data below is older)`, "bad");
    return;
  }
  const sent = token;
  asking = new Date();
  try {
    const response = await fetch("/info", {headers: {Authorization: "Bearer " + sent}, cache: "no-store"});
    const body = await response.json();
    if (sent !== token) return;  // forgotten or replaced meanwhile
    if (!response.ok) {
      setStatus(`${response.status}: ${body.error || "refused"}`, "bad");
      if (response.status === 401 || response.status === 403) stop();
      return;
    }
    render(body);
    setStatus(`connected, ${new Date().toLocaleTimeString()}`, "ok");
  } catch (e) {
    if (sent === token) setStatus(`/info unavailable: ${e.message}`, "bad");
  } finally {
    asking = null;
  }
}

function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

function start() {
  stop();
  poll();
  timer = setInterval(poll, POLL_MS);
}

// POST ``body`` (an object, or JSON text) to ``path`` with the token; show the status and answer in ``#<out>``.
async function send(path, body, out) {
  const answer = $(out);
  if (!token) {
    answer.textContent = "enter the operator token first";
    return;
  }
  answer.textContent = "sending...";
  try {
    const response = await fetch(path, {method: "POST", cache: "no-store", body: typeof body === "string" ?
      body : JSON.stringify(body), headers: {Authorization: "Bearer " + token, "Content-Type": "application/json"}});
    answer.textContent = `${response.status} ${await response.text()}`;
    answer.className = "answer " + (response.ok ? "ok" : "bad");
  } catch (e) {
    answer.textContent = `failed: ${e.message}`;
    answer.className = "answer bad";
  }
}

function who(field, value) {
  const body = {};
  body[$(field).value] = $(value).value.trim();
  return body;
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token;
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(KEY, token);
    setStatus("connecting...");
    start();
  });
  $("forget").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(KEY);
    $("token").value = "";
    stop();
    setStatus("not connected");
  });
  $("publish-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const topic = encodeURIComponent($("publish-topic").value.trim());
    send(`/publish/${topic}`, $("publish-body").value, "publish-answer");
  });
  $("disconnect-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = who("disconnect-field", "disconnect-value");
    if ($("disconnect-reason").value.trim()) body.reason = $("disconnect-reason").value.trim();
    send("/disconnect", body, "disconnect-answer");
  });
  $("revoke-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = who("revoke-field", "revoke-value");
    const before = $("revoke-before").value.trim();
    if (before) body.before = Number(before);
    send("/revoke", body, "revoke-answer");
  });
  if (token) start();
});
