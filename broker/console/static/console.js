// GreenChannel console: live list (server-sent events), countdowns, the trail graph (Cytoscape.js)
// and the SLA charts (Chart.js). No framework; rows arrive rendered by the server's template.
"use strict";

function left(ms) {
  const sign = ms < 0 ? "-" : "";
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const pad = (n) => String(n).padStart(2, "0");
  return sign + (d ? d + "d " : "") + (d || h ? pad(h) + "h " : "") + pad(m) + "m " + pad(s) + "s";
}

function tick() {
  const now = Date.now();
  const clock = document.getElementById("clock");
  if (clock) clock.textContent = new Date(now).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  document.querySelectorAll("tr[data-due]").forEach((row) => {
    const due = Number(row.dataset.due);
    const cell = row.querySelector(".countdown");
    if (!due || !cell) return;
    const rest = due - now;
    cell.textContent = rest > 0 ? left(rest) : left(rest) + " overdue";
    cell.dataset.left = String(Math.round(rest / 1000));
    if (rest <= 0) { row.classList.remove("u-ok", "u-soon"); row.classList.add("u-breached"); }
  });
  document.querySelectorAll("span.countdown[data-due]").forEach((span) => {
    const rest = Number(span.dataset.due) - now;
    span.textContent = rest > 0 ? left(rest) + " left" : left(rest) + " overdue";
  });
}

function fromHtml(html) {
  const t = document.createElement("tbody");
  t.innerHTML = html.trim();
  return t.firstElementChild;
}

function live() {
  const body = document.querySelector("#open-requests tbody");
  if (!body) return;
  const badge = document.getElementById("live");
  const empty = document.getElementById("empty");
  const settle = () => { empty.hidden = body.children.length > 0; tick(); };
  // Puts a row in place, newest first; a row already shown at this version is left alone, and an
  // action form open in a row stays open when the row changes.
  const upsert = (r, flash) => {
    const old = document.getElementById("r-" + r.id);
    if (!r.open) { if (old) old.remove(); return; }
    if (old && old.dataset.version === r.version) return;
    const row = fromHtml(r.html);
    if (flash) row.classList.add("flash");
    if (old) {
      const open = old.querySelector("details[open]");
      const details = row.querySelector("details");
      if (open && details) {
        details.open = true;
        // What the officer typed stays typed.
        open.querySelectorAll("form").forEach((form) => {
          const twin = details.querySelector(`form[action="${form.getAttribute("action")}"]`);
          if (!twin) return;
          form.querySelectorAll("input:not([type=hidden])").forEach((input) => {
            const field = twin.querySelector(`input[name="${input.name}"]`);
            if (field) field.value = input.value;
          });
        });
      }
      old.replaceWith(row);
      return;
    }
    const after = Array.from(body.children).find((x) => Number(x.querySelector(".t").dataset.ms) < r.submitted_ms);
    body.insertBefore(row, after || null);
  };
  const source = new EventSource("/events");
  source.addEventListener("snapshot", (e) => {
    const rows = JSON.parse(e.data);
    const shown = new Set(rows.map((r) => "r-" + r.id));
    Array.from(body.children).forEach((x) => { if (!shown.has(x.id)) x.remove(); });
    rows.forEach((r) => upsert(r, false));
    badge.textContent = "live"; badge.dataset.state = "live";
    settle();
  });
  source.addEventListener("row", (e) => {
    upsert(JSON.parse(e.data), true);
    settle();
  });
  source.onerror = () => { badge.textContent = "reconnecting…"; badge.dataset.state = "down"; };
}

function trail() {
  const data = document.getElementById("trail-data");
  if (!data || typeof cytoscape === "undefined") return;
  const elements = JSON.parse(data.textContent);
  window.trailGraph = cytoscape({
    container: document.getElementById("trail-graph"),
    elements: elements,
    wheelSensitivity: 0.3,
    layout: { name: "breadthfirst", directed: true, spacingFactor: 1, padding: 10 },
    minZoom: 0.3, maxZoom: 2,
    style: [
      { selector: "node", style: {
          "font-family": getComputedStyle(document.body).fontFamily,
          "shape": "round-rectangle", "width": 230, "height": 66, "label": "data(label)",
          "text-wrap": "wrap", "text-valign": "center", "font-size": 13, "line-height": 1.3, "color": "#10241a",
          "background-color": "#d9f2e3", "border-width": 2, "border-color": "#2e8b57" } },
      { selector: "node[kind = 'empty']", style: { "background-color": "#eceff1", "border-color": "#90a4ae" } },
      { selector: "node[kind = 'escaped']", style: {
          "background-color": "#fde2e1", "border-color": "#c62828", "border-style": "dashed", "color": "#7f1010" } },
      { selector: "edge", style: {
          "curve-style": "bezier", "target-arrow-shape": "triangle", "width": 2, "line-color": "#5f7d6e",
          "target-arrow-color": "#5f7d6e", "label": "data(label)", "font-size": 12, "text-background-color": "#fff",
          "text-background-opacity": 0.9, "text-background-padding": 2 } },
      { selector: "edge[kind = 'escaped']", style: {
          "line-color": "#c62828", "target-arrow-color": "#c62828", "line-style": "dashed", "color": "#c62828" } },
    ],
  });
}

function charts() {
  const data = document.getElementById("sla-data");
  if (!data || typeof Chart === "undefined") return;
  const sla = JSON.parse(data.textContent);
  const colors = { met: "#2e8b57", breached: "#c62828", open: "#b0bec5" };
  const stacked = (id, labels, rows, kind) => new Chart(document.getElementById(id), {
    type: "bar",
    data: { labels: labels, datasets: ["met", "breached", "open"].map((k) => ({
      label: k, data: rows.map((r) => r[k]), backgroundColor: colors[k], maxBarThickness: 48 })) },
    options: { responsive: true, animation: false, indexAxis: kind === "vertical" ? "x" : "y",
      scales: { x: { stacked: true, beginAtZero: true }, y: { stacked: true, beginAtZero: true } } },
  });
  const keyed = (m) => [Object.keys(m), Object.values(m)];
  const [agencies, byAgency] = keyed(sla.agency);
  const [types, byType] = keyed(sla.type);
  const [phases, byPhase] = keyed(sla.phase);
  window.slaCharts = {
    agency: stacked("chart-agency", agencies, byAgency),
    type: stacked("chart-type", types, byType),
    phase: stacked("chart-phase", phases, byPhase),
    time: stacked("chart-time", sla.time.map((t) => t.hour), sla.time, "vertical"),
  };
}

tick();
setInterval(tick, 1000);
live();
trail();
charts();
