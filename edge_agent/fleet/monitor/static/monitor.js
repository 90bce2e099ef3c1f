// Live updates for the monitor's pages. Everything from the server goes into the DOM with
// textContent (never innerHTML), except the day picture, which is the server's own escaped SVG.
"use strict";
(function () {
  const body = document.body;
  const page = body.dataset.page;
  const device = body.dataset.device || null;
  const csrf = body.dataset.csrf;
  // (the tasks page's table has a device column; a device's page does not: read once, it never changes)
  const tasksHaveDevice = [...document.querySelectorAll("#tasks thead th")].some((th) => th.textContent === "device");

  function dur(s) {
    if (typeof s !== "number") return "-";
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
    const p = (n) => String(n).padStart(2, "0");
    return d ? `${d}d ${p(h)}h` : h ? `${h}h ${p(m)}m` : `${m}m ${p(r)}s`;
  }
  // Times in the monitor's time zone, as the server renders them ("sv-SE" reads YYYY-MM-DD HH:MM:SS).
  let clock;
  try {
    clock = new Intl.DateTimeFormat("sv-SE", { timeZone: body.dataset.tz || undefined, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  } catch (e) {
    clock = new Intl.DateTimeFormat("sv-SE", { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
      minute: "2-digit", second: "2-digit", hour12: false });
  }
  function when(ts) {
    return typeof ts === "number" ? clock.format(new Date(ts * 1000)) : "-";
  }
  function cells(row) {
    const nj = row.next_job;
    return {
      status: row.online ? "online" : "offline",
      version: row.version || "-",
      uptime: dur(row.uptime_s),
      last_seen: when(row.last_seen),
      queue: row.queue ?? "-",
      outbox: row.outbox ?? "-",
      clock: row.clock_synchronized === true ? "synced" : row.clock_synchronized === false ? "NOT synced" : "-",
      failures: String(row.failures_24h ?? 0),
      next_job: nj ? `${nj.job} ${nj.at}` : "-",
    };
  }
  function fill(root, values) {
    for (const [k, v] of Object.entries(values)) {
      const el = root.querySelector(`[data-f="${k}"]`);
      if (el) el.textContent = String(v);
    }
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function fleetRow(msg) {
    const tbody = document.querySelector("#fleet tbody");
    let tr = [...tbody.rows].find((r) => r.dataset.device === msg.device);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.device = msg.device;
      const a = el("a", msg.device);
      a.href = "/device/" + encodeURIComponent(msg.device);
      const first = el("td"); first.appendChild(a); tr.appendChild(first);
      for (const f of ["status", "version", "uptime", "last_seen", "queue", "outbox", "clock", "failures", "next_job"]) {
        const td = el("td"); td.dataset.f = f; tr.appendChild(td);
      }
      const sched = el("td", "-"); sched.dataset.f = "schedule"; tr.appendChild(sched);  // (the page's load fills it)
      tbody.appendChild(tr);
    }
    const c = cells(msg.row);
    fill(tr, c);
    tr.querySelector('[data-f="status"]').className = c.status;
    if (typeof msg.row.schedule === "string") fill(tr, { schedule: msg.row.schedule }); // (the API's rows have it)
    const rows = [...tbody.rows];
    const online = rows.filter((r) => r.querySelector('[data-f="status"]').textContent === "online").length;
    const count = document.getElementById("count");
    if (count) count.textContent = `${online} of ${rows.length} online`;
  }

  function taskRow(t) {
    const tbody = document.querySelector("#tasks tbody");
    if (!tbody) return;
    let tr = [...tbody.rows].find((r) => r.dataset.id === t.id && r.dataset.device === t.device);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.id = t.id; tr.dataset.device = t.device;
      tr.appendChild(el("td", when(t.updated)));
      if (tasksHaveDevice) {
        const cell = el("td"), link = el("a", t.device);
        link.href = "/device/" + encodeURIComponent(t.device);
        cell.appendChild(link); tr.appendChild(cell);
      }
      const idcell = el("td"), a = el("a", t.id);
      a.href = `/task/${encodeURIComponent(t.device)}/${t.id.split("/").map(encodeURIComponent).join("/")}`;
      idcell.appendChild(a); tr.appendChild(idcell);
      tr.appendChild(el("td", t.action || "-"));
      for (const f of ["status", "attempt", "error"]) { const td = el("td"); td.dataset.f = f; tr.appendChild(td); }
      tbody.insertBefore(tr, tbody.firstChild);
      while (tbody.rows.length > 50) tbody.deleteRow(tbody.rows.length - 1);
    }
    fill(tr, { status: t.status, attempt: t.attempt ?? "-", error: t.error_type ? `${t.error_type}: ${t.error_message}` : "" });
    tr.querySelector('[data-f="status"]').className = "st " + t.status;
    tr.className = t.status;
  }

  let dayTimer = null, dayAsked = 0;
  function refreshDay() {
    const box = document.getElementById("day");
    if (!box || dayTimer) return;
    dayTimer = setTimeout(async () => {
      dayTimer = null;
      const asked = ++dayAsked;
      const r = await fetch(`/device/${encodeURIComponent(device)}/day.svg?day=${box.dataset.day}`, { credentials: "same-origin" });
      const svg = r.ok ? await r.text() : null;
      // (two fetches may overlap and answer out of order: only the last one asked is shown)
      if (svg !== null && asked === dayAsked) box.innerHTML = svg; // the server's own SVG, every text in it escaped
    }, 300);
  }

  function reply(doc) {
    const list = document.getElementById("replies");
    if (!list) return;
    const parts = [doc.status, doc.action, doc.id];
    if (doc.result !== undefined && doc.result !== null) parts.push(JSON.stringify(doc.result));
    if (doc.error) parts.push(`${doc.error.type}: ${doc.error.message}`);
    const li = el("li", parts.join("  "), "reply " + doc.status);
    li.dataset.id = doc.id;
    li.dataset.status = doc.status;
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 100) list.removeChild(list.lastChild);
  }

  let es = null;
  function setTaskStatus(status) {
    const st = document.getElementById("task-status");
    if (st) { st.textContent = status; st.className = "st " + status; }
  }

  // Catching up. When its stream opens (after the page's render, or again after the monitor
  // restarted) a page asks for what it shows as the server has it now. The stream was open
  // before the question, so it brings every later change too: an answer read before a change
  // can arrive after the stream's message of it, and must not undo it. So the live messages are
  // counted per device and per task, and an answer's row is used only if none came since.
  const heard = new Map();
  const deviceKey = (name) => "d\u0000" + name;
  const taskKey = (t) => "t\u0000" + t.device + "\u0000" + t.id;
  function hear(key) { heard.set(key, (heard.get(key) || 0) + 1); }
  async function ask(url) {
    const before = new Map(heard);
    const r = await fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } });
    const doc = r.ok ? await r.json() : null;
    return { doc, fresh: (key) => (heard.get(key) || 0) === (before.get(key) || 0) };
  }

  function onDevice(msg) {
    hear(deviceKey(msg.device));
    if (page === "fleet") fleetRow(msg);
    if (page === "device" && msg.device === device) {
      const c = cells(msg.row);
      fill(document.querySelector(".facts"), c);
      const st = document.getElementById("dev-status");
      st.textContent = c.status; st.className = c.status;
    }
  }
  async function refreshDevices() {
    const { doc, fresh } = await ask(page === "device" ? `/api/devices/${encodeURIComponent(device)}` : "/api/devices");
    for (const row of doc === null ? [] : page === "device" ? [doc] : doc.devices || []) {
      if (fresh(deviceKey(row.device))) onDevice({ device: row.device, row });
    }
  }
  async function refreshTasks() {
    // (the newest tasks, oldest first so that new ones go on top in order)
    const { doc, fresh } = await ask("/api/tasks" + (page === "device" ? `?device=${encodeURIComponent(device)}&limit=50` : "?limit=50"));
    for (const t of (doc && doc.tasks || []).slice().reverse()) {
      if (fresh(taskKey(t))) taskRow(t);
    }
  }
  async function refreshTask() {
    const { doc, fresh } = await ask(location.pathname.replace(/^\/task\//, "/api/tasks/"));
    if (doc && doc.task && fresh(taskKey(doc.task))) setTaskStatus(doc.task.status);
    body.dataset.refreshed = "1"; // (the page is as the server has it: tests wait for this)
  }

  function connect() {
    const url = device ? `/live?device=${encodeURIComponent(device)}` : "/live";
    es = new EventSource(url);
    const dot = document.getElementById("live");
    es.onopen = () => {
      if (dot) dot.classList.add("on");
      if (page === "task") refreshTask(); // what changed between the page's render and the stream's start
      if (page === "fleet" || page === "device") refreshDevices(); // (the same for the devices)
      if (page === "device" || (page === "tasks" && !location.search)) refreshTasks(); // (and their tasks)
      if (page === "device") refreshDay();
    };
    es.onerror = () => dot && dot.classList.remove("on");
    es.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === "device") {
        onDevice(msg);
      } else if (msg.type === "task") {
        hear(taskKey(msg.task));
        if (page === "device" || (page === "tasks" && !location.search)) taskRow(msg.task);
        if (page === "device") refreshDay();
        if (page === "task" && msg.task.id === body.dataset.task) setTaskStatus(msg.task.status);
      } else if (msg.type === "reply") {
        if (page === "device") { reply(msg.reply); refreshDay(); }
      }
    };
  }

  const form = document.getElementById("send");
  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = document.getElementById("send-result");
      out.textContent = "sending…";
      const r = await fetch(form.getAttribute("action"), {  // (form.action is the input named "action")
        method: "POST", credentials: "same-origin",
        headers: { "Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": csrf },
        body: new URLSearchParams(new FormData(form)),
      });
      let doc = {};
      try { doc = await r.json(); } catch (e) { doc = { error: `HTTP ${r.status}` }; }
      out.textContent = r.ok ? `sent ${doc.id}` : (doc.error || `HTTP ${r.status}`);
      out.className = r.ok ? "result sent" : "result error";
      out.dataset.id = doc.id || "";
    });
  }
  if (page === "fleet" || page === "device" || page === "tasks" || page === "task") {
    connect();
    // A page kept in the back-forward cache would hold its stream open (browsers allow six
    // connections per host): close it on leaving, reload on coming back.
    window.addEventListener("pagehide", () => { if (es) { es.close(); es = null; } });
    window.addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); });
  }
})();
