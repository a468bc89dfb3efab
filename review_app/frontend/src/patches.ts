// Map patches: the "Patch" tool (H) draws a polygon that fills the map with the selected class, or paints in another
// checkpoint's map; the "Map patches" section lists the patches in force (remove, use as labels) and undoes the last
// change. The server re-applies the patches to the maps they cover as a job; the new layer arrives on the websocket.
import type * as maplibregl from "maplibre-gl";
import { patchApi, type Geometry, type Job, type PatchChange, type PatchOut } from "./api";
import "./patches.css";
import { classColor, emit, on, state } from "./state";
import { $, esc, timeAgo, toast } from "./ui";

type Mode = "fill" | "checkpoint";

let patches: PatchOut[] = [];
let mode: Mode = "fill";
let checkpoint: number | null = null; // the version painted in (checkpoint mode)
let map: maplibregl.Map | null = null;

const EMPTY = { type: "FeatureCollection", features: [] } as GeoJSON.FeatureCollection;

export function mountPatchPanel(): void {
  on(["project", "class", "checkpoints", "tool"], render);
  $("#patch-panel").addEventListener("click", onClick);
  $("#patch-panel").addEventListener("change", onChange);
  void load();
}

/** Dashed outlines of the patches in force, over the map (below the labels). */
export function mountPatchLayer(m: maplibregl.Map): void {
  map = m;
  const add = () => {
    if (m.getSource("patches")) return;
    m.addSource("patches", { type: "geojson", data: EMPTY });
    m.addLayer(
      {
        id: "patch-line",
        type: "line",
        source: "patches",
        paint: { "line-color": "#ffffff", "line-width": 1.5, "line-dasharray": [2, 1] }, // over any class colour
      },
      m.getLayer("label-halo") ? "label-halo" : undefined,
    );
    syncLayer();
  };
  if (m.loaded()) add();
  else m.on("load", add);
}

/** The colour a new patch is drawn with: the class it fills, or white for a checkpoint's map. */
export function patchColor(): string {
  return mode === "fill" ? classColor(state.selectedClass) : "#ffffff";
}

export function patchDescription(): string {
  if (mode === "checkpoint") return `a patch painting ${versionName(checkpoint)}'s map`;
  const title = state.project?.classes.find((c) => c.name === state.selectedClass)?.title ?? state.selectedClass;
  return `a patch filled with “${title}”`;
}

async function load(): Promise<void> {
  if (!state.projectId) return;
  try {
    patches = await patchApi.list(state.projectId);
  } catch (error) {
    toast(`Could not load the map patches: ${error}`, "error", 7000);
  }
  render();
  syncLayer();
}

/** Store a patch of the drawn polygon (the map's Patch tool calls this); the maps change when its job is done. */
export async function addPatch(geometry: Geometry): Promise<void> {
  if (mode === "fill" && !state.selectedClass) return toast("Pick the class to fill with first (keys 1-9)", "info");
  if (mode === "checkpoint" && checkpoint === null) return toast("Pick the checkpoint to paint from first", "info");
  const body =
    mode === "fill"
      ? { kind: "fill" as const, geometry, class_name: state.selectedClass, crs: "EPSG:4326" }
      : { kind: "checkpoint" as const, geometry, checkpoint, crs: "EPSG:4326" };
  const change = await changed(() => patchApi.create(state.projectId, body));
  if (change?.patch) toast(`Patch ${change.patch.id} added: the map updates in a moment`, "success", 3000);
}

async function changed(call: () => Promise<PatchChange>): Promise<PatchChange | null> {
  try {
    const change = await call();
    if (change.job) track(change.job);
    await load();
    return change;
  } catch (error) {
    toast(String(error instanceof Error ? error.message : error), "error", 7000);
    return null;
  }
}

function track(job: Job): void {
  if (state.jobs.get(job.id)?.state !== "queued" && state.jobs.has(job.id)) return; // the websocket was faster
  state.jobs.set(job.id, job);
  emit("jobs");
}

function classTitle(name: string): string {
  return state.project?.classes.find((c) => c.name === name)?.title ?? name;
}

function versionName(id: number | null): string {
  const known = state.checkpoints.find((c) => c.id === id);
  return known?.name ? `“${known.name}”` : `model v${id ?? "?"}`;
}

function render(): void {
  const box = document.getElementById("patch-panel");
  if (!box) return;
  const choices = state.checkpoints.filter((c) => c.id !== state.project?.model.current_version || c.name);
  if (checkpoint === null || !state.checkpoints.some((c) => c.id === checkpoint)) checkpoint = choices[0]?.id ?? null;
  const options = state.checkpoints
    .map((c) => `<option value="${c.id}" ${c.id === checkpoint ? "selected" : ""}>${esc(c.name ?? `model v${c.id}`)}</option>`)
    .join("");
  const title = classTitle(state.selectedClass);
  const rows = patches
    .map((p) => {
      const what =
        p.kind === "fill"
          ? `<span class="patch-swatch" style="background:${esc(classColor(p.class_name ?? ""))}"></span>fill “${esc(classTitle(p.class_name ?? "?"))}”`
          : `paint ${esc(versionName(p.checkpoint ?? null))}`;
      const labels =
        p.kind === "fill"
          ? `<button class="btn btn-small" data-patch-labels="${p.id}" data-testid="patch-labels-${p.id}" title="Copy it into labels of its class, for the next retrain">Use as labels</button>`
          : "";
      return `<li class="patch" data-testid="patch-${p.id}"><span>#${p.id} ${what}<span class="hint"> · AOI ${p.aoi_ids.join(", ")} · ${esc(p.user)} · ${timeAgo(p.created_at)}</span></span>
        <span class="patch-actions">${labels}<button class="btn btn-small" data-patch-remove="${p.id}" data-testid="patch-remove-${p.id}">Remove</button></span></li>`;
    })
    .join("");
  box.innerHTML = `
    <label class="check"><input type="radio" name="patch-mode" value="fill" ${mode === "fill" ? "checked" : ""} data-testid="patch-mode-fill">Fill with “${esc(title)}” <span class="hint">(the selected class)</span></label>
    <label class="check"><input type="radio" name="patch-mode" value="checkpoint" ${mode === "checkpoint" ? "checked" : ""} data-testid="patch-mode-checkpoint">Paint from
      <select name="patch-checkpoint" data-testid="patch-checkpoint" ${options ? "" : "disabled"}>${options}</select></label>
    <button class="btn btn-small btn-block ${state.tool === "patch" ? "btn-on" : ""}" data-action="patch-draw" data-testid="patch-draw">Draw a patch (H)</button>
    <ul class="patch-list" data-testid="patch-list">${rows || `<li class="empty">No patches: the map is the model's.</li>`}</ul>
    <button class="btn btn-small btn-ghost" data-action="patch-undo" data-testid="patch-undo">Undo last patch change</button>`;
}

function syncLayer(): void {
  const source = map?.getSource("patches") as maplibregl.GeoJSONSource | undefined;
  source?.setData({
    type: "FeatureCollection",
    features: patches.map((p) => ({
      type: "Feature",
      id: p.id,
      geometry: p.geometry as unknown as GeoJSON.Geometry,
      properties: { id: p.id, kind: p.kind },
    })),
  });
}

function onChange(e: Event): void {
  const target = e.target as HTMLInputElement | HTMLSelectElement;
  if (target.name === "patch-mode") mode = target.value as Mode;
  if (target.name === "patch-checkpoint") checkpoint = Number(target.value);
  render();
  emit("class"); // the sketch's colour follows the mode
}

function onClick(e: Event): void {
  const el = (e.target as HTMLElement).closest<HTMLElement>("[data-action],[data-patch-remove],[data-patch-labels]");
  if (!el) return;
  if (el.dataset.patchRemove) {
    void changed(() => patchApi.remove(state.projectId, Number(el.dataset.patchRemove)));
  } else if (el.dataset.patchLabels) {
    void asLabels(Number(el.dataset.patchLabels));
  } else if (el.dataset.action === "patch-undo") {
    void changed(() => patchApi.undo(state.projectId)).then((c) => c && !c.patch && toast("No patch change to undo", "info", 2000));
  } else if (el.dataset.action === "patch-draw") {
    state.tool = "patch";
    emit("tool");
  }
}

async function asLabels(id: number): Promise<void> {
  try {
    const labels = await patchApi.asLabels(state.projectId, id);
    state.labels.features.push(...labels.features);
    emit("labels");
    toast(`Patch ${id} copied into ${labels.features.length} label(s): retrain to learn from it`, "success", 4000);
  } catch (error) {
    toast(String(error instanceof Error ? error.message : error), "error", 7000);
  }
}
