// Compare two versions as maps: a swipe view (two MapLibre maps kept on one camera, B's clipped to the right of a
// divider the mapper drags) and a change view (pixels whose class differs, coloured by the new class) with the
// from -> to area table. Map B may be another AOI of the same place (another date's imagery): their overlap is compared.
// A version's map that is not kept yet is made by a `compare` job (the version's head over the AOI's cached
// embeddings); the server keeps it, so the next compare of it is instant.
import * as maplibregl from "maplibre-gl";
import "./compare.css";
import {
  ApiError,
  api,
  compareApi,
  type Aoi,
  type Checkpoint,
  type CompareMaps,
  type CompareMapsRequest,
  type ProjectSummary,
} from "./api";
import { withAccessToken } from "./auth";
import { state } from "./state";
import { $, esc } from "./ui";

type Mode = "swipe" | "change";

const view = {
  open: false,
  mode: "swipe" as Mode,
  versions: [] as Checkpoint[],
  projects: [] as ProjectSummary[], // B may be of another project (the same place on imagery of another date)
  bAois: [] as Aoi[], // the AOIs and versions of B's project when it is another one
  bVersions: [] as Checkpoint[],
  request: null as CompareMapsRequest | null,
  result: null as CompareMaps | null,
  busy: "", // what is running (a job's message), or ""
  error: "",
  split: 0.5, // the divider's place, as a share of the map's width
};
let mapA: maplibregl.Map | null = null;
let mapB: maplibregl.Map | null = null;
let run = 0; // the latest request: answers of older ones are dropped

const absolute = (path: string) => new URL(path, window.location.href).toString();

/** Open the compare mode over the map (the "Compare maps" button of the checkpoints panel). */
export async function openCompare(): Promise<void> {
  if (view.open || !state.project) return;
  const aois = predictedAois();
  view.open = true;
  view.error = aois.length ? "" : "Predict an AOI first: a version's map is made over an AOI.";
  view.result = null;
  view.versions = await compareApi.versions(state.projectId).catch(() => state.checkpoints);
  view.projects = await api.projects().catch(() => []);
  const ids = view.versions.map((v) => v.id).sort((x, y) => y - x); // newest first
  const current = state.project.model.current_version ?? ids[0] ?? 0;
  const aoi = aois.find((a) => a.id === state.aoiId)?.id ?? aois[0]?.id ?? 0;
  view.request = { aoi, a: ids.find((id) => id !== current) ?? current, b: current, aoi_b: null, project_b: null };
  render();
  if (aois.length) await refresh();
}

export function closeCompare(): void {
  view.open = false;
  run += 1;
  mapA?.remove();
  mapB?.remove();
  mapA = mapB = null;
  document.getElementById("compare")?.remove();
}

function predictedAois(other = false) {
  return (other ? view.bAois : (state.project?.aois ?? [])).filter((a) => a.prediction);
}

/** B's project picked: its AOIs and versions; B becomes its current version of its first predicted AOI. */
async function pickProjectB(id: number | null): Promise<void> {
  if (!view.request) return;
  if (id === null || id === state.projectId) {
    view.bAois = [];
    view.bVersions = [];
    view.request = { ...view.request, project_b: null, aoi_b: null, b: state.project?.model.current_version ?? 0 };
    return refresh();
  }
  const [aois, versions] = await Promise.all([compareApi.aois(id), compareApi.versions(id)]);
  view.bAois = aois;
  view.bVersions = versions;
  const first = predictedAois(true)[0];
  const current = versions.find((v) => v.current)?.id ?? versions[0]?.id ?? 0;
  view.request = { ...view.request, project_b: id, aoi_b: first?.id ?? null, b: current };
  if (!first) {
    view.result = null;
    view.error = "That project has no predicted AOI: predict one there first.";
    showResult();
    return renderSide();
  }
  return refresh();
}

// -- the change: ask for it, make the maps first when they are not kept ---------------------------------------
async function refresh(): Promise<void> {
  const request = view.request;
  if (!request) return;
  const mine = ++run;
  view.error = "";
  view.busy = "Comparing…";
  renderSide();
  try {
    let result: CompareMaps;
    try {
      result = await compareApi.change(state.projectId, request);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 409) throw error;
      await makeMaps(request, mine); // a version's map is not kept yet
      result = await compareApi.change(state.projectId, request);
    }
    if (mine !== run) return;
    view.result = result;
    view.busy = "";
    showResult();
  } catch (error) {
    if (mine !== run) return;
    view.busy = "";
    view.result = null;
    view.error = error instanceof Error ? error.message : String(error);
    showResult();
  }
  renderSide();
}

async function makeMaps(request: CompareMapsRequest, mine: number): Promise<void> {
  let job = await compareApi.prepare(state.projectId, request);
  while (job.state === "queued" || job.state === "running") {
    if (mine !== run) return;
    view.busy = `${job.message || "Making the versions' maps…"} ${Math.round(job.progress * 100)}%`;
    renderSide();
    await new Promise((resolve) => setTimeout(resolve, 400));
    job = await compareApi.job(job.id);
  }
  if (job.state === "failed") throw new Error(job.error ?? "the versions' maps could not be made");
}

// -- DOM -------------------------------------------------------------------------------------------------------
function render(): void {
  document.getElementById("compare")?.remove();
  const box = document.createElement("div");
  box.id = "compare";
  box.setAttribute("data-testid", "compare-mode");
  box.innerHTML = `
    <div class="cmp-maps"><div id="compare-a" class="cmp-map"></div><div id="compare-b" class="cmp-map cmp-map-b"></div>
      <div class="cmp-divider" data-testid="compare-divider"><span class="cmp-handle" title="Drag to swipe">⇔</span></div>
      <span class="cmp-tag cmp-tag-a" data-testid="compare-tag-a"></span><span class="cmp-tag cmp-tag-b" data-testid="compare-tag-b"></span></div>
    <aside class="cmp-side panel" data-testid="compare-panel"></aside>`;
  $("#map-wrap").appendChild(box);
  bindDivider(box.querySelector<HTMLElement>(".cmp-divider")!);
  box.addEventListener("change", onPick);
  box.addEventListener("click", onClick);
  renderSide();
}

function versionOptions(selected: number, other = false): string {
  return (other ? view.bVersions : view.versions)
    .map((v) => {
      const name = v.name ? ` · ${v.name}` : v.kind === "base" ? " · starter" : "";
      return `<option value="${v.id}" ${v.id === selected ? "selected" : ""}>v${v.id}${esc(name)}${v.current ? " (current)" : ""}</option>`;
    })
    .join("");
}

function aoiOptions(selected: number, none?: string, other = false): string {
  const options = predictedAois(other).map(
    (a) => `<option value="${a.id}" ${a.id === selected ? "selected" : ""}>${esc(a.name)}</option>`,
  );
  return (none !== undefined ? [`<option value="">${esc(none)}</option>`] : []).concat(options).join("");
}

function renderSide(): void {
  const side = document.querySelector<HTMLElement>("#compare .cmp-side");
  const q = view.request;
  if (!side || !q) return;
  const other = !!q.project_b && q.project_b !== state.projectId;
  const seg = (mode: Mode, label: string) =>
    `<button class="seg ${view.mode === mode ? "on" : ""}" data-cmp-mode="${mode}" data-testid="compare-mode-${mode}" aria-pressed="${view.mode === mode}">${label}</button>`;
  side.innerHTML = `
    <div class="cmp-head"><h2>Compare maps</h2><button class="btn btn-small" data-cmp-exit data-testid="compare-exit">Exit</button></div>
    <label class="cmp-row"><span class="row-label">AOI</span><select data-cmp="aoi" data-testid="compare-aoi">${aoiOptions(q.aoi)}</select></label>
    <label class="cmp-row"><span class="row-label">A</span><select data-cmp="a" data-testid="compare-a">${versionOptions(q.a)}</select></label>
    <label class="cmp-row"><span class="row-label">B</span><select data-cmp="b" data-testid="compare-b">${versionOptions(q.b, other)}</select></label>
    ${projectPicker()}
    <label class="cmp-row" title="Another AOI of the same place, e.g. mapped on imagery of another date: their overlap is compared"><span class="row-label">B's AOI</span>
      <select data-cmp="aoi_b" data-testid="compare-aoi-b">${aoiOptions(q.aoi_b ?? 0, other ? undefined : "the same AOI", other)}</select></label>
    <div class="segmented cmp-modes">${seg("swipe", "Swipe")}${seg("change", "Changes")}</div>
    ${view.busy ? `<p class="cmp-busy" data-testid="compare-busy"><span class="spinner"></span>${esc(view.busy)}</p>` : ""}
    ${view.error ? `<p class="cmp-error" data-testid="compare-error">${esc(view.error)}</p>` : ""}
    ${view.result ? table(view.result) : ""}`;
}

/** B's project: this one, or another of the caller's (a project per imagery date of the same place). */
function projectPicker(): string {
  if (view.projects.length < 2) return "";
  const selected = view.request?.project_b ?? state.projectId;
  const options = view.projects
    .map((p) => `<option value="${p.id}" ${p.id === selected ? "selected" : ""}>${p.id === state.projectId ? "this project" : esc(p.name)}</option>`)
    .join("");
  return `<label class="cmp-row" title="Map B from another project of the same place, e.g. on imagery of another date"><span class="row-label">B's project</span>
    <select data-cmp-project data-testid="compare-project-b">${options}</select></label>`;
}

function classInfo(name: string): { title: string; color: string } {
  const c = state.project?.classes.find((k) => k.name === name);
  return { title: c?.title ?? name.replaceAll("_", " "), color: c?.color ?? "#888" };
}

function table(r: CompareMaps): string {
  const cls = (name: string) => {
    const c = classInfo(name);
    return `<span class="dot" style="background:${esc(c.color)}"></span>${esc(c.title)}`;
  };
  const rows = r.rows
    .map(
      (row) =>
        `<tr data-testid="change-row"><td>${cls(row.from_class)}</td><td>→</td><td>${cls(row.to_class)}</td><td class="num">${row.hectares.toFixed(2)}</td></tr>`,
    )
    .join("");
  const share = r.compared_hectares ? ` (${((100 * r.changed_hectares) / r.compared_hectares).toFixed(1)}%)` : "";
  return `<table class="cmp-table" data-testid="change-table">
    <caption>v${r.a} → v${r.b}${r.aoi_b !== r.aoi ? ` · AOIs ${r.aoi} → ${r.aoi_b} (overlap)` : ""} · hectares</caption>
    <thead><tr><th>from</th><th></th><th>to</th><th class="num">ha</th></tr></thead>
    <tbody>${rows || `<tr><td colspan="4" class="empty">No pixel changed class.</td></tr>`}</tbody>
    <tfoot><tr data-testid="changed-total"><th colspan="3">changed${share}</th><td class="num">${r.changed_hectares.toFixed(2)}</td></tr>
      <tr data-testid="unchanged-total"><th colspan="3">unchanged</th><td class="num">${r.unchanged_hectares.toFixed(2)}</td></tr></tfoot></table>`;
}

function onPick(e: Event): void {
  const input = e.target as HTMLSelectElement;
  if (input.dataset.cmpProject !== undefined) return void pickProjectB(Number(input.value));
  const field = input.dataset.cmp as keyof CompareMapsRequest | undefined;
  if (!field || !view.request) return;
  const value = input.value === "" ? null : Number(input.value);
  view.request = { ...view.request, [field]: value };
  void refresh();
}

function onClick(e: Event): void {
  const el = (e.target as HTMLElement).closest<HTMLElement>("[data-cmp-mode],[data-cmp-exit]");
  if (!el) return;
  if (el.dataset.cmpExit !== undefined) return closeCompare();
  view.mode = el.dataset.cmpMode as Mode;
  renderSide();
  showResult();
}

// -- the maps ----------------------------------------------------------------------------------------------------
function newMap(container: string, interactive: boolean): maplibregl.Map {
  const map = new maplibregl.Map({
    container,
    style: { version: 8, sources: {}, layers: [{ id: "background", type: "background", paint: { "background-color": "#0b1120" } }] },
    interactive,
    attributionControl: false,
    maxZoom: 21,
    transformRequest: (url) => ({ url: withAccessToken(url) }),
  });
  return map;
}

function ensureMaps(): void {
  if (mapA && mapB) return;
  mapA = newMap("compare-a", true);
  mapB = newMap("compare-b", false); // follows A's camera; A takes every gesture
  mapA.addControl(new maplibregl.NavigationControl({ showCompass: false }), "bottom-left");
  const follow = () => mapB?.jumpTo({ center: mapA!.getCenter(), zoom: mapA!.getZoom(), bearing: mapA!.getBearing() });
  mapA.on("move", follow);
  (window as unknown as { __pearlCompare: unknown }).__pearlCompare = { view, maps: () => ({ a: mapA, b: mapB }) };
}

/** Key of the class colours: part of the tile URLs, so a recolour refetches (tiles are cached). */
function palette(): string {
  const colors = (state.project?.classes ?? []).map((c) => c.color).join("");
  let hash = 0;
  for (let i = 0; i < colors.length; i++) hash = (hash * 31 + colors.charCodeAt(i)) >>> 0;
  return hash.toString(36);
}

function setRaster(map: maplibregl.Map, id: string, url: string | null, visible = true): void {
  const apply = () => {
    const source = map.getSource(id);
    const wanted = url ? absolute(url) : null;
    if (source && (!wanted || map.getLayer(id)?.metadata !== wanted)) {
      map.removeLayer(id);
      map.removeSource(id);
    }
    if (wanted && !map.getSource(id)) {
      map.addSource(id, { type: "raster", url: wanted, tileSize: 512 });
      map.addLayer({
        id,
        type: "raster",
        source: id,
        metadata: wanted,
        paint: { "raster-resampling": id === "imagery" ? "linear" : "nearest", "raster-fade-duration": 0 },
      });
    }
    if (map.getLayer(id)) map.setLayoutProperty(id, "visibility", visible ? "visible" : "none");
  };
  if (map.isStyleLoaded()) apply();
  else map.once("load", apply);
}

function showResult(): void {
  const box = document.getElementById("compare");
  if (!box) return;
  const r = view.result;
  box.dataset.mode = view.mode;
  box.dataset.ready = r ? "true" : "false";
  if (!r) return;
  ensureMaps();
  const imagery = state.project?.imagery.tilejson?.true_color ?? null;
  const key = `&palette=${palette()}`;
  for (const map of [mapA!, mapB!]) setRaster(map, "imagery", imagery);
  setRaster(mapA!, "version", r.tilejson_a + key, view.mode === "swipe");
  setRaster(mapA!, "change", r.tilejson_change + key, view.mode === "change");
  setRaster(mapB!, "version", r.tilejson_b + key);
  const name = (id: number, other = false) => (other ? view.bVersions : view.versions).find((v) => v.id === id)?.name;
  const other = r.project_b !== state.projectId;
  const nameB = name(r.b, other);
  $("#compare .cmp-tag-a").textContent = view.mode === "swipe" ? `A · v${r.a}${name(r.a) ? ` · ${name(r.a)}` : ""}` : `changes v${r.a} → v${r.b}`;
  $("#compare .cmp-tag-b").textContent = `B · ${other ? `project ${r.project_b} · ` : ""}v${r.b}${nameB ? ` · ${nameB}` : ""}`;
  const [w, s, e, n] = r.bounds;
  const key2 = r.bounds.join(",");
  if (box.dataset.bounds !== key2) {
    box.dataset.bounds = key2;
    mapA!.fitBounds([[w, s], [e, n]], { padding: 40, animate: false });
  }
  placeDivider();
}

// -- the swipe divider ---------------------------------------------------------------------------------------------
function placeDivider(): void {
  const box = document.getElementById("compare");
  const maps = box?.querySelector<HTMLElement>(".cmp-maps");
  if (!box || !maps) return;
  const width = maps.clientWidth;
  const x = Math.round(width * view.split);
  const b = box.querySelector<HTMLElement>(".cmp-map-b")!;
  b.style.clipPath = view.mode === "swipe" ? `inset(0 0 0 ${x}px)` : "inset(0 0 0 100%)";
  const divider = box.querySelector<HTMLElement>(".cmp-divider")!;
  divider.style.left = `${x}px`;
  divider.hidden = view.mode !== "swipe";
  box.querySelector<HTMLElement>(".cmp-tag-b")!.hidden = view.mode !== "swipe";
  maps.dataset.split = view.split.toFixed(3);
}

function bindDivider(divider: HTMLElement): void {
  divider.addEventListener("pointerdown", (e) => {
    divider.setPointerCapture(e.pointerId);
    const maps = divider.parentElement!;
    const move = (ev: PointerEvent) => {
      const rect = maps.getBoundingClientRect();
      view.split = Math.min(1, Math.max(0, (ev.clientX - rect.left) / rect.width));
      placeDivider();
    };
    const up = () => {
      divider.removeEventListener("pointermove", move);
      divider.removeEventListener("pointerup", up);
    };
    divider.addEventListener("pointermove", move);
    divider.addEventListener("pointerup", up);
    e.preventDefault();
  });
  window.addEventListener("resize", () => view.open && placeDivider());
}
