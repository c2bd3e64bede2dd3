// The node's dashboard: polls /dashboard/state and draws it. Text is set with
// textContent only: nothing the node reports is ever parsed as HTML.
"use strict";

const STATE = "/dashboard/state";
const KEY = "actorfleet-key";
const WINDOW_S = 10;
const samples = []; // {at, requests: Map, tokens: Map}, oldest first
let interval = 1.0;
let polls = 0;

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(id, visible) {
  document.getElementById(id).hidden = !visible;
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function statusClass(status) {
  if (status === "running" || status === "closed" || status === "pass") return "pass";
  if (status === "restarting" || status === "starting" || status === "half_open") return "warn";
  return "fail";
}

function badge(value) {
  return el("span", "badge " + statusClass(value), value);
}

function askForKey(error) {
  show("main", false);
  show("key-form", true);
  text("key-error", error || "");
  document.getElementById("key").focus();
}

function supervisorList(tree) {
  const list = el("ul", "tree");
  for (const child of tree.children) {
    if (child.supervisor) {
      const nested = el("li", "", supervisorTree(child.supervisor, child));
      nested.dataset.child = `${tree.name}/${child.id}`;
      nested.dataset.restarts = String(child.restarts);
      list.append(nested);
      continue;
    }
    const item = el("li", "", badge(child.status), " ", el("span", "", child.id),
      el("span", "muted", ` ${child.kind}, ${child.restart}`),
      ` · ${child.restarts} restart${child.restarts === 1 ? "" : "s"}`);
    item.dataset.child = `${tree.name}/${child.id}`;
    item.dataset.restarts = String(child.restarts);
    if (child.queue_depth !== null && child.queue_depth !== undefined) {
      item.append(` · ${child.queue_depth} queued`);
    }
    if (child.pid) item.append(` · pid ${child.pid}`);
    if (child.last_exit) item.append(" ", el("span", "exit", `last exit: ${child.last_exit}`));
    if (child.detail) item.append(" ", el("span", "muted", child.detail));
    list.append(item);
  }
  return list;
}

function supervisorTree(tree, asChild) {
  // A supervisor, and its restarts as its parent's child when it is one.
  const intensity = tree.intensity;
  const head = el("div", "", badge(tree.status), " ", el("span", "supervisor-name", tree.name),
    el("span", "muted", ` ${tree.strategy}, ${intensity.restarts}/${intensity.max_restarts}` +
      ` restarts in ${intensity.period} s`));
  if (asChild) {
    head.append(` · ${asChild.restarts} restart${asChild.restarts === 1 ? "" : "s"}`);
    if (asChild.last_exit) head.append(" ", el("span", "exit", `last exit: ${asChild.last_exit}`));
  }
  if (tree.exit_reason) head.append(" ", el("span", "exit", tree.exit_reason));
  return el("div", "", head, supervisorList(tree));
}

function baseline(now) {
  // The oldest sample within the window (or the oldest there is).
  for (const sample of samples) {
    if (sample.at >= now - WINDOW_S) return sample;
  }
  return samples[0];
}

function quantile(q, bounds, counts) {
  // Prometheus's histogram_quantile over cumulative bucket counts (last: +Inf).
  const total = counts[counts.length - 1];
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const lower = i === 0 ? 0 : bounds[i - 1];
      const below = i === 0 ? 0 : counts[i - 1];
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lower + (bounds[i] - lower) * ((rank - below) / inBucket) : bounds[i];
    }
  }
  return bounds[bounds.length - 1];
}

function ms(seconds) {
  return seconds === null ? "–" : (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1);
}

function cell(value, numeric) {
  return el("td", numeric ? "num" : "", value);
}

function drawTiers(state, now, before) {
  const body = document.querySelector("#tiers tbody");
  const tiers = state.inference ? state.inference.tiers : [];
  const span = Math.max(now.at - before.at, 1e-9);
  body.replaceChildren(...tiers.map((tier) => {
    const earlier = before.tokens.get(tier.name);
    const rate = earlier === undefined || before === now ? null : (tier.tokens - earlier) / span;
    const row = el("tr", "", cell(tier.name), cell(tier.backend), cell(tier.model),
      cell(`${tier.in_flight}/${tier.slots}`, true), cell(tier.queued, true));
    row.append(el("td", "", badge(tier.breaker)), cell(tier.degraded_in, true),
      cell(tier.rejected, true), cell(tier.failures, true),
      cell(rate === null ? "–" : rate.toFixed(1), true));
    row.dataset.tier = tier.name;
    return row;
  }));
  show("tiers", tiers.length > 0);
  show("no-tiers", tiers.length === 0);
}

function drawRequests(state, now, before) {
  const body = document.querySelector("#requests tbody");
  const span = Math.max(now.at - before.at, 1e-9);
  const bounds = state.latency_buckets;
  body.replaceChildren(...state.requests.map((totals) => {
    const key = `${totals.edge} ${totals.agent_type}`;
    const earlier = before === now ? undefined : before.requests.get(key);
    let rate = "–", failed = "–", p50 = null, p99 = null;
    if (earlier !== undefined) {
      rate = ((totals.count - earlier.count) / span).toFixed(1);
      failed = ((totals.failed - earlier.failed) / span).toFixed(1);
      const counts = totals.buckets.map((c, i) => c - earlier.buckets[i]);
      p50 = quantile(0.5, bounds, counts);
      p99 = quantile(0.99, bounds, counts);
    }
    const row = el("tr", "", cell(totals.agent_type), cell(totals.edge), cell(rate, true),
      cell(failed, true), cell(ms(p50), true), cell(ms(p99), true), cell(totals.count, true));
    row.dataset.requests = key;
    return row;
  }));
  show("requests", state.requests.length > 0);
  show("no-requests", state.requests.length === 0);
}

function drawJournal(id, entries) {
  const list = document.getElementById(id);
  if (entries.length === 0) {
    list.replaceChildren(el("li", "muted", "none yet"));
    return;
  }
  list.replaceChildren(...entries.slice().reverse().map((entry) => {
    const when = new Date(entry.at * 1000).toLocaleTimeString();
    const item = el("li", "", el("span", "muted", when + " "), el("strong", "", entry.kind),
      " ", entry.source);
    if (entry.text) item.append(" — ", entry.text);
    return item;
  }));
}

function remember(state) {
  const requests = new Map(state.requests.map((t) => [`${t.edge} ${t.agent_type}`, t]));
  const tokens = new Map((state.inference ? state.inference.tiers : []).map((t) => [t.name, t.tokens]));
  const sample = { at: state.at, requests, tokens };
  samples.push(sample);
  while (samples.length > 2 && samples[1].at < state.at - WINDOW_S) samples.shift();
  return sample;
}

function draw(state) {
  const now = remember(state);
  const before = baseline(state.at);
  text("node", state.node);
  const ready = document.getElementById("ready");
  ready.textContent = state.ready ? "ready" : "not ready";
  ready.className = "badge " + (state.ready ? "pass" : "fail");
  text("reason", state.ready ? "" : state.reason);
  text("updated", `actorfleet ${state.version} · ${new Date(state.at * 1000).toLocaleTimeString()}`);
  text("window", String(Math.round(Math.max(now.at - before.at, 0)) || WINDOW_S));
  const tree = document.getElementById("tree");
  if (state.tree) {
    tree.replaceChildren(supervisorTree(state.tree));
  } else {
    tree.replaceChildren(el("p", "fail-text", "The root supervisor does not answer."));
  }
  drawTiers(state, now, before);
  drawRequests(state, now, before);
  drawJournal("events", state.events);
  drawJournal("problems", state.problems);
  show("key-form", false);
  show("offline", false);
  show("main", true);
}

async function poll() {
  const key = sessionStorage.getItem(KEY);
  if (document.body.dataset.needsKey === "true" && !key) {
    askForKey();
    return;
  }
  try {
    const response = await fetch(STATE, {
      cache: "no-store",
      headers: key ? { Authorization: `Bearer ${key}` } : {},
    });
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY);
      const problem = await response.json().catch(() => ({}));
      askForKey(`Not accepted (${response.status}): ${problem.detail || "check the key"}`);
      return;
    }
    if (!response.ok) throw new Error(`the node answered ${response.status}`);
    const state = await response.json();
    interval = state.interval || interval;
    draw(state);
  } catch (error) {
    // What is shown is the last state read: say at once that it is stale.
    const ready = document.getElementById("ready");
    ready.textContent = "unreachable";
    ready.className = "badge fail";
    text("offline", `Cannot read the node: ${error.message}. Showing what it said last; trying again.`);
    show("offline", true);
  }
  polls += 1;
  document.body.dataset.polls = String(polls);
  setTimeout(poll, interval * 1000);
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = document.getElementById("key").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY, value);
  document.getElementById("key").value = "";
  poll();
});

poll();
