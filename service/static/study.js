// A study's page: counts, the report, the plots and the trials, fetched from the JSON and
// plot routes and fetched again every 2 s until the study is complete or cancelled. The
// report and the plots are fetched again only when a trial has finished since, and then
// revalidated (ETag): a plot that did not change is neither drawn nor sent again.
"use strict";

(() => {
  const { get, el, fmt, meanStd } = samsweep;
  const id = document.body.dataset.studyId;
  const base = `/studies/${encodeURIComponent(id)}`;
  const POLL_MS = 2000;
  // A finished study is still asked every IDLE_POLL_MS (one small read), so a study that
  // grows (PATCH) or is retried shows its new trials without a reload.
  const IDLE_POLL_MS = 15000;
  let lastProgress = null;
  let lastSeen = null;
  let curvesTrial = null; // null: the best cell's trials
  let updates = 0;

  function status(message) {
    document.getElementById("report-note").textContent = message;
  }

  function renderDetail(d) {
    document.getElementById("study-name").textContent = d.name;
    document.title = `${d.name} · samsweep`;
    const s = document.getElementById("study-status");
    s.textContent = d.status;
    s.className = `status status-${d.status}`;
    document.getElementById("study-objective").textContent = `objective ${d.spec.objective}`;
    const p = document.getElementById("progress");
    p.value = d.progress.fraction;
    document.getElementById("progress-text").textContent =
      `${d.progress.finished} of ${d.progress.total} trials finished`;
    const counts = document.getElementById("counts");
    counts.replaceChildren(...Object.keys(d.counts).map((state) => { // every state, in order
      const li = el("li", null, { "data-state": state, class: `state-${state}` });
      li.appendChild(el("span", state, { class: "state" }));
      li.appendChild(el("span", d.counts[state] ?? 0, { class: "count" }));
      return li;
    }));
  }

  function renderReport(r) {
    const table = document.getElementById("report");
    for (const old of table.querySelectorAll("tbody")) old.remove();
    const sel = r.selected_on_test
      ? "ρ selected on TEST accuracy (no validation split): the selected row overstates its own test accuracy."
      : `ρ selected on ${r.selection_metric}.`;
    status(`${sel} Cells show mean ± std over seeds (n); ★ marks the selected ρ.`);
    for (const g of r.groups) {
      const body = el("tbody", null, { class: "group" });
      const head = el("tr", null, { class: "group-head" });
      head.appendChild(el("th", g.title, { colspan: "11" }));
      body.appendChild(head);
      for (const row of g.rows) {
        const selected = row.selected;  // a sampler's study: the tuned baseline too
        const tr = el("tr", null, { class: selected && !row.baseline ? "selected" : row.baseline ? "baseline" : "" });
        tr.dataset.rho = String(row.rho);
        // a sampler's configuration: its own lr and weight decay beside ρ
        const g3 = (x) => Number(x).toPrecision(3);
        const setting = [row.lr != null ? `lr ${g3(row.lr)}` : "", row.weight_decay != null ? `wd ${g3(row.weight_decay)}` : ""]
          .filter(Boolean).join(", ");
        const shown = setting ? g3(row.rho) : row.rho;  // a drawn ρ is continuous
        const rho = (row.baseline ? "0 (baseline)" : shown) + (setting ? ` (${setting})` : "") + (selected ? " ★" : "");
        tr.appendChild(el("td", rho));
        tr.appendChild(el("td", row.seeds.length));
        for (const m of ["train_accuracy", "test_accuracy", "val_accuracy", "gap", "sharpness", "hessian_max_eig"]) {
          tr.appendChild(el("td", meanStd(row.metrics[m]), { class: "num" }));
        }
        tr.appendChild(el("td", meanStd(row.metrics.wall_seconds, 1), { class: "num" }));
        tr.appendChild(el("td", meanStd(row.metrics.passes, 0), { class: "num" }));
        const counts = Object.entries(row.counts).map(([k, v]) => `${k} ${v}`).join(", ");
        const cell = el("td", counts);
        if (row.errors.length) cell.appendChild(el("div", row.errors.join(" | "), { class: "error" }));
        tr.appendChild(cell);
        body.appendChild(tr);
      }
      const gain = el("tr", null, { class: "gain" });
      let text = "SAM's gain: no selected ρ yet";
      if (g.gain) {
        const ci = g.gain.ci_low === null ? "no interval below two seeds"
          : `95 % CI [${fmt(g.gain.ci_low, 4)}, ${fmt(g.gain.ci_high, 4)}], ${g.gain.excludes_zero ? "excludes" : "includes"} 0`;
        text = `SAM's gain at ρ = ${g.selected_rho}: ${g.gain.mean >= 0 ? "+" : ""}${fmt(g.gain.mean, 4)} test accuracy over ${g.gain.n_pairs} paired seed(s); ${ci}`;
        if (g.gain.compute_ratio !== null && g.gain.compute_ratio !== undefined) {
          text += `; at ${fmt(g.gain.compute_ratio, 3)}× the baseline's compute (${r.comparison}): ${fmt(g.gain.per_compute, 4)} per baseline run`;
        }
      } else if (!r.groups.some((x) => x.sam_variant)) {
        text = "no SAM ρ in this study";
      }
      gain.appendChild(el("td", text, { colspan: "11" }));
      body.appendChild(gain);
      table.appendChild(body);
    }
    const lb = document.querySelector("#large-batch tbody");
    lb.replaceChildren(...r.large_batch.map((x) => {
      const tr = el("tr");
      const sam = [x.train, x.sam].filter(Boolean).join(", ") || "–";
      const recovered = x.recovered_fraction === null ? "–" : `${(100 * x.recovered_fraction).toFixed(0)} %`;
      for (const v of [x.base_optimizer, sam, x.small_batch_size, x.batch_size, x.selected_rho ?? "–",
        fmt(x.baseline_drop, 4), fmt(x.sam_drop, 4), recovered]) tr.appendChild(el("td", v));
      return tr;
    }));
    if (!r.large_batch.length) {
      const tr = el("tr");
      tr.appendChild(el("td", "one batch size per optimizer: nothing to compare (or no baseline finished yet)",
        { colspan: "8", class: "muted" }));
      lb.appendChild(tr);
    }
  }

  function renderTrials(t) {
    const rows = t.trials.map((x) => {
      const m = x.metrics || {};
      const p = x.params;
      const tr = el("tr", null, { class: `state-${x.state}`, "data-number": String(x.number) });
      const sam = p.rho > 0 && p.sam_variant ? p.sam_variant + (p.m == null ? "" : ` m=${p.m}`) : "–";
      // lr and weight decay where they are grid axes (absent from the params otherwise)
      const optimizer = [p.base_optimizer, p.lr == null ? "" : `lr ${p.lr}`,
        p.weight_decay == null ? "" : `wd ${p.weight_decay}`].filter(Boolean).join(", ");
      for (const v of [x.number, p.rho, p.batch_size, optimizer, sam, p.seed]) tr.appendChild(el("td", v));
      tr.appendChild(el("td", x.state, { class: "state" }));
      tr.appendChild(el("td", x.epoch));
      for (const k of ["train_accuracy", "val_accuracy", "test_accuracy", "gap"]) tr.appendChild(el("td", fmt(m[k], 4), { class: "num" }));
      const curves = el("td");
      const button = el("button", "show", { type: "button" });
      button.addEventListener("click", () => showCurves(x.number));
      curves.appendChild(button);
      tr.appendChild(curves);
      tr.appendChild(el("td", x.error ?? "", { class: "error" }));
      return tr;
    });
    document.querySelector("#trials tbody").replaceChildren(...rows);
    document.getElementById("trials-note").textContent = t.total > t.trials.length
      ? `the first ${t.trials.length} of ${t.total} trials (all of them in the trials download)`
      : `${t.total} trials, in grid order`;
  }

  async function loadPlot(img) {
    let path = `${base}/plots/${img.dataset.kind}?format=svg`;
    if (img.dataset.kind === "curves" && curvesTrial !== null) path += `&trial=${curvesTrial}`;
    try {
      const response = await get(path, "response");
      const tag = `${path} ${response.headers.get("etag")}`;
      if (img.dataset.tag === tag && img.dataset.loaded === "true") return; // unchanged
      img.dataset.loaded = "false";
      img.dataset.tag = tag;
      const url = URL.createObjectURL(await response.blob());
      const old = img.dataset.url;
      img.onload = () => { if (old) URL.revokeObjectURL(old); img.dataset.loaded = "true"; };
      img.dataset.url = url;
      img.src = url;
    } catch (e) {
      img.alt = `plot unavailable: ${e.message}`;
    }
  }

  function loadPlots() {
    return Promise.all([...document.querySelectorAll("img[data-kind]")].map(loadPlot));
  }

  function showCurves(number) {
    curvesTrial = number;
    document.getElementById("curves-which").textContent = number === null ? "the best cell's trials" : `trial ${number}`;
    document.getElementById("curves-best").hidden = number === null;
    const png = document.getElementById("curves-png");
    png.setAttribute("href", `${base}/plots/curves?format=png${number === null ? "" : `&trial=${number}`}`);
    loadPlot(document.getElementById("plot-curves"));
  }

  async function refresh() {
    let detail;
    try {
      detail = await get(base);
    } catch (e) {
      document.getElementById("study-name").textContent =
        e.status === 404 ? "No such study (or not yours)" : `could not load the study: ${e.message}`;
      if (e.status !== 404) setTimeout(refresh, POLL_MS * 2);
      document.body.dataset.polling = "off";
      return;
    }
    renderDetail(detail);
    const done = detail.status === "complete" || detail.status === "cancelled";
    // the API's own counts: finished of total trials (a grown study has more)
    const progress = `${detail.progress.finished}/${detail.progress.total}`;
    const seen = `${detail.status}/${progress}`;
    if (!(done && seen === lastSeen)) {  // a finished study that has not changed: no more
      try {
        renderTrials(await get(`${base}/trials?curves=false&limit=1000`));
        if (progress !== lastProgress) {
          renderReport(await get(`${base}/report`));
          lastProgress = progress;
          await loadPlots();
        } else if (curvesTrial !== null) {
          loadPlot(document.getElementById("plot-curves")); // the chosen trial's epochs
        }
        lastSeen = seen;
      } catch (e) {
        status(`could not load the report: ${e.message}`);
      }
      updates += 1;
      document.body.dataset.updates = String(updates);
    }
    document.body.dataset.status = detail.status;
    document.body.dataset.polling = done ? "idle" : "on";
    setTimeout(refresh, done ? IDLE_POLL_MS : POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    samsweep.wireDownloads(base);
    document.getElementById("curves-best").addEventListener("click", () => showCurves(null));
    refresh();
  });
})();
