// "Label here next": numbered markers at the places of the selected AOI where a label would help the current
// model most (GET …/aois/{id}/suggestions). Clicking one labels it with the selected class, exactly as a map
// click with the point tool does, and takes the marker away. The layer refetches when the AOI or its
// prediction changes (a retrain makes the old places stale).
import * as maplibregl from "maplibre-gl";
import { api, ApiError, type SuggestionFeature } from "./api";
import { labelPointAt } from "./map";
import { currentAoi, emit, on, state } from "./state";
import { toast } from "./ui";

const SUGGESTIONS = 20;

let map: maplibregl.Map | null = null;
const markers = new Map<number, maplibregl.Marker>(); // rank -> marker
let shownFor = ""; // which AOI and prediction version the markers were computed for
let latest = 0; // answers of older requests are dropped

export function mountSuggestions(target: maplibregl.Map): void {
  map = target;
  on(["project", "aoi"], () => {
    if (state.suggestions.on && layerKey() !== shownFor) void load();
  });
}

export async function toggleSuggestions(): Promise<void> {
  state.suggestions.on = !state.suggestions.on;
  if (state.suggestions.on) return load();
  latest++;
  clear();
  emit("suggestions");
}

function layerKey(): string {
  const aoi = currentAoi();
  return aoi?.prediction ? `${aoi.id}:v${aoi.prediction.version}` : "";
}

async function load(): Promise<void> {
  clear();
  const aoi = currentAoi();
  shownFor = layerKey();
  if (!aoi?.prediction) {
    state.suggestions.on = false;
    emit("suggestions");
    return toast("Predict an AOI first: suggestions come from its prediction", "info");
  }
  const request = ++latest;
  state.suggestions.loading = true;
  emit("suggestions");
  try {
    const found = await api.suggestions(state.projectId, aoi.id, SUGGESTIONS);
    if (request !== latest || !state.suggestions.on) return;
    for (const feature of found.features) addMarker(feature);
    if (!found.features.length) toast("No place left to suggest in this AOI", "info", 4000);
  } catch (error) {
    if (request !== latest) return;
    state.suggestions.on = false;
    toast(error instanceof ApiError ? error.message : String(error), "error", 7000);
  } finally {
    if (request === latest) {
      state.suggestions.loading = false;
      state.suggestions.count = markers.size;
      emit("suggestions");
    }
  }
}

function addMarker(feature: SuggestionFeature): void {
  const { rank, score, predicted_class } = feature.properties;
  const at = feature.geometry.coordinates;
  const title = state.project?.classes.find((c) => c.name === predicted_class)?.title ?? predicted_class;
  const el = document.createElement("button");
  el.type = "button";
  el.className = "suggestion";
  el.textContent = String(rank);
  el.setAttribute("data-testid", "suggestion");
  el.dataset.rank = String(rank);
  el.dataset.lon = String(at[0]);
  el.dataset.lat = String(at[1]);
  el.title = `Label here next (#${rank}): the model says “${title}” but is unsure (${score.toFixed(2)}). Click to label it as the selected class`;
  el.addEventListener("click", (e) => {
    e.stopPropagation(); // the map must not see this click too (it would add a second label under the point tool)
    void labelSuggestion(rank, at);
  });
  markers.set(rank, new maplibregl.Marker({ element: el }).setLngLat(at).addTo(map!));
}

async function labelSuggestion(rank: number, at: [number, number]): Promise<void> {
  if (!(await labelPointAt(at))) return; // not stored (no class, outside the AOI): the marker stays, the toast says why
  markers.get(rank)?.remove();
  markers.delete(rank);
  state.suggestions.count = markers.size;
  emit("suggestions");
  if (!markers.size) toast("All suggestions labelled: retrain, and the next ones appear", "success", 4000);
}

function clear(): void {
  for (const marker of markers.values()) marker.remove();
  markers.clear();
  state.suggestions.count = 0;
}
