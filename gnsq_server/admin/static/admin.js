// gnsqadmin front end: hand-written, no build step, no dependencies.
// One page; the path picks the view (/topics, /topics/T, /topics/T/C, /nodes, /nodes/N, /lookup,
// /counter; views.js renders them). Every refresh interval it polls the JSON API and patches only
// the sections that changed. Paths are under CONFIG.base (--base-path).
"use strict";

const CONFIG = JSON.parse(document.getElementById("config").textContent);
const main = document.getElementById("main");
let timer = null;
let generation = 0;
const LEGEND = '<span class="legend"><i class="rate"></i>messages/s <i class="depth"></i>depth</span>';

// --- helpers -------------------------------------------------------------------------------

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function num(n) {
  return Number(n || 0).toLocaleString("en-US");
}

function rate(r) {
  if (r === undefined || r === null) return "–";
  return (r >= 100 ? Math.round(r).toLocaleString("en-US") : r.toFixed(1)) + "/s";
}

function seg(name) {
  return encodeURIComponent(name);
}

function link(path) {
  return CONFIG.base + path;
}

// Nanoseconds as µs, ms or s.
function latency(ns) {
  if (ns === undefined || ns === null) return "–";
  if (ns < 1e6) return (ns / 1e3).toFixed(0) + "µs";
  if (ns < 1e9) return (ns / 1e6).toFixed(1) + "ms";
  return (ns / 1e9).toFixed(2) + "s";
}

function duration(ns) {
  let s = Math.floor((ns || 0) / 1e9);
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return (h ? h + "h" : "") + (h || m ? m + "m" : "") + s + "s";
}

async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(link(path), init);
  let data = {};
  try { data = await response.json(); } catch (e) { data = {}; }
  if (!response.ok) throw new Error(data.message || response.status + " " + response.statusText);
  return data;
}

function patch(id, html) {
  const el = document.getElementById(id);
  if (el && el.dataset.html !== html) {
    el.innerHTML = html;
    el.dataset.html = html;
  }
}

// A sparkline: message rate (solid) and depth (dashed), each scaled to its own maximum.
function chart(points, label) {
  const w = 180, h = 40, pad = 2;
  if (!points || points.length < 2) {
    return `<svg class="chart empty" width="${w}" height="${h}" role="img"
      aria-label="${esc(label)}: collecting samples"><text x="4" y="24">collecting…</text></svg>`;
  }
  const line = (index) => {
    const values = points.map((p) => p[index]);
    const max = Math.max(...values, 1e-9);
    return points.map((p, i) => {
      const x = pad + (i * (w - 2 * pad)) / (points.length - 1);
      const y = h - pad - ((p[index] / max) * (h - 2 * pad));
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" ");
  };
  const last = points[points.length - 1];
  const peak = Math.max(...points.map((p) => p[1]));
  return `<svg class="chart" width="${w}" height="${h}" role="img"
    aria-label="${esc(label)}: ${esc(rate(last[1]))}">
    <title>${esc(label)}: now ${esc(rate(last[1]))}, peak ${esc(rate(peak))}, depth ${num(last[2])}</title>
    <polyline class="depth" points="${line(2)}"/>
    <polyline class="rate" points="${line(1)}"/></svg>`;
}

function chartBox(title, points) {
  const now = points && points.length ? points[points.length - 1][1] : null;
  return `<div class="chartbox"><span>${title} <span class="rate">${rate(now)}</span></span>`
    + `${chart(points, title.replace(/<[^>]*>/g, ""))}</div>`;
}

function badge(paused) {
  return paused ? '<span class="badge paused">paused</span>' : "";
}

// Actions are drawn for admins only (--admin-user); the API refuses others anyway (403).
function button(action, label, attrs, danger) {
  if (!CONFIG.is_admin) return "";
  const data = Object.entries(attrs).map(([k, v]) => `data-${k}="${esc(v)}"`).join(" ");
  return `<button class="${danger ? "danger" : ""}" data-action="${action}" ${data}>${label}</button>`;
}

function topicButtons(topic) {
  const attrs = { topic: topic.topic_name };
  return (topic.paused ? button("unpause", "Unpause", attrs) : button("pause", "Pause", attrs))
    + button("empty", "Empty", attrs, true) + button("delete", "Delete", attrs, true);
}

function channelButtons(topic, channel) {
  const attrs = { topic, channel: channel.channel_name };
  return (channel.paused ? button("unpause", "Unpause", attrs) : button("pause", "Pause", attrs))
    + button("empty", "Empty", attrs, true) + button("delete", "Delete", attrs, true)
    + (hasLog(channel.nodes) ? button("replay", "Replay…", attrs, true) : "");
}

// --- refresh loop --------------------------------------------------------------------------

function showMessage(text) {
  const el = document.getElementById("message");
  el.hidden = !text;
  el.textContent = text || "";
}

function flash(text, bad) {
  const el = document.getElementById("flash");
  el.textContent = text;
  el.className = "flash" + (bad ? " bad" : "");
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

const DETAIL = {
  topic: (r) => `/api/topics/${seg(r.topic)}`,
  channel: (r) => `/api/topics/${seg(r.topic)}/${seg(r.channel)}`,
  node: (r) => `/api/nodes/${seg(r.node)}`,
  lookup: () => "/api/topics?inactive=true",
  counter: () => "/api/counter",
};

async function refresh() {
  const mine = generation;
  const r = route();
  try {
    const ov = r.view === "counter" || r.view === "lookup" ? null : await api("GET", "/api/overview");
    const detail = DETAIL[r.view] ? await api("GET", DETAIL[r.view](r)) : null;
    if (mine !== generation) return;
    if (r.view === "topics") renderTopics(ov);
    if (r.view === "nodes") renderNodes(ov);
    if (r.view === "topic") renderTopic(r, detail, ov);
    if (r.view === "channel") renderChannel(r, detail, ov);
    if (r.view === "node") renderNode(r, detail);
    if (r.view === "lookup") renderLookup(detail);
    if (r.view === "counter") renderCounter(detail);
    showMessage([ov && ov.message, detail && detail.message].filter(Boolean).join(" "));
    const status = document.getElementById("status");
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.dataset.refreshed = String(Number(status.dataset.refreshed || 0) + 1);
    status.classList.remove("bad");
  } catch (err) {
    if (mine !== generation) return;
    const status = document.getElementById("status");
    status.textContent = "error";
    status.classList.add("bad");
    showMessage(err.message);
  }
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => { await refresh(); schedule(); }, CONFIG.refresh_ms);
}

function navigate(path, push) {
  if (push) history.pushState(null, "", path);
  generation += 1;
  layout(route());
  refresh().then(schedule);
}

// --- actions -------------------------------------------------------------------------------

function confirmDialog(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

async function act(btn) {
  const { action, topic, channel, node } = btn.dataset;
  const target = channel ? `channel ${topic}/${channel}` : `topic ${topic}`;
  let since = null;
  if (action === "replay") {
    const hourAgo = new Date(Date.now() - 3600e3).toISOString();
    since = window.prompt("Replay from (RFC 3339 time, Unix ns, or \"oldest\"):", hourAgo);
    if (!since) return;
  }
  const question = action === "tombstone"
    ? `Tombstone topic ${topic} on node ${node}? Lookupds stop listing it for consumers and the `
      + "topic is deleted on that node."
    : action === "replay"
      ? `Replay ${target} from ${since}? Every message published since then is delivered again `
        + "to this channel (other channels are untouched)."
      : `${action[0].toUpperCase() + action.slice(1)} ${target} on every node`
        + (action === "delete" ? " and lookupd?" : "?");
  if (!(await confirmDialog(question))) return;
  const path = channel ? `/api/topics/${seg(topic)}/${seg(channel)}` : `/api/topics/${seg(topic)}`;
  try {
    let result;
    if (action === "tombstone") result = await api("DELETE", `/api/nodes/${seg(node)}`, { topic });
    else if (action === "delete") result = await api("DELETE", path);
    else if (action === "replay") result = await api("POST", path, { action, since });
    else result = await api("POST", path, { action });
    flash(result.message || `${action}: done (${target})`, Boolean(result.message));
    if (action === "delete") {
      const r = route();
      if (r.view === "lookup") { await refresh(); return; }
      if (r.view === "channel" || (r.view === "topic" && !channel)) {
        navigate(link(channel ? `/topics/${seg(topic)}` : "/topics"), true);
        return;
      }
    }
  } catch (err) {
    flash(`${action} failed: ${err.message}`, true);
  }
  await refresh();
}

document.addEventListener("click", (event) => {
  const anchor = event.target.closest("a[data-nav]");
  if (anchor && !event.ctrlKey && !event.metaKey && !event.shiftKey) {
    event.preventDefault();
    navigate(anchor.getAttribute("href"), true);
    return;
  }
  const btn = event.target.closest("button[data-action]");
  if (btn) act(btn);
});

document.addEventListener("submit", async (event) => {
  if (event.target.id !== "create-form") return;
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const result = await api("POST", "/api/topics", {
      topic: form.get("topic"), channel: form.get("channel") || "",
    });
    const what = form.get("channel") ? `${form.get("topic")}/${form.get("channel")}` : form.get("topic");
    flash(result.message || `created ${what}`, Boolean(result.message));
    event.target.reset();
  } catch (err) {
    flash(`create failed: ${err.message}`, true);
  }
  refresh();
});

window.addEventListener("popstate", () => navigate(location.pathname, false));
document.getElementById("upstreams").textContent = CONFIG.lookupd.length
  ? "lookupd: " + CONFIG.lookupd.join(", ")
  : "nsqd: " + CONFIG.nsqd.join(", ");
navigate(location.pathname, false);
