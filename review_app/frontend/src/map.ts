// The MapLibre map: a blank style (no external basemap), imagery/prediction/confidence raster layers from the
// app's TileJSON, AOIs and labels as GeoJSON, and the drawing tools (point, polygon, erase, AOI).
import * as maplibregl from "maplibre-gl";
import "maplibre-gl/dist/maplibre-gl.css";
import type { Aoi, Geometry, View } from "./api";
import { withAccessToken } from "./auth";
import { patchColor, patchDescription } from "./patches";
import { classColor, currentAoi, emit, on, state } from "./state";

type Position = [number, number];

/** What the mapper's gestures on the map ask for. main.ts passes the actions: the map does not import them
 * (actions.ts imports the map to frame a new AOI), so the two modules stay out of an import cycle. */
export interface MapGestures {
  createAoi(geometry: Geometry): Promise<void>;
  addLabel(geometry: Geometry): Promise<boolean>;
  addPatch(geometry: Geometry): Promise<void>; // patches.ts: the Patch tool's polygon
  deleteLabel(id: number): Promise<void>;
  selectAoi(id: number): void;
}

let map: maplibregl.Map;
let gestures: MapGestures;
/** A prediction layer on the map: its version and the palette its tiles were drawn with. */
interface LayerKey {
  version: number;
  palette: string;
}
/** The AOI's layer shown; `under`: the whole-AOI layer kept drawn under a partial one (a retrain's block in view)
 * until the whole AOI's next version replaces both. */
interface ShownLayer extends LayerKey {
  id: string;
  partial: boolean;
  under: LayerKey | null;
}
const predictionLayers = new Map<number, ShownLayer>();
let imageryKey = "";
let sketch: Position[] = [];
let cursor: Position | null = null;
let pendingUpdate: { aoiId: number; started: number } | null = null;
let fitted = false;
let styleReady = false; // set on "load": isStyleLoaded() turns false again while added sources load

const EMPTY = { type: "FeatureCollection", features: [] } as GeoJSON.FeatureCollection;
const ANCHORS = ["anchor-predictions", "anchor-confidence", "anchor-vectors"];

const absolute = (path: string) => new URL(path, window.location.href).toString();

export function createMap(container: HTMLElement, handlers: MapGestures): maplibregl.Map {
  gestures = handlers;
  maplibregl.setWorkerUrl(absolute("/static/maplibre-gl-worker.mjs"));
  map = new maplibregl.Map({
    container,
    style: {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#0b1120" } }],
    },
    center: [-76.41, 38.97],
    zoom: 13,
    attributionControl: false,
    maxZoom: 21,
    // Tiles and TileJSON carry the current access token in OIDC mode (auth.ts); nothing changes in local mode.
    transformRequest: (url) => ({ url: withAccessToken(url) }),
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "bottom-right");
  map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-left");
  map.on("load", () => {
    for (const id of ANCHORS) map.addLayer({ id, type: "background", layout: { visibility: "none" } });
    addVectorLayers();
    styleReady = true;
    syncAll();
  });
  map.on("click", onClick);
  map.on("dblclick", onDoubleClick);
  map.on("mousemove", onMouseMove);
  on(["project", "layers"], syncAll);
  on(["labels", "class"], syncLabels);
  on(["class"], () => styleReady && renderSketch());
  on(["aoi"], syncAois);
  on(["tool"], onToolChange);
  (window as unknown as { __pearl: unknown }).__pearl = { map, state, predictionVersion };
  return map;
}

function addVectorLayers(): void {
  map.addSource("aois", { type: "geojson", data: EMPTY });
  map.addSource("labels", { type: "geojson", data: EMPTY });
  map.addSource("sketch", { type: "geojson", data: EMPTY });
  map.addLayer({
    id: "aoi-fill",
    type: "fill",
    source: "aois",
    paint: { "fill-color": "#facc15", "fill-opacity": ["case", ["get", "selected"], 0.04, 0] },
  });
  map.addLayer({
    id: "aoi-line",
    type: "line",
    source: "aois",
    paint: {
      "line-color": ["case", ["get", "selected"], "#facc15", "#e2e8f0"],
      "line-width": ["case", ["get", "selected"], 2.5, 1.5],
      "line-dasharray": [3, 2],
    },
  });
  map.addLayer({
    id: "label-halo",
    type: "line",
    source: "labels",
    filter: ["==", ["geometry-type"], "Polygon"],
    paint: { "line-color": "#0b1120", "line-width": 4, "line-opacity": 0.7 },
  });
  map.addLayer({
    id: "label-fill",
    type: "fill",
    source: "labels",
    filter: ["==", ["geometry-type"], "Polygon"],
    paint: { "fill-color": ["get", "color"], "fill-opacity": 0.45 },
  });
  map.addLayer({
    id: "label-line",
    type: "line",
    source: "labels",
    filter: ["==", ["geometry-type"], "Polygon"],
    paint: { "line-color": "#ffffff", "line-width": 2 },
  });
  map.addLayer({
    id: "label-point-halo",
    type: "circle",
    source: "labels",
    filter: ["==", ["geometry-type"], "Point"],
    paint: { "circle-radius": 10, "circle-color": "#0b1120", "circle-opacity": 0.55, "circle-blur": 0.3 },
  });
  map.addLayer({
    id: "label-point",
    type: "circle",
    source: "labels",
    filter: ["==", ["geometry-type"], "Point"],
    paint: {
      "circle-radius": 6.5,
      "circle-color": ["get", "color"],
      "circle-stroke-color": "#ffffff",
      "circle-stroke-width": 2,
    },
  });
  map.addLayer({
    id: "sketch-fill",
    type: "fill",
    source: "sketch",
    filter: ["==", ["geometry-type"], "Polygon"],
    paint: { "fill-color": ["get", "color"], "fill-opacity": 0.25 },
  });
  map.addLayer({
    id: "sketch-line",
    type: "line",
    source: "sketch",
    filter: ["==", ["geometry-type"], "LineString"],
    paint: { "line-color": ["get", "color"], "line-width": 2, "line-dasharray": [2, 1] },
  });
  map.addLayer({
    id: "sketch-vertex",
    type: "circle",
    source: "sketch",
    filter: ["==", ["geometry-type"], "Point"],
    paint: { "circle-radius": 4, "circle-color": "#ffffff", "circle-stroke-color": ["get", "color"], "circle-stroke-width": 2 },
  });
}

// -- raster layers ---------------------------------------------------------------------------------------------
function syncAll(): void {
  if (!map || !styleReady) return;
  syncImagery();
  syncPredictions();
  syncAois();
  syncLabels();
}

function syncImagery(): void {
  const project = state.project;
  const style = state.layers.imagery;
  const url = project?.imagery.state === "ready" && style !== "off" ? project.imagery.tilejson?.[style] : null;
  const key = url ?? "";
  if (key === imageryKey) return;
  if (map.getLayer("imagery")) map.removeLayer("imagery");
  if (map.getSource("imagery")) map.removeSource("imagery");
  imageryKey = key;
  if (!url) return;
  map.addSource("imagery", { type: "raster", url: absolute(url), tileSize: 512 });
  map.addLayer({ id: "imagery", type: "raster", source: "imagery", paint: { "raster-fade-duration": 0 } }, ANCHORS[0]);
  if (!fitted) fitToImagery();
}

export function fitToImagery(): void {
  const bounds = state.project?.imagery.bounds;
  if (map && bounds) fitted = true;
  if (map && bounds) map.fitBounds([bounds.slice(0, 2) as Position, bounds.slice(2, 4) as Position], { padding: 30, animate: false });
}

export function fitToAoi(aoi: Aoi): void {
  const coords = (aoi.geometry.coordinates as Position[][]).flat();
  const xs = coords.map((c) => c[0]);
  const ys = coords.map((c) => c[1]);
  map.fitBounds(
    [
      [Math.min(...xs), Math.min(...ys)],
      [Math.max(...xs), Math.max(...ys)],
    ],
    { padding: 60, duration: 400 },
  );
}

/** Class colours as a short key: part of the prediction tile URLs, so a recolour refetches (tiles are cached). */
function paletteKey(): string {
  const colors = (state.project?.classes ?? []).map((c) => c.color).join("");
  let hash = 0;
  for (let i = 0; i < colors.length; i++) hash = (hash * 31 + colors.charCodeAt(i)) >>> 0;
  return hash.toString(36);
}

function layerIds(aoiId: number, version: number, palette: string) {
  return { classes: `pred-${aoiId}-v${version}-${palette}`, confidence: `conf-${aoiId}-v${version}-${palette}` };
}

function addPredictionLayers(aoi: Aoi, palette: string): string {
  const p = aoi.prediction!;
  const ids = layerIds(aoi.id, p.version, palette);
  if (!map.getSource(ids.classes)) {
    map.addSource(ids.classes, { type: "raster", url: absolute(`${p.tilejson.classes!}&palette=${palette}`), tileSize: 512 });
    map.addLayer(
      {
        id: ids.classes,
        type: "raster",
        source: ids.classes,
        paint: { "raster-opacity": state.layers.predictionOpacity, "raster-resampling": "nearest", "raster-fade-duration": 0 },
        layout: { visibility: state.layers.predictions ? "visible" : "none" },
      },
      ANCHORS[1],
    );
    map.addSource(ids.confidence, { type: "raster", url: absolute(p.tilejson.confidence!), tileSize: 512 });
    map.addLayer(
      {
        id: ids.confidence,
        type: "raster",
        source: ids.confidence,
        paint: { "raster-opacity": state.layers.confidenceOpacity, "raster-fade-duration": 0 },
        layout: { visibility: state.layers.confidence ? "visible" : "none" },
      },
      ANCHORS[2],
    );
  }
  return ids.classes;
}

function removePredictionLayers(aoiId: number, version: number, palette: string): void {
  for (const id of Object.values(layerIds(aoiId, version, palette))) {
    if (map.getLayer(id)) map.removeLayer(id);
    if (map.getSource(id)) map.removeSource(id);
  }
}

function syncPredictions(): void {
  const aois = state.project?.aois ?? [];
  const palette = paletteKey();
  for (const aoi of aois) {
    const shown = predictionLayers.get(aoi.id);
    if (!aoi.prediction) continue;
    if (!shown || shown.version < aoi.prediction.version || shown.palette !== palette) {
      const partial = aoi.prediction.partial ?? false;
      const id = addPredictionLayers(aoi, palette);
      // A partial layer (the block in view) is drawn over the AOI's last whole layer, which stays under it until
      // the whole AOI's next version replaces both: no blank map outside the block meanwhile. A recolour drops it.
      const lastWhole = shown && !shown.partial ? { version: shown.version, palette: shown.palette } : (shown?.under ?? null);
      const under = partial && lastWhole?.palette === palette ? lastWhole : null;
      predictionLayers.set(aoi.id, { version: aoi.prediction.version, id, palette, partial, under });
      // Double buffer: the old version stays under the new one until the new tiles are drawn (no flicker).
      if (shown) swapWhenLoaded(aoi.id, shown);
    }
  }
  for (const [aoiId, shown] of predictionLayers) {
    for (const layer of [shown, shown.under]) {
      const ids = layer && layerIds(aoiId, layer.version, layer.palette);
      if (!ids || !map.getLayer(ids.classes)) continue;
      map.setLayoutProperty(ids.classes, "visibility", state.layers.predictions ? "visible" : "none");
      map.setPaintProperty(ids.classes, "raster-opacity", state.layers.predictionOpacity);
      map.setLayoutProperty(ids.confidence, "visibility", state.layers.confidence ? "visible" : "none");
      map.setPaintProperty(ids.confidence, "raster-opacity", state.layers.confidenceOpacity);
    }
  }
}

/** Once the new layer's tiles are drawn, remove the `previous` layer (and the whole layer it was drawn over),
 * unless the AOI's layer now shown still uses it (a partial layer's `under`). */
function swapWhenLoaded(aoiId: number, previous: ShownLayer): void {
  const done = () => {
    map.off("idle", done);
    const now = predictionLayers.get(aoiId);
    const same = (a: LayerKey | null | undefined, b: LayerKey) => !!a && a.version === b.version && a.palette === b.palette;
    for (const old of [previous, previous.under]) {
      if (old && !same(now, old) && !same(now?.under, old)) removePredictionLayers(aoiId, old.version, old.palette);
    }
    if (pendingUpdate && pendingUpdate.aoiId === aoiId) {
      state.lastUpdateSeconds = (performance.now() - pendingUpdate.started) / 1000;
      pendingUpdate = null;
      emit("jobs");
    }
    document.getElementById("map")!.dataset.predictionVersion = String(predictionLayers.get(aoiId)?.version ?? "");
  };
  map.on("idle", done);
}

/** Called when the mapper asks for a retrain: the status bar then says how long until the new map was drawn. */
export function markUpdateRequested(aoiId: number | null): void {
  pendingUpdate = aoiId === null ? null : { aoiId, started: performance.now() };
}

/** The map's view as lon/lat (west, south, east, north), clamped to the world (the map wraps at low zoom). */
export function mapView(): View | null {
  if (!map) return null;
  const b = map.getBounds();
  const lon = (x: number) => Math.max(-180, Math.min(180, x));
  const lat = (y: number) => Math.max(-90, Math.min(90, y));
  return [lon(b.getWest()), lat(b.getSouth()), lon(b.getEast()), lat(b.getNorth())];
}

export function predictionVersion(aoiId: number): number | null {
  return predictionLayers.get(aoiId)?.version ?? null;
}

// -- vectors --------------------------------------------------------------------------------------------------
function syncAois(): void {
  const source = map?.getSource("aois") as maplibregl.GeoJSONSource | undefined;
  if (!source) return;
  source.setData({
    type: "FeatureCollection",
    features: (state.project?.aois ?? []).map((a) => ({
      type: "Feature",
      id: a.id,
      geometry: a.geometry as GeoJSON.Geometry,
      properties: { id: a.id, selected: a.id === state.aoiId },
    })),
  });
}

function syncLabels(): void {
  const source = map?.getSource("labels") as maplibregl.GeoJSONSource | undefined;
  if (!source) return;
  const features = state.layers.labels
    ? state.labels.features.map((f) => ({
        ...f,
        properties: { ...f.properties, id: f.id, color: classColor(f.properties.class_name) },
      }))
    : [];
  source.setData({ type: "FeatureCollection", features } as GeoJSON.FeatureCollection);
}

// -- drawing tools --------------------------------------------------------------------------------------------
function sketchColor(): string {
  if (state.tool === "patch") return patchColor();
  return state.tool === "aoi" ? "#facc15" : classColor(state.selectedClass);
}

/** The tools whose clicks place a polygon's corners. */
const drawsPolygon = () => state.tool === "polygon" || state.tool === "aoi" || state.tool === "patch";

function renderSketch(): void {
  const source = map.getSource("sketch") as maplibregl.GeoJSONSource | undefined;
  if (!source) return;
  const color = sketchColor();
  const ring = cursor ? [...sketch, cursor] : sketch;
  const features: GeoJSON.Feature[] = sketch.map((c) => ({
    type: "Feature",
    geometry: { type: "Point", coordinates: c },
    properties: { color },
  }));
  if (ring.length >= 2) {
    features.push({ type: "Feature", geometry: { type: "LineString", coordinates: [...ring, ring[0]] }, properties: { color } });
  }
  if (ring.length >= 3) {
    features.push({ type: "Feature", geometry: { type: "Polygon", coordinates: [[...ring, ring[0]]] }, properties: { color } });
  }
  source.setData({ type: "FeatureCollection", features });
  const hint = document.getElementById("draw-hint")!;
  const drawing = drawsPolygon();
  hint.hidden = !drawing;
  if (drawing) {
    const title = state.project?.classes.find((c) => c.name === state.selectedClass)?.title ?? state.selectedClass;
    const what = state.tool === "aoi" ? "the AOI" : state.tool === "patch" ? patchDescription() : `a “${title}” polygon`;
    hint.textContent =
      sketch.length < 3
        ? `Click to place the corners of ${what} (${sketch.length} so far)`
        : `Double-click or press Enter to finish ${what} · Backspace removes a corner · Esc cancels`;
  }
}

export function cancelSketch(): void {
  sketch = [];
  cursor = null;
  if (map) renderSketch();
}

export function removeLastVertex(): void {
  sketch.pop();
  renderSketch();
}

export async function finishSketch(): Promise<void> {
  if (sketch.length < 3) return;
  const ring = [...sketch, sketch[0]];
  const geometry: Geometry = { type: "Polygon", coordinates: [ring] };
  const tool = state.tool;
  cancelSketch();
  if (tool === "aoi") await gestures.createAoi(geometry);
  else if (tool === "polygon") await gestures.addLabel(geometry);
  else if (tool === "patch") await gestures.addPatch(geometry);
}

function onToolChange(): void {
  cancelSketch();
  const drawing = state.tool !== "pan";
  map.getCanvas().style.cursor = state.tool === "erase" ? "not-allowed" : drawing ? "crosshair" : "";
  if (drawsPolygon()) map.doubleClickZoom.disable();
  else map.doubleClickZoom.enable();
}

/** What a click with the point tool does: a point label of the selected class (suggestion markers call it too). */
export function labelPointAt(at: Position): Promise<boolean> {
  return gestures.addLabel({ type: "Point", coordinates: at });
}

function onClick(e: maplibregl.MapMouseEvent): void {
  const at: Position = [e.lngLat.lng, e.lngLat.lat];
  switch (state.tool) {
    case "point":
      void labelPointAt(at);
      break;
    case "polygon":
    case "aoi":
    case "patch":
      sketch.push(at);
      renderSketch();
      break;
    case "erase": {
      const box: [maplibregl.PointLike, maplibregl.PointLike] = [
        [e.point.x - 6, e.point.y - 6],
        [e.point.x + 6, e.point.y + 6],
      ];
      const hit = map.queryRenderedFeatures(box, { layers: ["label-point", "label-fill"] })[0];
      if (hit) void gestures.deleteLabel(Number(hit.properties.id));
      break;
    }
    default: {
      const aoi = map.queryRenderedFeatures(e.point, { layers: ["aoi-fill"] })[0];
      if (aoi && Number(aoi.properties.id) !== state.aoiId) gestures.selectAoi(Number(aoi.properties.id));
    }
  }
}

function onDoubleClick(e: maplibregl.MapMouseEvent): void {
  if (!drawsPolygon()) return;
  e.preventDefault();
  // The double-click's two clicks already added the last corner twice: drop the duplicate.
  if (sketch.length >= 2) {
    const [a, b] = sketch.slice(-2);
    if (Math.abs(a[0] - b[0]) < 1e-9 && Math.abs(a[1] - b[1]) < 1e-9) sketch.pop();
  }
  void finishSketch();
}

function onMouseMove(e: maplibregl.MapMouseEvent): void {
  if (drawsPolygon() && sketch.length) {
    cursor = [e.lngLat.lng, e.lngLat.lat];
    renderSketch();
  }
}

export function selectedAoiOrNull(): Aoi | null {
  return currentAoi();
}
