// The index: studies newest first, refreshed every 5 s while any of them runs.
"use strict";

(() => {
  const { get, el, fmt } = samsweep;
  const FINISHED = new Set(["complete", "cancelled"]);

  function row(s) {
    const tr = el("tr", null, { "data-study-id": s.id });
    const name = el("td");
    name.appendChild(el("a", s.name, { href: `/studies/${encodeURIComponent(s.id)}/page` }));
    tr.appendChild(name);
    tr.appendChild(el("td", s.status, { class: `status status-${s.status}` }));
    const progress = el("td");
    progress.appendChild(el("progress", null, { max: "1", value: String(s.progress.fraction) }));
    progress.appendChild(el("span", ` ${s.progress.finished}/${s.progress.total}`));
    tr.appendChild(progress);
    tr.appendChild(el("td", s.counts.COMPLETE ?? 0));
    tr.appendChild(el("td", s.counts.PRUNED ?? 0, { class: "pruned" }));
    tr.appendChild(el("td", (s.counts.FAILED ?? 0) + (s.counts.INFEASIBLE ?? 0)));
    tr.appendChild(el("td", s.best_mean === null ? "–" : `${fmt(s.best_mean, 4)} (${s.objective})`,
      { class: "best" }));
    tr.appendChild(el("td", s.created_at.replace("T", " ").slice(0, 19)));
    return tr;
  }

  async function refresh() {
    let data;
    try {
      data = await get("/overview?limit=200");
    } catch (e) {
      document.getElementById("index-note").textContent = `could not load the studies: ${e.message}`;
      setTimeout(refresh, 5000);
      return;
    }
    const body = document.querySelector("#studies tbody");
    body.replaceChildren(...data.items.map(row));
    document.getElementById("studies-empty").hidden = data.items.length > 0;
    const more = data.total > data.items.length ? ` (the newest ${data.items.length} of ${data.total})` : "";
    document.getElementById("index-note").textContent = `newest first${more}`;
    document.body.dataset.loaded = "true";
    if (data.items.some((s) => !FINISHED.has(s.status))) setTimeout(refresh, 5000);
  }

  document.addEventListener("DOMContentLoaded", refresh);
})();
