// gnsqadmin front end: hand-written, no build step, no dependencies.
// One page; the path picks the view (/topics, /topics/T, /topics/T/C, /nodes, /nodes/N).
// Every refresh interval it polls the JSON API and patches only the sections that changed.
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
  const response = await fetch(path, init);
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

function button(action, label, attrs, danger) {
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

// gnsqd --crash-safe nodes report their topic log; the others do not
function hasLog(nodes) {
  return (nodes || []).some((n) => "log_position" in n || "log_bytes" in n);
}

function logSummary(nodes) {
  if (!hasLog(nodes)) return "";
  const parts = nodes.map((n) => ("log_position" in n
    ? `${esc(n.node)}: position ${num(n.log_position)}, finished below ${num(n.log_committed)}`
    : `${esc(n.node)}: ${num(n.log_bytes)} B, ${num(n.log_retained_bytes)} B retained for replay, seq ${num(n.log_first_seq)}–${num(n.log_end_seq)}`));
  return `<p class="muted log-summary">Topic log · ${parts.join(" · ")}</p>`;
}

// --- views ---------------------------------------------------------------------------------

function route() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "nodes") return parts[1] ? { view: "node", node: parts[1] } : { view: "nodes" };
  if (parts[0] === "topics" && parts[2]) {
    return { view: "channel", topic: parts[1], channel: parts[2] };
  }
  if (parts[0] === "topics" && parts[1]) return { view: "topic", topic: parts[1] };
  return { view: "topics" };
}

function layout(r) {
  const crumbs = {
    topics: "<h1>Topics</h1>",
    nodes: "<h1>Nodes</h1>",
    topic: `<h1><a href="/topics" data-nav>Topics</a> / <span id="title">${esc(r.topic)}</span></h1>`,
    channel: `<h1><a href="/topics" data-nav>Topics</a> /
      <a href="/topics/${seg(r.topic)}" data-nav>${esc(r.topic)}</a> /
      <span id="title">${esc(r.channel)}</span></h1>`,
    node: `<h1><a href="/nodes" data-nav>Nodes</a> / <span id="title">${esc(r.node)}</span></h1>`,
  }[r.view];
  const sections = {
    topics: ["summary", "topics", "charts", "create"],
    topic: ["summary", "actions", "nodes", "channels", "charts"],
    channel: ["summary", "actions", "nodes", "clients", "charts"],
    nodes: ["nodes"],
    node: ["summary", "topics"],
  }[r.view];
  main.innerHTML = crumbs + sections.map((s) => `<section id="s-${s}"></section>`).join("");
  document.querySelectorAll("nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.view === (r.view.startsWith("node") ? "nodes" : "topics"));
  });
}

function renderTopics(ov) {
  const total = ov.topics.reduce((n, t) => n + t.depth, 0);
  patch("s-summary", `<div class="cards">
    <div class="card"><b id="topic-count">${ov.topics.length}</b> topics</div>
    <div class="card"><b>${num(total)}</b> messages queued in topics</div>
    <div class="card"><b>${ov.nodes.length}</b> nodes</div></div>`);
  const rows = ov.topics.map((t) => `<tr data-topic="${esc(t.topic_name)}">
      <td><a href="/topics/${seg(t.topic_name)}" data-nav>${esc(t.topic_name)}</a> ${badge(t.paused)}</td>
      <td class="num depth">${num(t.depth)}</td>
      <td class="nodes">${t.nodes.map((n) => `<span class="chip" title="memory ${num(n.memory_depth)}, disk ${num(n.backend_depth)}">${esc(n.node)} <b>${num(n.depth)}</b></span>`).join(" ") || '<span class="muted">no nodes</span>'}</td>
      <td class="num">${num(t.message_count)}</td>
      <td class="num">${t.channels.length}</td>
      <td class="channels">${t.channels.map((c) => `<a href="/topics/${seg(t.topic_name)}/${seg(c.channel_name)}" data-nav class="chip">${esc(c.channel_name)} <b>${num(c.depth)}</b>${c.paused ? " ⏸" : ""}</a>`).join(" ")}</td>
    </tr>`).join("");
  patch("s-topics", ov.topics.length ? `<table id="topics-table"><thead><tr>
      <th>Topic</th><th class="num">Depth</th><th>Depth per node</th><th class="num">Messages</th>
      <th class="num">Channels</th><th>Channel depth</th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted" id="no-topics">No topics yet.</p>');
  patch("s-charts", ov.topics.length ? `<h2>Message rates ${LEGEND}</h2><div class="charts">`
    + ov.topics.map((t) => chartBox(
      `<a href="/topics/${seg(t.topic_name)}" data-nav>${esc(t.topic_name)}</a>`,
      ov.rates.topics[t.topic_name])).join("") + "</div>" : "");
  const create = document.getElementById("s-create");
  if (CONFIG.lookupd.length && !create.dataset.html) {
    create.dataset.html = "1";
    create.innerHTML = `<h2>Create</h2><form id="create-form" class="inline">
      <input name="topic" placeholder="topic" required pattern="[.a-zA-Z0-9_\\-]+(#ephemeral)?">
      <input name="channel" placeholder="channel (optional)" pattern="[.a-zA-Z0-9_\\-]+(#ephemeral)?">
      <button type="submit">Create in lookupd</button></form>`;
  }
}

function findTopic(ov, name) {
  return ov.topics.find((t) => t.topic_name === name);
}

function nodeRows(entries, withTombstone, topic) {
  return entries.map((n) => `<tr data-node="${esc(n.node)}">
    <td><a href="/nodes/${seg(n.node)}" data-nav>${esc(n.node)}</a> <span class="muted">${esc(n.hostname)}</span> ${badge(n.paused)}</td>
    <td class="num depth">${num(n.depth)}</td><td class="num">${num(n.memory_depth)}</td>
    <td class="num">${num(n.backend_depth)}</td>
    ${"in_flight_count" in n ? `<td class="num">${num(n.in_flight_count)}</td><td class="num">${num(n.deferred_count)}</td>
      <td class="num">${num(n.requeue_count)}</td><td class="num">${num(n.timeout_count)}</td>` : ""}
    <td class="num">${num(n.message_count)}</td>
    ${withTombstone ? `<td>${button("tombstone", "Tombstone", { topic, node: n.node }, true)}</td>` : ""}
  </tr>`).join("");
}

function renderTopic(r, t, ov) {
  patch("s-summary", `<div class="cards">
    <div class="card"><b id="topic-depth">${num(t.depth)}</b> depth</div>
    <div class="card"><b>${num(t.memory_depth)}</b> in memory</div>
    <div class="card"><b>${num(t.backend_depth)}</b> on disk</div>
    <div class="card"><b>${num(t.message_count)}</b> messages</div>
    <div class="card"><b>${t.nodes.length}</b> nodes</div>
    <div class="card">${t.paused ? '<b class="paused">paused</b>' : "<b>active</b>"}</div></div>`
    + logSummary(t.nodes));
  patch("s-actions", `<div class="actions">${topicButtons(t)}</div>`);
  const tomb = CONFIG.lookupd.length > 0;
  patch("s-nodes", `<h2>Nodes</h2><table id="topic-nodes"><thead><tr><th>Node</th>
    <th class="num">Depth</th><th class="num">Memory</th><th class="num">Disk</th>
    <th class="num">Messages</th>${tomb ? "<th></th>" : ""}</tr></thead>
    <tbody>${nodeRows(t.nodes, tomb, t.topic_name)}</tbody></table>`);
  const rows = t.channels.map((c) => `<tr data-channel="${esc(c.channel_name)}">
      <td><a href="/topics/${seg(t.topic_name)}/${seg(c.channel_name)}" data-nav>${esc(c.channel_name)}</a> ${badge(c.paused)}</td>
      <td class="num depth">${num(c.depth)}</td><td class="num inflight">${num(c.in_flight_count)}</td>
      <td class="num">${num(c.deferred_count)}</td><td class="num">${num(c.requeue_count)}</td>
      <td class="num">${num(c.timeout_count)}</td><td class="num">${num(c.message_count)}</td>
      <td class="num">${num(c.client_count)}</td>
      <td class="actions">${channelButtons(t.topic_name, c)}</td></tr>`).join("");
  patch("s-channels", `<h2>Channels</h2>${t.channels.length ? `<table id="channels-table"><thead><tr>
    <th>Channel</th><th class="num">Depth</th><th class="num">In-flight</th><th class="num">Deferred</th>
    <th class="num">Requeued</th><th class="num">Timed out</th><th class="num">Messages</th>
    <th class="num">Clients</th><th></th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted">No channels.</p>'}`);
  const chans = ov.rates.channels[t.topic_name] || {};
  patch("s-charts", `<h2>Message rates ${LEGEND}</h2><div class="charts">`
    + chartBox(`<b>${esc(t.topic_name)}</b>`, ov.rates.topics[t.topic_name])
    + t.channels.map((c) => chartBox(esc(c.channel_name), chans[c.channel_name])).join("")
    + "</div>");
}

function renderChannel(r, c, ov) {
  patch("s-summary", `<div class="cards">
    <div class="card"><b id="channel-depth">${num(c.depth)}</b> depth</div>
    <div class="card"><b>${num(c.in_flight_count)}</b> in flight</div>
    <div class="card"><b>${num(c.deferred_count)}</b> deferred</div>
    <div class="card"><b>${num(c.requeue_count)}</b> requeued</div>
    <div class="card"><b>${num(c.timeout_count)}</b> timed out</div>
    <div class="card"><b>${num(c.message_count)}</b> messages</div>
    <div class="card">${c.paused ? '<b class="paused">paused</b>' : "<b>active</b>"}</div></div>`
    + logSummary(c.nodes));
  patch("s-actions", `<div class="actions">${channelButtons(r.topic, c)}</div>`);
  patch("s-nodes", `<h2>Nodes</h2><table><thead><tr><th>Node</th><th class="num">Depth</th>
    <th class="num">Memory</th><th class="num">Disk</th><th class="num">In-flight</th>
    <th class="num">Deferred</th><th class="num">Requeued</th><th class="num">Timed out</th>
    <th class="num">Messages</th></tr></thead><tbody>${nodeRows(c.nodes, false)}</tbody></table>`);
  const rows = c.clients.map((k) => `<tr><td>${esc(k.hostname)}<br><span class="muted">${esc(k.remote_address)}</span></td>
    <td>${esc(k.user_agent || k.version)}</td><td>${esc(k.node)}</td>
    <td class="num">${num(k.ready_count)}</td><td class="num">${num(k.in_flight_count)}</td>
    <td class="num">${num(k.finish_count)}</td><td class="num">${num(k.requeue_count)}</td>
    <td class="num">${num(k.message_count)}</td><td>${duration(k.connected)}</td>
    <td>${[k.tls && "TLS", k.deflate && "deflate", k.snappy && "snappy"].filter(Boolean).join(", ")}</td></tr>`).join("");
  patch("s-clients", `<h2>Clients</h2>${c.clients.length ? `<table id="clients-table"><thead><tr>
    <th>Client</th><th>User agent</th><th>Node</th><th class="num">Ready</th><th class="num">In-flight</th>
    <th class="num">Finished</th><th class="num">Requeued</th><th class="num">Messages</th>
    <th>Connected</th><th>Features</th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted">No clients connected.</p>'}`);
  const points = (ov.rates.channels[r.topic] || {})[r.channel];
  patch("s-charts", `<h2>Message rate ${LEGEND}</h2><div class="charts">${chartBox(esc(r.channel), points)}</div>`);
}

function renderNodes(ov) {
  const rows = ov.nodes.map((n) => `<tr data-node="${esc(n.node)}">
    <td><a href="/nodes/${seg(n.node)}" data-nav>${esc(n.hostname)}</a></td>
    <td>${esc(n.broadcast_address)}</td><td class="num">${n.tcp_port}</td><td class="num">${n.http_port}</td>
    <td>${esc(n.version)}${n.out_of_date ? ' <span class="badge paused">out of date</span>' : ""}</td>
    <td>${n.remote_addresses.map(esc).join("<br>") || '<span class="muted">configured</span>'}</td>
    <td>${n.topics.map((t) => `<a class="chip${t.tombstoned ? " tomb" : ""}" href="/topics/${seg(t.topic)}" data-nav
      title="${t.tombstoned ? "tombstoned" : ""}">${esc(t.topic)}</a>`).join(" ")}</td></tr>`).join("");
  patch("s-nodes", ov.nodes.length ? `<table id="nodes-table"><thead><tr><th>Hostname</th>
    <th>Broadcast address</th><th class="num">TCP</th><th class="num">HTTP</th><th>Version</th>
    <th>Lookupd connections</th><th>Topics</th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted">No nodes.</p>');
}

function renderNode(r, node) {
  patch("s-summary", `<div class="cards"><div class="card"><b>${node.topics.length}</b> topics</div>
    <div class="card"><b>${num(node.total_messages)}</b> messages</div>
    <div class="card"><b>${num(node.total_clients)}</b> clients</div></div>`);
  const rows = node.topics.map((t) => `<tr><td><a href="/topics/${seg(t.topic_name)}" data-nav>${esc(t.topic_name)}</a> ${badge(t.paused)}</td>
    <td class="num">${num(t.depth)}</td><td class="num">${num(t.message_count)}</td>
    <td>${t.channels.map((c) => `<span class="chip">${esc(c.channel_name)} <b>${num(c.depth)}</b> · ${num(c.in_flight_count)} in flight · ${c.clients.length} clients${c.paused ? " ⏸" : ""}</span>`).join(" ")}</td></tr>`).join("");
  patch("s-topics", `<table><thead><tr><th>Topic</th><th class="num">Depth</th><th class="num">Messages</th>
    <th>Channels</th></tr></thead><tbody>${rows}</tbody></table>`);
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

async function refresh() {
  const mine = generation;
  const r = route();
  try {
    const ov = await api("GET", "/api/overview");
    let detail = null;
    if (r.view === "topic") detail = await api("GET", `/api/topics/${seg(r.topic)}`);
    if (r.view === "channel") detail = await api("GET", `/api/topics/${seg(r.topic)}/${seg(r.channel)}`);
    if (r.view === "node") detail = await api("GET", `/api/nodes/${seg(r.node)}`);
    if (mine !== generation) return;
    if (r.view === "topics") renderTopics(ov);
    if (r.view === "nodes") renderNodes(ov);
    if (r.view === "topic") renderTopic(r, detail, ov);
    if (r.view === "channel") renderChannel(r, detail, ov);
    if (r.view === "node") renderNode(r, detail);
    showMessage([ov.message, detail && detail.message].filter(Boolean).join(" "));
    const status = document.getElementById("status");
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.dataset.refreshed = String(Number(status.dataset.refreshed || 0) + 1);
    status.classList.remove("bad");
  } catch (err) {
    if (mine !== generation) return;
    const status = document.getElementById("status");
    status.textContent = "error: " + err.message;
    status.classList.add("bad");
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
    ? `Tombstone topic ${topic} on node ${node}? Lookupds stop listing it for consumers.`
    : action === "replay"
      ? `Replay ${target} from ${since}? Every message published since then is delivered again to this channel (other channels are untouched).`
      : `${action[0].toUpperCase() + action.slice(1)} ${target} on every node?`;
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
      if (r.view === "channel" || (r.view === "topic" && !channel)) {
        navigate(channel ? `/topics/${seg(topic)}` : "/topics", true);
        return;
      }
    }
  } catch (err) {
    flash(`${action} failed: ${err.message}`, true);
  }
  await refresh();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-nav]");
  if (link && !event.ctrlKey && !event.metaKey && !event.shiftKey) {
    event.preventDefault();
    navigate(link.getAttribute("href"), true);
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
    flash(result.message || `created ${form.get("topic")}`, Boolean(result.message));
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
