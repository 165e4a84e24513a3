// Corral's web UI: the leader's view (api/view), kept live by its event stream
// (api/events). Every value from the cluster is set as text, never as HTML.
"use strict";

const ui = { view: null, fetching: false, again: false, timer: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  }
  return e;
}

function stateClass(s) {
  if (/RUNNING|FINISHED|ACTIVE|CONNECTED|leader|follower/.test(s)) return "state good";
  if (/FAILED|LOST|ERROR|GONE|unreachable|TORN_DOWN|DROPPED/.test(s)) return "state bad";
  return "state warn";
}

function short(s, n) {
  s = String(s || "");
  return s.length > n ? s.slice(0, n) + "…" : s;
}

function resources(r, skip) {
  return Object.entries(r || {})
    .filter(([k]) => !(skip || []).includes(k))
    .map(([k, v]) => `${k}:${typeof v === "number" ? +v.toFixed(3) : v}`)
    .join(" ");
}

function usedOf(a, name) {
  const used = (a.used || {})[name] || 0;
  const total = (a.resources || {})[name];
  return total == null ? "" : `${+used.toFixed(3)} / ${+total.toFixed(3)}`;
}

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

function fill(id, rows, columns, empty) {
  const body = document.querySelector(`#${id} tbody`);
  const out = rows.map((r) => r);
  if (out.length === 0) {
    out.push(el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, empty)));
  }
  body.replaceChildren(...out);
}

function outputLink(t, file) {
  const q = new URLSearchParams({ framework_id: t.framework_id, task_id: t.task_id, file });
  return el("a", { href: `api/output?${q}`, target: "_blank", class: `output-${file}` }, file);
}

function render() {
  const v = ui.view;
  if (!v) return;
  const leader = v.leader || {};
  document.getElementById("cluster").textContent =
    `leader: master ${leader.id} at ${leader.address}, term ${leader.term} · ` +
    `${v.agents_total} agents · ${v.frameworks_total} frameworks · ${v.tasks_total} tasks · ` +
    `resources ${resources(v.resources_total) || "none"}`;

  fill("members", (v.members || []).map((m) =>
    el("tr", { "data-id": String(m.id) },
      el("td", { class: "num" }, m.id),
      el("td", { class: "mono" }, m.address),
      el("td", { class: stateClass(m.role) }, m.role + (m.voter ? "" : " (non-voter)")),
      el("td", { class: "num" }, m.term || ""),
      el("td", { class: "num" }, m.last_log_index),
      el("td", { class: "num" }, m.applied_index),
      el("td", { class: "num" }, m.lag == null ? "" : m.lag),
      el("td", { class: "mono", title: m.state_hash || "" }, short(m.state_hash, 12)))), 8, "no members");

  document.getElementById("agents-count").textContent = `(${v.agents_total})`;
  fill("agents", (v.agents || []).map((a) =>
    el("tr", { "data-id": a.agent_id },
      el("td", { class: "mono" }, a.agent_id),
      el("td", {}, a.hostname),
      el("td", { class: "mono" }, a.address),
      el("td", { class: stateClass(a.state) }, a.state + (a.attached ? "" : " (not attached)")),
      el("td", { class: "num" }, usedOf(a, "cpus")),
      el("td", { class: "num" }, usedOf(a, "mem")),
      el("td", {}, resources(a.resources, ["cpus", "mem"])),
      el("td", {}, (a.attributes || []).map((x) => `${x.name}=${x.value}`).join(" ")))), 8, "no agents");

  document.getElementById("frameworks-count").textContent = `(${v.frameworks_total})`;
  fill("frameworks", (v.frameworks || []).map((f) =>
    el("tr", { "data-id": f.framework_id },
      el("td", { class: "mono" }, f.framework_id),
      el("td", {}, f.name),
      el("td", {}, f.role),
      el("td", { class: "num" }, f.weight),
      el("td", { class: "num", title: `weighted, with offers: ${(+f.weighted_share).toFixed(4)}` },
        `${(100 * f.dominant_share).toFixed(1)}%`),
      el("td", { class: stateClass(f.state) }, f.state),
      el("td", { class: "tasks" }, Object.entries(f.tasks || {})
        .map(([s, n]) => `${s.replace("TASK_", "").toLowerCase()} ${n}`).join(", ")))), 7, "no frameworks");

  document.getElementById("offers-count").textContent = `(${v.offers_listed})`;
  fill("offers", (v.offers || []).map((o) =>
    el("tr", { "data-id": o.offer_id },
      el("td", { class: "mono" }, short(o.offer_id, 16)),
      el("td", { class: "mono" }, o.framework_id),
      el("td", { class: "mono" }, o.agent_id),
      el("td", {}, resources(o.resources)),
      el("td", { class: "num" }, `${(o.age_ms / 1000).toFixed(1)}s`))), 5, "no outstanding offers");

  const select = document.getElementById("filter-framework");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"),
    ...(v.frameworks || []).map((f) => el("option", { value: f.framework_id }, `${f.name} (${f.framework_id})`)));
  select.value = chosen;

  document.getElementById("tasks-count").textContent =
    v.tasks_matching > v.tasks.length ? `(newest ${v.tasks.length} of ${v.tasks_matching})` : `(${v.tasks_matching})`;
  renderTasks();
}

function renderTasks() {
  const v = ui.view;
  fill("tasks", (v.tasks || []).map((t) =>
    el("tr", { "data-id": `${t.framework_id}/${t.task_id}` },
      el("td", { class: "mono" }, t.task_id),
      el("td", {}, t.name),
      el("td", { class: "mono" }, t.framework_id),
      el("td", { class: "mono", title: t.agent_id }, t.hostname || t.agent_id),
      el("td", { class: stateClass(t.state) + " task-state", title: t.message || "" }, t.state),
      el("td", { class: "num" }, t.exit_code == null ? "" : t.exit_code),
      el("td", {}, ago(t.updated_ms)),
      el("td", {}, outputLink(t, "stdout"), " ", outputLink(t, "stderr")))), 8, "no tasks");
}

function problem(text) {
  const p = document.getElementById("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

async function refresh() {
  if (ui.fetching) { ui.again = true; return; }
  ui.fetching = true;
  try {
    const q = new URLSearchParams();
    const state = document.getElementById("filter-state").value;
    const framework = document.getElementById("filter-framework").value;
    if (state) q.set("state", state);
    if (framework) q.set("framework_id", framework);
    const r = await fetch(`api/view?${q}`, { cache: "no-store" });
    if (!r.ok) {
      problem(`${r.status}: ${(await r.text()).trim()}`);
    } else {
      ui.view = await r.json();
      problem("");
      render();
    }
  } catch (e) {
    problem(`cannot reach this master: ${e}`);
  } finally {
    ui.fetching = false;
    if (ui.again) { ui.again = false; soon(); }
  }
}

// Many events in a burst cost one fetch.
function soon() {
  if (ui.timer) return;
  ui.timer = setTimeout(() => { ui.timer = null; refresh(); }, 250);
}

// A task's change shows at once in its row; the view is fetched again for the rest.
function onTask(e) {
  const t = JSON.parse(e.data);
  const row = document.querySelector(`#tasks tr[data-id="${CSS.escape(`${t.framework_id}/${t.task_id}`)}"]`);
  if (row && !t.removed) {
    const cell = row.querySelector(".task-state");
    cell.textContent = t.state;
    cell.className = stateClass(t.state) + " task-state";
  }
  soon();
}

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("api/events");
  // Fetch the view once the stream is open: no change between the two is missed.
  events.onopen = () => { live.textContent = "live"; live.className = "live on"; refresh(); };
  events.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  events.addEventListener("task", onTask);
  for (const kind of ["agent", "framework", "leader"]) events.addEventListener(kind, soon);
}

document.getElementById("filter-state").addEventListener("change", refresh);
document.getElementById("filter-framework").addEventListener("change", refresh);
connect();
refresh();
// Figures no event announces (replication lag, offer ages) are refreshed now and then.
setInterval(refresh, 5000);
