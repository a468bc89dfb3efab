// Panels around the map: top bar (jobs, retrain), tools, classes, layers, AOIs, retrain strategy, metrics,
// checkpoints, exports.
import { download, exportLinks, type StrategyName } from "./api";
import { actions, strategyTitle } from "./actions";
import { authEnabled, signedInName, signOut } from "./auth";
import { openCompare } from "./compare";
import { fitToAoi } from "./map";
import { activeJob, currentAoi, emit, labelCounts, on, state, type Tool } from "./state";
import { mountPatchPanel } from "./patches";
import { mountAoiUpload } from "./aoi_upload";
import { mountSharePanel } from "./share_panel";
import { toggleSuggestions } from "./suggestions";
import { $, esc, f2, pct, slug, timeAgo, toast } from "./ui";

const ICONS: Record<string, string> = {
  pan: '<path d="M8 13V5.5a1.5 1.5 0 0 1 3 0V12M11 11.5v-8a1.5 1.5 0 0 1 3 0V12M14 11.5V5.5a1.5 1.5 0 0 1 3 0V14M17 9.5a1.5 1.5 0 0 1 3 0V15a7 7 0 0 1-7 7h-1.5a7 7 0 0 1-5.6-2.8L3.3 15.7a1.6 1.6 0 0 1 2.4-2.1L8 16"/>',
  point: '<circle cx="12" cy="10" r="3"/><path d="M12 21s-7-6.2-7-11a7 7 0 0 1 14 0c0 4.8-7 11-7 11z"/>',
  polygon: '<path d="M5 7l7-4 7 5-2 10H7z"/><circle cx="5" cy="7" r="1.6"/><circle cx="12" cy="3" r="1.6"/><circle cx="19" cy="8" r="1.6"/><circle cx="17" cy="18" r="1.6"/><circle cx="7" cy="18" r="1.6"/>',
  erase: '<path d="M20 20H9L4 15a2 2 0 0 1 0-2.8L13.2 3a2 2 0 0 1 2.8 0L21 8a2 2 0 0 1 0 2.8L12 20"/><path d="M7 10l7 7"/>',
  aoi: '<path d="M4 8V4h4M16 4h4v4M20 16v4h-4M8 20H4v-4" /><path d="M9 12h6M12 9v6"/>',
  undo: '<path d="M9 14L4 9l5-5"/><path d="M4 9h10a6 6 0 0 1 0 12h-3"/>',
  patch: '<path d="M4 4h10v10H4z"/><path d="M10 10h10v10H10z" fill="currentColor" fill-opacity="0.35"/>',
};
const TOOLS: { tool: Tool; label: string; key: string }[] = [
  { tool: "pan", label: "Pan", key: "Esc" },
  { tool: "point", label: "Point", key: "P" },
  { tool: "polygon", label: "Polygon", key: "G" },
  { tool: "erase", label: "Erase", key: "E" },
  { tool: "aoi", label: "AOI", key: "A" },
  { tool: "patch", label: "Patch", key: "H" }, // patches.ts: fill a polygon of the map by hand
];

const icon = (name: string) =>
  `<svg viewBox="0 0 24 24" width="18" height="18" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round">${ICONS[name]}</svg>`;

export function mountPanels(): void {
  const left = $("#left");
  left.innerHTML = `
    <section class="panel"><h2>Tools</h2><div id="tools" class="tools"></div></section>
    <section class="panel grow"><h2>Classes <span class="hint">keys 1–9</span></h2>
      <ul id="classes" class="classes" data-testid="class-list"></ul>
      <div id="add-class"></div></section>
    <section class="panel"><h2>Layers</h2><div id="layers"></div></section>
    <section class="panel"><h2>Areas of interest</h2><div id="aois"></div><div id="aoi-upload"></div></section>`;
  const right = $("#right");
  right.innerHTML = `
    <section class="panel"><h2>Retrain strategy <span class="hint">from the next retrain</span></h2><div id="strategy" data-testid="strategy"><p class="empty">Loading…</p></div></section>
    <section class="panel"><h2>Model quality <span id="metrics-version" class="hint"></span></h2><div id="metrics" data-testid="metrics"></div></section>
    <section class="panel grow"><h2>Checkpoints</h2><div id="checkpoints" data-testid="checkpoints"></div></section>
    <section class="panel"><h2>Export</h2><div id="exports"></div></section>
    <section class="panel"><h2>Map patches <span class="hint">tool H</span></h2><div id="patch-panel" data-testid="patch-panel"></div></section>
    <section class="panel"><h2>Share <span class="hint">read-only link</span></h2><div id="share-panel" data-testid="share-panel"></div></section>`;
  bindEvents();
  on(["project", "jobs", "ws", "aoi", "suggestions"], renderTopbar);
  on(["tool"], renderTools);
  on(["project", "labels", "class"], renderClasses);
  on(["project", "layers"], renderLayers);
  on(["project", "aoi", "jobs"], renderAois);
  on(["strategy"], renderStrategy);
  on(["metrics"], renderMetrics);
  on(["checkpoints"], renderCheckpoints);
  on(["project", "aoi"], renderExports);
  mountSharePanel(); // share_panel.ts: owners make read-only links to AOI maps
  mountPatchPanel(); // patches.ts: the map patches in force, remove, undo, use as labels
  mountAoiUpload(); // aoi_upload.ts: AOIs from a GeoJSON, GeoPackage, KML or zipped Shapefile
  on(["project", "jobs", "tool", "aoi", "class"], renderStatus);
  on(["project", "aoi", "jobs"], renderBanner); // jobs: a partial layer says whether the rest is still running
  renderAddClass(false);
  renderTools();
}

// -- top bar and status bar -------------------------------------------------------------------------------------
function renderTopbar(): void {
  const project = state.project;
  const job = activeJob();
  const retraining = activeJob("retrain") ?? activeJob("restore");
  const model = project?.model;
  const modelChip = !model
    ? ""
    : model.ready
      ? `<span class="chip chip-ok" data-testid="model-status">model v${model.current_version ?? 0}</span>`
      : `<span class="chip chip-warn" data-testid="model-status">no model</span>`;
  $("#topbar").innerHTML = `
    <div class="brand"><span class="logo"></span>PEARL<span class="brand-sub">land-cover mapping</span></div>
    <a class="btn btn-small" href="/" data-testid="projects-link" title="All your projects">Projects</a>
    <div class="project-name" data-testid="project-name">${esc(project?.name ?? "…")}</div>
    ${modelChip}
    <span class="ws-dot ${state.wsConnected ? "on" : ""}" title="live updates ${state.wsConnected ? "connected" : "reconnecting"}" data-testid="ws-status" data-connected="${state.wsConnected}"></span>
    <div class="job ${job ? "busy" : ""}" data-testid="job-progress" data-kind="${job?.kind ?? ""}">
      ${job ? `<span class="job-text">${esc(job.message || job.kind + "…")}</span><span class="bar"><span style="width:${Math.round(job.progress * 100)}%"></span></span>` : ""}
    </div>
    <button class="btn" data-action="predict" data-testid="predict" ${currentAoi() && model?.ready ? "" : "disabled"} title="Run the model over the selected AOI">Predict AOI</button>
    ${suggestButton()}
    <button class="btn btn-primary ${retraining ? "working" : ""}" data-action="retrain" data-testid="retrain" ${model?.ready ? "" : "disabled"} title="Retrain on your labels (R)">
      ${retraining ? `<span class="spinner"></span>Retraining ${Math.round((retraining.progress || 0) * 100)}%` : "Retrain <kbd>R</kbd>"}
    </button>${userArea()}`;
}

/** Signed in with OIDC: who, and "Sign out" (nothing in local mode). */
function userArea(): string {
  const name = signedInName();
  if (name === null) return "";
  return `<div class="user"><span class="user-name" data-testid="user-name" title="signed in">${esc(name)}</span>
    <button class="btn btn-small" data-action="sign-out" data-testid="sign-out">Sign out</button></div>`;
}

function suggestButton(): string {
  const s = state.suggestions;
  // Enabled on a predicted AOI; once on, it stays clickable so the layer can always be switched off.
  const usable = (currentAoi()?.prediction && state.project?.model.ready) || s.on;
  const text = s.loading ? `<span class="spinner"></span>Finding places…` : s.on ? `Label here next · ${s.count}` : "Label here next";
  return `<button class="btn ${s.on ? "btn-on" : ""}" data-action="suggest" data-testid="suggest" aria-pressed="${s.on}" ${usable ? "" : "disabled"}
    title="Show the places where a label would help the model most; click one to label it with the selected class (N)">${text} <kbd>N</kbd></button>`;
}

function renderStatus(): void {
  const tips: Record<Tool, string> = {
    pan: "Drag to pan · click an AOI to select it",
    point: `Click to add a point of “${state.project?.classes.find((c) => c.name === state.selectedClass)?.title ?? ""}”`,
    polygon: "Click corners, double-click to finish",
    erase: "Click a label to erase it",
    aoi: `Click the corners of an area (≤ ${state.project?.live_aoi_max_km2 ?? 25} km²), double-click to finish`,
    patch: "Click the corners of a patch of the map, double-click to finish (Map patches: fill or checkpoint)",
  };
  const updated =
    state.lastUpdateSeconds !== null
      ? `<span class="status-item" data-testid="update-time">map updated ${state.lastUpdateSeconds.toFixed(2)} s after retrain</span>`
      : "";
  $("#statusbar").innerHTML = `
    <span class="status-item">${esc(tips[state.tool])}</span>${updated}
    <span class="status-keys"><kbd>1</kbd>–<kbd>9</kbd> class <kbd>P</kbd> point <kbd>G</kbd> polygon <kbd>E</kbd> erase <kbd>A</kbd> AOI <kbd>R</kbd> retrain <kbd>N</kbd> label here next <kbd>Ctrl</kbd>+<kbd>Z</kbd> undo</span>`;
}

function renderBanner(): void {
  const project = state.project;
  const banner = $("#banner");
  const problems: string[] = [];
  if (project && project.imagery.state === "building") problems.push("Preparing the imagery mosaic…");
  if (project && (project.imagery.state === "missing" || project.imagery.state === "error")) {
    problems.push(`Imagery not available: ${project.imagery.message}`);
  }
  if (project && !project.model.ready) problems.push(`No model: ${project.model.message || "loading…"}`);
  banner.hidden = problems.length === 0;
  banner.innerHTML = problems.map((p) => `<div>${esc(p)}</div>`).join("");
  banner.setAttribute("data-testid", "banner");
  const aoi = currentAoi();
  $("#legend").innerHTML = aoi?.prediction
    ? `<span class="chip" data-testid="prediction-version">${esc(aoi.name)} · prediction v${aoi.prediction.version} · model v${aoi.prediction.model_version ?? 0}</span>` +
      (aoi.prediction.partial
        ? ` <span class="chip" data-testid="prediction-partial" title="Only the part of the AOI that was in view is predicted so far">${
            activeJob("inference")?.aoi_id === aoi.id
              ? "the block in view · predicting the rest…"
              : activeJob("retrain") || activeJob("restore")
                ? "the block in view · re-predicting the rest…"
                : aoi.prediction.embeddings
                  ? "only the block in view (retrain again)"
                  : "only the block in view (predict the AOI again)"
          }</span>`
        : "")
    : "";
}

// -- tools --------------------------------------------------------------------------------------------------------
function renderTools(): void {
  $("#tools").innerHTML =
    TOOLS.map(
      (t) =>
        `<button class="tool ${state.tool === t.tool ? "active" : ""}" data-tool="${t.tool}" data-testid="tool-${t.tool}" title="${t.label} (${t.key})">${icon(t.tool)}<span>${t.label}</span><kbd>${t.key}</kbd></button>`,
    ).join("") +
    `<button class="tool" data-action="undo" data-testid="undo" title="Undo (Ctrl+Z)">${icon("undo")}<span>Undo</span><kbd>⌃Z</kbd></button>`;
}

// -- classes --------------------------------------------------------------------------------------------------------
function renderClasses(): void {
  const classes = state.project?.classes ?? [];
  const counts = labelCounts();
  $("#classes").innerHTML = classes
    .map(
      (c, i) => `
      <li class="class ${c.name === state.selectedClass ? "selected" : ""}" data-class="${esc(c.name)}" data-testid="class-${esc(c.name)}">
        <span class="key">${i < 9 ? i + 1 : ""}</span>
        <label class="swatch" style="background:${esc(c.color)}" title="Recolour"><input type="color" value="${esc(c.color)}" data-recolor="${esc(c.name)}"></label>
        <span class="class-title" title="${esc(c.name)}">${esc(c.title)}</span>
        <button class="icon-btn rename" data-rename="${esc(c.name)}" data-testid="rename-btn-${esc(c.name)}" title="Rename">✎</button>
        <span class="count" data-testid="count-${esc(c.name)}">${counts.get(c.name) ?? 0}</span>
      </li>`,
    )
    .join("");
}

function renderAddClass(open: boolean): void {
  const box = $("#add-class");
  box.innerHTML = open
    ? `<form class="add-class-form" data-testid="add-class-form">
        <input name="title" placeholder="Class name, e.g. Solar panels" required maxlength="60" data-testid="new-class-name" autocomplete="off">
        <input name="color" type="color" value="#f97316" data-testid="new-class-color">
        <button class="btn btn-small btn-primary" type="submit" data-testid="new-class-submit">Add</button>
        <button class="btn btn-small" type="button" data-action="cancel-class">✕</button>
      </form>`
    : `<button class="btn btn-ghost btn-block" data-action="add-class" data-testid="add-class">+ Add class</button>`;
  if (open) (box.querySelector("input[name=title]") as HTMLInputElement).focus();
}

// -- layers ---------------------------------------------------------------------------------------------------------
function renderLayers(): void {
  const l = state.layers;
  const radio = (value: string, label: string) =>
    `<label class="seg ${l.imagery === value ? "on" : ""}" data-testid="imagery-${value}"><input type="radio" name="imagery" value="${value}" ${l.imagery === value ? "checked" : ""}>${label}</label>`;
  $("#layers").innerHTML = `
    <div class="row"><span class="row-label">Imagery</span><div class="segmented">${radio("true_color", "True colour")}${radio("false_color", "NIR")}${radio("off", "Off")}</div></div>
    <div class="row"><label class="check"><input type="checkbox" data-layer="predictions" ${l.predictions ? "checked" : ""} data-testid="layer-predictions">Predictions</label>
      <input type="range" min="0" max="1" step="0.05" value="${l.predictionOpacity}" data-opacity="predictionOpacity" data-testid="prediction-opacity" title="Opacity"></div>
    <div class="row"><label class="check"><input type="checkbox" data-layer="confidence" ${l.confidence ? "checked" : ""} data-testid="layer-confidence">Uncertainty</label>
      <input type="range" min="0" max="1" step="0.05" value="${l.confidenceOpacity}" data-opacity="confidenceOpacity" title="Opacity"></div>
    <div class="row"><label class="check"><input type="checkbox" data-layer="labels" ${l.labels ? "checked" : ""}>Labels</label></div>`;
}

// -- AOIs -------------------------------------------------------------------------------------------------------------
function renderAois(): void {
  const aois = state.project?.aois ?? [];
  const running = activeJob("inference");
  $("#aois").innerHTML = aois.length
    ? `<ul class="aoi-list" data-testid="aoi-list">${aois
        .map(
          (a) => `<li class="aoi ${a.id === state.aoiId ? "selected" : ""}" data-aoi="${a.id}" data-testid="aoi-${a.id}">
          <span class="aoi-name">${esc(a.name)}</span><span class="hint">${a.area_km2.toFixed(2)} km²</span>
          <span class="aoi-state">${running?.aoi_id === a.id ? "predicting…" : a.prediction ? `v${a.prediction.version}${a.prediction.partial ? " (partial)" : ""}` : "not predicted"}</span></li>`,
        )
        .join("")}</ul>`
    : `<p class="empty">No AOI yet. Press <kbd>A</kbd> and click the corners of the area to map, or upload a file of polygons.</p>`;
}

// -- retrain strategy: how the next retrains fit their head (GET/PUT /strategy) --------------------------------------
function renderStrategy(): void {
  const s = state.strategy;
  if (!s) {
    $("#strategy").innerHTML = `<p class="empty" data-testid="strategy-unavailable">The retrain strategy could not be loaded.</p>`;
    return;
  }
  const selected = state.strategyPending ?? s.strategy;
  const description = (name: string) => s.available.find((o) => o.name === name)?.description ?? "";
  const options = s.available
    .map(
      (o) =>
        `<option value="${esc(o.name)}" title="${esc(o.description)}" ${o.name === selected ? "selected" : ""}>${esc(strategyTitle(o.name))}</option>`,
    )
    .join("");
  $("#strategy").innerHTML = `
    <div class="row strategy-row"><label class="row-label" for="strategy-select">Head</label>
      <select id="strategy-select" data-strategy data-testid="strategy-select" data-stored="${esc(s.strategy)}" title="${esc(description(selected))}" ${state.strategyPending ? "disabled" : ""}>${options}</select>
      ${state.strategyPending ? `<span class="spinner" title="saving…"></span>` : ""}</div>
    <p class="strategy-help" data-testid="strategy-help">${esc(description(selected))}</p>`;
}

// -- metrics -----------------------------------------------------------------------------------------------------------
function renderMetrics(): void {
  const m = state.metrics;
  $("#metrics-version").textContent = m?.model_version !== null && m?.model_version !== undefined ? `model v${m.model_version}` : "";
  if (!m || !m.per_class.length) {
    $("#metrics").innerHTML = `<p class="empty" data-testid="metrics-empty">${esc(m?.message || "Add labels of two classes or more, then retrain.")}</p>`;
    return;
  }
  const color = (name: string) => state.project?.classes.find((c) => c.name === name)?.color ?? "#888";
  const title = (name: string) => state.project?.classes.find((c) => c.name === name)?.title ?? name;
  const bars = m.per_class
    .map(
      (c) => `<div class="f1-row" data-testid="f1-${esc(c.name)}" data-f1="${c.f1 ?? ""}">
        <span class="f1-name" title="${esc(c.name)}">${esc(title(c.name))}</span>
        <span class="f1-bar"><span style="width:${Math.round((c.f1 ?? 0) * 100)}%;background:${esc(color(c.name))}"></span></span>
        <span class="f1-value">${f2(c.f1)}</span></div>`,
    )
    .join("");
  const max = Math.max(1, ...m.confusion.flat());
  const abbrev = (name: string) => esc(title(name).slice(0, 3));
  const columns = m.columns?.length ? m.columns : m.classes;
  const matrix = `<table class="confusion" data-testid="confusion"><thead><tr><th title="labelled \\ predicted">l\\p</th>${columns
    .map((c) => `<th title="${esc(title(c))}"><span class="dot" style="background:${esc(color(c))}"></span>${abbrev(c)}</th>`)
    .join("")}</tr></thead><tbody>${m.confusion
    .map(
      (row, i) =>
        `<tr><th title="${esc(title(m.classes[i]))}"><span class="dot" style="background:${esc(color(m.classes[i]))}"></span>${abbrev(m.classes[i])}</th>${row
          .map((v, j) => `<td class="${m.classes[i] === columns[j] ? "diag" : v ? "off" : ""}" style="--a:${(v / max).toFixed(2)}">${v}</td>`)
          .join("")}</tr>`,
    )
    .join("")}</tbody></table>`;
  $("#metrics").innerHTML = `
    <div class="kpis"><div class="kpi"><span class="kpi-value" data-testid="mean-f1">${f2(m.mean_f1)}</span><span class="kpi-label">mean F1</span></div>
      <div class="kpi"><span class="kpi-value">${pct(m.accuracy)}</span><span class="kpi-label">accuracy</span></div>
      <div class="kpi"><span class="kpi-value">${m.n_labels || "–"}</span><span class="kpi-label">labels</span></div></div>
    <div class="f1-bars">${bars}</div>
    <div class="subhead">Confusion matrix <span class="hint">rows: labelled · columns: predicted (pixels)</span></div><div class="confusion-wrap">${matrix}</div>
    <p class="method" title="${esc(m.message)}">${esc(m.method.replace("grouped_cv:", "grouped CV, folds: "))}</p>`;
}

// -- checkpoints -------------------------------------------------------------------------------------------------------
function renderCheckpoints(): void {
  const rows = state.checkpoints
    .map(
      (c) => `<li class="ckpt ${c.current ? "current" : ""}" data-testid="checkpoint-${c.id}">
        <label class="ckpt-compare" title="Select two to compare"><input type="checkbox" data-compare="${c.id}" ${state.compareIds.includes(c.id) ? "checked" : ""}></label>
        <div class="ckpt-main"><span class="ckpt-name">${esc(c.name ?? `v${c.id} (unsaved)`)}</span>
          <span class="hint">v${c.id} · ${c.kind === "base" ? "starter" : `${c.n_labels} labels`} · ${timeAgo(c.created_at)}${c.mlflow_version ? ` · MLflow v${esc(c.mlflow_version)}` : ""}</span></div>
        <span class="ckpt-f1" title="mean F1">${f2(c.mean_f1)}</span>
        ${c.current ? `<span class="chip chip-ok">current</span>` : `<button class="btn btn-small" data-restore="${c.id}" data-testid="restore-${c.id}">Restore</button>`}
      </li>`,
    )
    .join("");
  const cmp = state.compare;
  const title = (name: string) => state.project?.classes.find((c) => c.name === name)?.title ?? name.replaceAll("_", " ");
  const label = (c: { id: number; name: string | null }) => esc(c.name ?? `v${c.id}`);
  const compare = cmp
    ? `<table class="compare" data-testid="compare">
        <caption>F1 per class · <b>A</b> ${label(cmp.a)} · <b>B</b> ${label(cmp.b)}</caption>
        <thead><tr><th>class</th><th title="${label(cmp.a)}">A · v${cmp.a.id}</th><th title="${label(cmp.b)}">B · v${cmp.b.id}</th><th>Δ</th></tr></thead><tbody>${cmp.rows
          .map(
            (r) =>
              `<tr><td>${esc(title(r.class_name))}</td><td>${f2(r.f1_a)}</td><td>${f2(r.f1_b)}</td><td class="${(r.delta ?? 0) > 0 ? "up" : (r.delta ?? 0) < 0 ? "down" : ""}">${r.delta === null ? "–" : (r.delta > 0 ? "+" : "") + r.delta.toFixed(2)}</td></tr>`,
          )
          .join("")}</tbody></table>`
    : state.compareIds.length === 1
      ? `<p class="hint">Tick one more checkpoint to compare.</p>`
      : "";
  $("#checkpoints").innerHTML = `
    <form class="save-ckpt" data-testid="save-checkpoint-form"><input name="name" placeholder="Name the current model…" maxlength="80" required data-testid="checkpoint-name" autocomplete="off"><button class="btn btn-small btn-primary" type="submit" data-testid="save-checkpoint">Save</button></form>
    <ul class="ckpts">${rows || `<li class="empty">No model yet.</li>`}</ul>${compare}
    <button class="btn btn-small btn-block" data-action="compare-maps" data-testid="compare-maps" title="Two versions as maps: swipe between them, or see what changed class">Compare maps</button>`;
}

// -- exports --------------------------------------------------------------------------------------------------------------
function renderExports(): void {
  const links = exportLinks(state.projectId, currentAoi()?.prediction ? state.aoiId : null);
  const a = (href: string | null, label: string, testid: string) =>
    href ? `<a class="btn btn-small" href="${href}" download data-testid="${testid}">${label}</a>` : `<span class="btn btn-small disabled" title="Predict an AOI first">${label}</span>`;
  $("#exports").innerHTML = `<div class="exports">
    ${a(links.labelsGeojson, "Labels GeoJSON", "export-geojson")}${a(links.labelsGpkg, "Labels GeoPackage", "export-gpkg")}
    ${a(links.classesCog, "Map (COG)", "export-cog")}${a(links.areasCsv, "Class areas (CSV)", "export-csv")}</div>`;
}

// -- events ---------------------------------------------------------------------------------------------------------------
function bindEvents(): void {
  document.addEventListener("click", (e) => {
    const target = e.target as HTMLElement;
    const link = target.closest<HTMLAnchorElement>("a[download]");
    if (link && authEnabled()) {
      // A plain link cannot carry the access token: fetch it, then save it.
      e.preventDefault();
      return void download(link.getAttribute("href")!).catch((error) => toast(`Export failed: ${error.message}`, "error", 7000));
    }
    const el = target.closest<HTMLElement>("[data-action],[data-tool],[data-class],[data-aoi],[data-restore],[data-rename]");
    if (!el || (el as HTMLButtonElement).disabled) return;
    if (el.dataset.tool) return actions.setTool(el.dataset.tool as Tool);
    if (el.dataset.restore) return void actions.restore(Number(el.dataset.restore));
    if (el.dataset.rename) return renameClass(el.dataset.rename);
    if (target.classList.contains("rename-input")) return;
    if (el.dataset.class && !target.closest(".swatch")) return actions.selectClass(el.dataset.class);
    if (el.dataset.aoi) {
      actions.selectAoi(Number(el.dataset.aoi));
      const aoi = currentAoi();
      if (aoi) fitToAoi(aoi);
      return;
    }
    switch (el.dataset.action) {
      case "retrain":
        return void actions.retrain();
      case "predict":
        return void actions.runInference();
      case "suggest":
        return void toggleSuggestions();
      case "undo":
        return void actions.undo();
      case "add-class":
        return renderAddClass(true);
      case "cancel-class":
        return renderAddClass(false);
      case "sign-out":
        return void signOut();
      case "compare-maps": // compare.ts: two versions as maps
        return void openCompare();
    }
  });
  document.addEventListener("change", (e) => {
    const input = e.target as HTMLInputElement;
    if (input.dataset.recolor) return void actions.updateClass(input.dataset.recolor, { color: input.value });
    if (input.name === "imagery") {
      state.layers.imagery = input.value as typeof state.layers.imagery;
      return emit("layers");
    }
    if (input.dataset.layer) {
      (state.layers as unknown as Record<string, boolean>)[input.dataset.layer] = input.checked;
      return emit("layers", input.dataset.layer === "labels" ? "labels" : "layers");
    }
    if (input.dataset.compare) return void actions.toggleCompare(Number(input.dataset.compare));
    if (input.dataset.strategy !== undefined) return void actions.setStrategy(input.value as StrategyName);
  });
  document.addEventListener("input", (e) => {
    const input = e.target as HTMLInputElement;
    if (input.dataset.opacity) {
      (state.layers as unknown as Record<string, number>)[input.dataset.opacity] = Number(input.value);
      emit("layers");
    }
  });
  document.addEventListener("submit", async (e) => {
    const form = e.target as HTMLFormElement;
    e.preventDefault();
    const data = new FormData(form);
    if (form.classList.contains("add-class-form")) {
      const title = String(data.get("title") ?? "").trim();
      if (await actions.addClass(slug(title), String(data.get("color")), title)) renderAddClass(false);
    } else if (form.classList.contains("save-ckpt")) {
      await actions.saveCheckpoint(String(data.get("name") ?? "").trim());
    }
  });
}

function renameClass(name: string): void {
  // Inline: the title becomes an input; Enter (or leaving it) saves, Esc cancels.
  const row = document.querySelector<HTMLElement>(`[data-class="${CSS.escape(name)}"]`);
  const span = row?.querySelector<HTMLElement>(".class-title");
  const current = state.project?.classes.find((c) => c.name === name);
  if (!row || !span || !current) return;
  const input = document.createElement("input");
  input.className = "rename-input";
  input.value = current.title;
  input.maxLength = 60;
  input.setAttribute("data-testid", `rename-${name}`);
  span.replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save: boolean) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== current.title) {
      void actions.updateClass(name, { title, name: slug(title) !== name ? slug(title) : undefined });
    } else renderClasses();
  };
  input.addEventListener("keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  input.addEventListener("click", (e) => e.stopPropagation());
}
