// gnsqadmin views: one layout and one render function per page. Loaded before admin.js, which
// holds the helpers, the refresh loop and the actions these call at render time.
"use strict";

function route() {
  let path = location.pathname;
  if (CONFIG.base && path.startsWith(CONFIG.base)) path = path.slice(CONFIG.base.length);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "nodes") return parts[1] ? { view: "node", node: parts[1] } : { view: "nodes" };
  if (parts[0] === "topics" && parts[2]) {
    return { view: "channel", topic: parts[1], channel: parts[2] };
  }
  if (parts[0] === "topics" && parts[1]) return { view: "topic", topic: parts[1] };
  if (parts[0] === "lookup") return { view: "lookup" };
  if (parts[0] === "counter") return { view: "counter" };
  return { view: "topics" };
}

const SECTIONS = {
  topics: ["summary", "topics", "charts"],
  topic: ["summary", "actions", "nodes", "channels", "e2e", "charts"],
  channel: ["summary", "actions", "nodes", "e2e", "clients", "charts"],
  nodes: ["nodes"],
  node: ["summary", "topics"],
  lookup: ["lookupds", "inactive", "create"],
  counter: ["counter"],
};

function layout(r) {
  const crumbs = {
    topics: "<h1>Topics</h1>",
    nodes: "<h1>Nodes</h1>",
    lookup: "<h1>Lookup</h1>",
    counter: "<h1>Messages</h1>",
    topic: `<h1><a href="${link("/topics")}" data-nav>Topics</a> / <span id="title">${esc(r.topic)}</span></h1>`,
    channel: `<h1><a href="${link("/topics")}" data-nav>Topics</a> /
      <a href="${link(`/topics/${seg(r.topic)}`)}" data-nav>${esc(r.topic)}</a> /
      <span id="title">${esc(r.channel)}</span></h1>`,
    node: `<h1><a href="${link("/nodes")}" data-nav>Nodes</a> / <span id="title">${esc(r.node)}</span></h1>`,
  }[r.view];
  main.innerHTML = crumbs + SECTIONS[r.view].map((s) => `<section id="s-${s}"></section>`).join("");
  const active = r.view.startsWith("node") ? "nodes" : (["lookup", "counter"].includes(r.view) ? r.view : "topics");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === active));
}

// --- shared pieces -------------------------------------------------------------------------

function topicLink(topic) {
  return `<a href="${link(`/topics/${seg(topic)}`)}" data-nav>${esc(topic)}</a>`;
}

function channelLink(topic, channel) {
  return `<a href="${link(`/topics/${seg(topic)}/${seg(channel)}`)}" data-nav>${esc(channel)}</a>`;
}

function nodeLink(node) {
  return `<a href="${link(`/nodes/${seg(node)}`)}" data-nav>${esc(node)}</a>`;
}

const COUNT_HEADS = '<th class="num">Depth</th><th class="num">Memory</th><th class="num">Disk</th>';
const CHANNEL_HEADS = COUNT_HEADS + '<th class="num">In-flight</th><th class="num">Deferred</th>'
  + '<th class="num">Requeued</th><th class="num">Timed out</th><th class="num">Messages</th>';

function depthCells(n) {
  return `<td class="num depth">${num(n.depth)}</td><td class="num memory">${num(n.memory_depth)}</td>
    <td class="num disk">${num(n.backend_depth)}</td>`;
}

function channelCells(c) {
  return depthCells(c) + `<td class="num inflight">${num(c.in_flight_count)}</td>
    <td class="num deferred">${num(c.deferred_count)}</td><td class="num requeued">${num(c.requeue_count)}</td>
    <td class="num timedout">${num(c.timeout_count)}</td><td class="num messages">${num(c.message_count)}</td>`;
}

function cards(items) {
  return `<div class="cards">${items.map(([value, label, id]) =>
    `<div class="card"><b${id ? ` id="${id}"` : ""}>${value}</b> ${label}</div>`).join("")}</div>`;
}

function stateCard(paused) {
  return [paused ? '<span class="paused">paused</span>' : "active", "state"];
}

// E2E processing latency: one row per node and a total, one column per quantile.
function e2eTable(summed, perNode) {
  const quantiles = (summed.e2e_processing_latency.percentiles || []).map((p) => p.quantile);
  if (!quantiles.length) return "";
  const cell = (e2e, q, key) => {
    const p = e2e.count ? (e2e.percentiles || []).find((x) => x.quantile === q) : null;
    return `<td class="num">${p ? latency(p[key] ?? p.average) : "–"}</td>`;
  };
  const rows = perNode.map((n) => `<tr><td>${nodeLink(n.node)}</td>
    ${quantiles.map((q) => cell(n.e2e_processing_latency, q, "value")).join("")}
    <td class="num">${num(n.e2e_processing_latency.count)}</td></tr>`).join("");
  return `<h2>E2E processing latency</h2><table id="e2e-table"><thead><tr><th>Node</th>
    ${quantiles.map((q) => `<th class="num">p${+(q * 100).toFixed(2)}</th>`).join("")}
    <th class="num">Samples</th></tr></thead><tbody>${rows}
    <tr class="total"><td>Total</td>${quantiles.map((q) => cell(summed.e2e_processing_latency, q, "average")).join("")}
    <td class="num">${num(summed.e2e_processing_latency.count)}</td></tr></tbody></table>`;
}

// --- topics --------------------------------------------------------------------------------

function renderTopics(ov) {
  const total = ov.topics.reduce((n, t) => n + t.depth, 0);
  patch("s-summary", cards([[`<span id="topic-count">${ov.topics.length}</span>`, "topics"],
    [num(total), "messages queued in topics"], [ov.nodes.length, "nodes"]]));
  const rows = ov.topics.map((t) => `<tr data-topic="${esc(t.topic_name)}">
      <td>${topicLink(t.topic_name)} ${badge(t.paused)}</td>
      <td class="num depth">${num(t.depth)}</td>
      <td class="nodes">${t.nodes.map((n) => `<span class="chip" title="memory ${num(n.memory_depth)}, disk ${num(n.backend_depth)}">${esc(n.node)} <b>${num(n.depth)}</b></span>`).join(" ") || '<span class="muted">no nodes</span>'}</td>
      <td class="num">${num(t.message_count)}</td>
      <td class="num">${t.channels.length}</td>
      <td class="channels">${t.channels.map((c) => `<a href="${link(`/topics/${seg(t.topic_name)}/${seg(c.channel_name)}`)}" data-nav class="chip">${esc(c.channel_name)} <b>${num(c.depth)}</b>${c.paused ? ' <span class="badge paused">paused</span>' : ""}</a>`).join(" ")}</td>
    </tr>`).join("");
  patch("s-topics", ov.topics.length ? `<table id="topics-table"><thead><tr>
      <th>Topic</th><th class="num">Depth</th><th>Depth per node</th><th class="num">Messages</th>
      <th class="num">Channels</th><th>Channel depth</th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted" id="no-topics">No topics yet.</p>');
  patch("s-charts", ov.topics.length ? `<h2>Message rates ${LEGEND}</h2><div class="charts">`
    + ov.topics.map((t) => chartBox(topicLink(t.topic_name), ov.rates.topics[t.topic_name])).join("")
    + "</div>" : "");
}

// --- one topic -----------------------------------------------------------------------------

function renderTopic(r, t, ov) {
  patch("s-summary", cards([[num(t.depth), "depth", "topic-depth"], [num(t.memory_depth), "in memory"],
    [num(t.backend_depth), "on disk"], [num(t.message_count), "messages"], [t.nodes.length, "nodes"],
    stateCard(t.paused)]) + logSummary(t.nodes));
  patch("s-actions", `<div class="actions">${topicButtons(t)}</div>`);
  const tomb = CONFIG.lookupd.length > 0 && CONFIG.is_admin;
  const rows = t.nodes.map((n) => `<tr data-node="${esc(n.node)}">
    <td>${nodeLink(n.node)} <span class="muted">${esc(n.hostname)}</span> ${badge(n.paused)}</td>
    ${depthCells(n)}<td class="num messages">${num(n.message_count)}</td>
    ${tomb ? `<td>${button("tombstone", "Tombstone", { topic: t.topic_name, node: n.node }, true)}</td>` : ""}</tr>`).join("");
  patch("s-nodes", `<h2>Nodes</h2><table id="topic-nodes"><thead><tr><th>Node</th>${COUNT_HEADS}
    <th class="num">Messages</th>${tomb ? "<th></th>" : ""}</tr></thead><tbody>${rows}
    <tr class="total"><td>Total</td>${depthCells(t)}<td class="num messages">${num(t.message_count)}</td>${tomb ? "<td></td>" : ""}</tr>
    </tbody></table>`);
  const channelRows = t.channels.map((c) => `<tr data-channel="${esc(c.channel_name)}">
      <td>${channelLink(t.topic_name, c.channel_name)} ${badge(c.paused)}</td>${channelCells(c)}
      <td class="num">${num(c.client_count)}</td>
      <td class="actions">${channelButtons(t.topic_name, c)}</td></tr>`).join("");
  patch("s-channels", `<h2>Channels</h2>${t.channels.length ? `<table id="channels-table"><thead><tr>
    <th>Channel</th>${CHANNEL_HEADS}<th class="num">Clients</th><th></th></tr></thead>
    <tbody>${channelRows}</tbody></table>` : '<p class="muted">No channels.</p>'}`);
  patch("s-e2e", e2eTable(t, t.nodes));
  const chans = ov.rates.channels[t.topic_name] || {};
  patch("s-charts", `<h2>Message rates ${LEGEND}</h2><div class="charts">`
    + chartBox(`<b>${esc(t.topic_name)}</b>`, ov.rates.topics[t.topic_name])
    + t.channels.map((c) => chartBox(esc(c.channel_name), chans[c.channel_name])).join("")
    + "</div>");
}

// --- one channel ---------------------------------------------------------------------------

function clientFeatures(k) {
  const tls = k.tls ? `${esc(k.tls_version || "TLS")} ${esc(k.tls_cipher_suite)}${k.tls_negotiated_protocol_is_mutual ? " (mutual)" : ""}` : "";
  return [tls, k.deflate && "deflate", k.snappy && "snappy",
    k.sample_rate > 0 && `sample rate ${k.sample_rate}%`].filter(Boolean).join(", ");
}

function clientAuth(k) {
  if (!k.authed) return '<span class="muted">no</span>';
  const who = /^https?:\/\//.test(k.auth_identity_url || "")
    ? `<a href="${esc(k.auth_identity_url)}" rel="noopener noreferrer">${esc(k.auth_identity)}</a>`
    : esc(k.auth_identity);
  return `yes${who ? ` (${who})` : ""}`;
}

function clientRows(clients, withNode) {
  return clients.map((k) => `<tr class="client" data-client="${esc(k.client_id)}">
    <td>${esc(k.hostname)}<br><span class="muted">${esc(k.remote_address)}</span></td>
    <td class="client-id">${esc(k.client_id)}</td><td>${esc(k.user_agent || k.version)}</td>
    ${withNode ? `<td>${esc(k.node)}</td>` : ""}
    <td class="num">${num(k.ready_count)}</td><td class="num">${num(k.in_flight_count)}</td>
    <td class="num">${num(k.finish_count)}</td><td class="num">${num(k.requeue_count)}</td>
    <td class="num">${num(k.message_count)}</td><td>${duration(k.connected)}</td>
    <td class="auth">${clientAuth(k)}</td><td class="features">${clientFeatures(k)}</td></tr>`).join("");
}

function clientHeads(withNode) {
  return `<th>Client</th><th>Client ID</th><th>User agent</th>${withNode ? "<th>Node</th>" : ""}
    <th class="num">Ready</th><th class="num">In-flight</th><th class="num">Finished</th>
    <th class="num">Requeued</th><th class="num">Messages</th><th>Connected</th><th>Authed</th>
    <th>TLS / features</th>`;
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

// A gnsqd delivery policy on one node: its limits and what it took out of the channel.
function policyLine(p) {
  const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
  const limits = [p.max_attempts && `max attempts ${num(p.max_attempts)}`,
    p.msg_ttl && `TTL ${duration(p.msg_ttl * 1e6)}`,
    p.max_depth && `max depth ${num(p.max_depth)} (${esc(p.overflow)})`].filter(Boolean);
  return `<p class="policy">Policy on ${esc(p.node)}: ${limits.join(" · ")} · dead letters to
    <b>${esc(p.dead_letter_topic)}</b>: ${num(sum(p.dead_lettered))} dead-lettered,
    ${num(sum(p.dropped))} dropped, ${num(p.rejected)} rejected</p>`;
}

function renderChannel(r, c, ov) {
  if (!c.channel_name) {
    ["summary", "actions", "nodes", "e2e", "clients", "charts"].forEach((s) => patch(`s-${s}`, ""));
    patch("s-summary", `<p class="muted" id="not-found">No node has channel ${esc(r.topic)}/${esc(r.channel)}.</p>`);
    return;
  }
  patch("s-summary", cards([[num(c.depth), "depth", "channel-depth"], [num(c.memory_depth), "in memory"],
    [num(c.backend_depth), "on disk"], [num(c.in_flight_count), "in flight"],
    [num(c.deferred_count), "deferred"], [num(c.requeue_count), "requeued"],
    [num(c.timeout_count), "timed out"], [num(c.message_count), "messages"], stateCard(c.paused)])
    + (c.policies || []).map(policyLine).join("") + logSummary(c.nodes));
  patch("s-actions", `<div class="actions">${channelButtons(r.topic, c)}</div>`);
  const rows = c.nodes.map((n) => `<tr data-node="${esc(n.node)}">
    <td>${nodeLink(n.node)} <span class="muted">${esc(n.hostname)}</span> ${badge(n.paused)}</td>
    ${channelCells(n)}<td class="num">${num(n.client_count)}</td></tr>`).join("");
  patch("s-nodes", `<h2>Nodes</h2><table id="channel-nodes"><thead><tr><th>Node</th>${CHANNEL_HEADS}
    <th class="num">Clients</th></tr></thead><tbody>${rows}
    <tr class="total"><td>Total</td>${channelCells(c)}<td class="num">${num(c.client_count)}</td></tr></tbody></table>`);
  patch("s-e2e", e2eTable(c, c.nodes));
  patch("s-clients", `<h2>Clients</h2>${c.clients.length ? `<table id="clients-table"><thead><tr>
    ${clientHeads(true)}</tr></thead><tbody>${clientRows(c.clients, true)}</tbody></table>`
    : '<p class="muted">No clients connected.</p>'}`);
  const points = (ov.rates.channels[r.topic] || {})[r.channel];
  patch("s-charts", `<h2>Message rate ${LEGEND}</h2><div class="charts">${chartBox(esc(r.channel), points)}</div>`);
}

// --- nodes ---------------------------------------------------------------------------------

function renderNodes(ov) {
  const rows = ov.nodes.map((n) => `<tr data-node="${esc(n.node)}">
    <td><a href="${link(`/nodes/${seg(n.node)}`)}" data-nav>${esc(n.hostname)}</a></td>
    <td>${esc(n.broadcast_address)}</td><td class="num">${n.tcp_port}</td><td class="num">${n.http_port}</td>
    <td>${esc(n.version)}${n.out_of_date ? ' <span class="badge paused">out of date</span>' : ""}</td>
    <td>${n.remote_addresses.map(esc).join("<br>") || '<span class="muted">configured</span>'}</td>
    <td>${n.topics.map((t) => `<a class="chip${t.tombstoned ? " tomb" : ""}" href="${link(`/topics/${seg(t.topic)}`)}" data-nav
      title="${t.tombstoned ? "tombstoned" : ""}">${esc(t.topic)}</a>`).join(" ")}</td></tr>`).join("");
  patch("s-nodes", ov.nodes.length ? `<table id="nodes-table"><thead><tr><th>Hostname</th>
    <th>Broadcast address</th><th class="num">TCP</th><th class="num">HTTP</th><th>Version</th>
    <th>Lookupd connections</th><th>Topics</th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted">No nodes.</p>');
}

// One node: every topic, its channels, and each channel's clients, in one table.
function renderNode(r, node) {
  patch("s-summary", cards([[node.topics.length, "topics"], [num(node.total_messages), "messages"],
    [num(node.total_clients), "clients"]]));
  const tomb = CONFIG.lookupd.length > 0 && CONFIG.is_admin;
  const width = 12;
  const body = node.topics.map((t) => `<tr class="topic" data-topic="${esc(t.topic_name)}">
      <th colspan="2">${topicLink(t.topic_name)} ${badge(t.paused)}</th>${depthCells(t)}
      <td colspan="4"></td><td class="num messages">${num(t.message_count)}</td><td></td>
      <td>${tomb ? button("tombstone", "Tombstone", { topic: t.topic_name, node: r.node }, true) : ""}</td></tr>`
    + t.channels.map((c) => `<tr class="channel" data-channel="${esc(t.topic_name)}/${esc(c.channel_name)}">
      <td></td><td>${channelLink(t.topic_name, c.channel_name)} ${badge(c.paused)}</td>${channelCells(c)}
      <td class="num">${num(c.client_count)}</td><td></td></tr>`
      + (c.clients.length ? `<tr class="clients"><td></td><td colspan="${width - 1}"><table class="inner">
        <thead><tr>${clientHeads(false)}</tr></thead><tbody>${clientRows(c.clients, false)}</tbody></table></td></tr>` : "")).join("")).join("");
  patch("s-topics", node.topics.length ? `<table id="node-table"><thead><tr><th>Topic</th><th>Channel</th>
    ${CHANNEL_HEADS}<th class="num">Clients</th><th></th></tr></thead><tbody>${body}</tbody></table>`
    : '<p class="muted">No topics on this node.</p>');
}

// --- lookup --------------------------------------------------------------------------------

function renderLookup(inactive) {
  patch("s-lookupds", `<h2>nsqlookupd hosts</h2>${CONFIG.lookupd.length
    ? `<ul id="lookupd-hosts">${CONFIG.lookupd.map((a) => `<li>${esc(a)}</li>`).join("")}</ul>`
    : '<p class="muted">No --lookupd-http-address: gnsqadmin reads the nsqds directly.</p>'}`);
  const names = Object.keys(inactive.topics || {}).sort();
  const rows = names.map((t) => `<tr data-topic="${esc(t)}"><td>${esc(t)}</td>
    <td>${inactive.topics[t].map((c) => `<span class="chip" data-channel="${esc(c)}">${esc(c)}
      ${button("delete", "×", { topic: t, channel: c }, true)}</span>`).join(" ")
      || '<span class="muted">no channels</span>'}</td>
    <td>${button("delete", "Delete topic", { topic: t }, true)}</td></tr>`).join("");
  patch("s-inactive", `<h2>Registered without producers</h2>
    <p class="muted">Topics and channels lookupd knows that no nsqd has yet.</p>${names.length
    ? `<table id="inactive-table"><thead><tr><th>Topic</th><th>Channels</th><th></th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted" id="no-inactive">None.</p>'}`);
  const create = document.getElementById("s-create");
  if (CONFIG.lookupd.length && CONFIG.is_admin && !create.dataset.html) {
    create.dataset.html = "1";
    create.innerHTML = `<h2>Create</h2><form id="create-form" class="inline">
      <input name="topic" placeholder="topic" required pattern="[.a-zA-Z0-9_\\-]+(#ephemeral)?">
      <input name="channel" placeholder="channel (optional)" pattern="[.a-zA-Z0-9_\\-]+(#ephemeral)?">
      <button type="submit">Create</button></form>
      <p class="muted">A topic is registered in lookupd; a channel is also created on every nsqd
      that has the topic, so it keeps messages published before its first consumer.</p>`;
  }
}

// --- counter -------------------------------------------------------------------------------

// The total of every channel's message count; the number counts up to each new total.
function renderCounter(counter) {
  const total = Object.values(counter.stats || {}).reduce((n, s) => n + s.message_count, 0);
  const now = Date.now();
  const state = renderCounter.state || { shown: total, total, at: now, rate: 0 };
  if (total !== state.total) {
    state.rate = Math.max(0, (total - state.total) / ((now - state.at) / 1000 || 1));
    state.total = total;
  }
  state.at = now;
  renderCounter.state = state;
  if (!document.getElementById("counter-total")) {
    patch("s-counter", `<div class="counter"><div id="counter-total" class="big">0</div>
      <div class="muted">messages processed by every channel on every node</div>
      <div id="counter-rate" class="rate"></div></div>`);
    state.shown = 0;
  }
  document.getElementById("counter-rate").textContent = rate(state.rate);
  cancelAnimationFrame(renderCounter.frame);
  const from = state.shown;
  const started = performance.now();
  const step = (t) => {
    const k = Math.min(1, (t - started) / Math.min(CONFIG.refresh_ms, 1500));
    state.shown = Math.round(from + (state.total - from) * k);
    document.getElementById("counter-total").textContent = num(state.shown);
    if (k < 1) renderCounter.frame = requestAnimationFrame(step);
  };
  renderCounter.frame = requestAnimationFrame(step);
}
