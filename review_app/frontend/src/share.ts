// The shared map's page (/share/<token>): one share's frozen maps over its imagery, the legend, the area per class
// and the COG downloads. Its own small bundle: no sign-in, no project, no labels; every request carries the link's
// token in its path and nothing else (the token opens this share only, review_app/routers/shares.py).
import * as maplibregl from "maplibre-gl";
import "maplibre-gl/dist/maplibre-gl.css";
import "./style.css";
import "./share.css";
import type { components } from "./api-types";
import { esc } from "./ui";

type ShareView = components["schemas"]["ShareView"];
type ShareMap = components["schemas"]["ShareMap"];

const absolute = (path: string) => new URL(path, window.location.href).toString();
const hectares = (ha: number) => ha.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const day = (iso: string) => new Date(iso).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });

/** The token is the path's last part: /share/<token>. */
function token(): string {
  return decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() ?? "");
}

async function main(): Promise<void> {
  const response = await fetch(`/api/shares/${encodeURIComponent(token())}`, { credentials: "omit", cache: "no-store" });
  if (!response.ok) return gone();
  const share = (await response.json()) as ShareView;
  document.title = `${share.title} · PEARL shared map`;
  renderSide(share);
  renderLegend(share);
  mountMap(share);
}

function gone(): void {
  document.getElementById("share-side")!.innerHTML = `<section class="panel"><h1 class="share-title">Map not available</h1>
    <p class="empty" data-testid="share-gone">This link does not open a map: it may have expired or been revoked.</p></section>`;
}

function versions(share: ShareView): string {
  const seen = [...new Set(share.maps.map((m) => m.model_version))];
  return seen.map((v) => (v === null ? "base model" : `model v${v}`)).join(", ");
}

function renderSide(share: ShareView): void {
  const total = share.maps.reduce((sum, m) => sum + m.areas.reduce((s, a) => s + a.area_ha, 0), 0);
  document.getElementById("share-side")!.innerHTML = `
    <section class="panel">
      <div class="brand"><span class="logo"></span>PEARL<span class="brand-sub">shared map</span></div>
      <h1 class="share-title" data-testid="share-title">${esc(share.title)}</h1>
      <p class="hint">Shared ${esc(day(share.created_at))} · link valid until ${esc(day(share.expires_at))} · ${esc(versions(share))}</p>
      <p class="share-total">Mapped area <b data-testid="share-total">${hectares(total)} ha</b></p>
      <label class="row"><span class="row-label">Map over imagery</span>
        <input type="range" min="0" max="100" value="75" data-testid="share-opacity" aria-label="map opacity"></label>
    </section>
    ${share.maps.map(mapSection).join("")}`;
}

function mapSection(m: ShareMap): string {
  const rows = m.areas
    .filter((a) => a.pixels > 0)
    .map(
      (a) => `<tr data-class="${esc(a.class_name)}"><td>${esc(a.title)}</td><td class="num">${hectares(a.area_ha)}</td>
        <td class="num">${a.percent.toFixed(1)}%</td></tr>`,
    )
    .join("");
  return `<section class="panel" data-testid="share-aoi" data-aoi="${m.aoi_id}">
    <h2>${esc(m.name)}</h2>
    <table class="share-areas" data-testid="share-areas"><thead><tr><th>Class</th><th class="num">ha</th><th class="num">share</th></tr></thead>
      <tbody>${rows || `<tr><td colspan="3" class="empty">nothing mapped</td></tr>`}</tbody></table>
    <div class="share-downloads">
      <a class="btn btn-small" href="${esc(m.download)}" download data-testid="share-download">Map (COG)</a>
      <a class="btn btn-small" href="${esc(m.areas_csv)}" download data-testid="share-csv">Areas (CSV)</a>
    </div></section>`;
}

function renderLegend(share: ShareView): void {
  const used = new Set(share.maps.flatMap((m) => m.areas.filter((a) => a.pixels > 0).map((a) => a.class_index)));
  const items = share.legend
    .filter((c) => used.has(c.index))
    .map((c) => `<div class="legend-item" data-class="${esc(c.name)}"><span class="legend-swatch" style="background:${esc(c.color)}"></span>${esc(c.title)}</div>`)
    .join("");
  document.getElementById("share-legend")!.innerHTML = `<div class="legend-title">Legend</div>${items}`;
}

function mountMap(share: ShareView): void {
  maplibregl.setWorkerUrl(absolute("/static/maplibre-gl-worker.mjs"));
  const [west, south, east, north] = share.bounds;
  const map = new maplibregl.Map({
    container: "share-map",
    style: {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#0b1120" } }],
    },
    bounds: [west, south, east, north],
    fitBoundsOptions: { padding: 40 },
    attributionControl: false,
    maxZoom: 20,
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "bottom-right");
  map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-left");
  map.on("load", () => {
    map.addSource("imagery", { type: "raster", url: absolute(share.imagery_tilejson), tileSize: 256 });
    map.addLayer({ id: "imagery", type: "raster", source: "imagery" });
    for (const m of share.maps) {
      map.addSource(`map-${m.aoi_id}`, { type: "raster", url: absolute(m.tilejson), tileSize: 256 });
      map.addLayer({ id: `map-${m.aoi_id}`, type: "raster", source: `map-${m.aoi_id}`, paint: { "raster-opacity": 0.75 } });
      map.addSource(`outline-${m.aoi_id}`, { type: "geojson", data: { type: "Feature", properties: {}, geometry: m.geometry as unknown as GeoJSON.Geometry } });
      map.addLayer({ id: `outline-${m.aoi_id}`, type: "line", source: `outline-${m.aoi_id}`, paint: { "line-color": "#f8fafc", "line-width": 1.5 } });
    }
    document.body.dataset.ready = "true";
  });
  // The imagery shows through as the map fades (it is served inside the shared AOIs' bounds only).
  document.querySelector<HTMLInputElement>("[data-testid=share-opacity]")?.addEventListener("input", (event) => {
    const opacity = Number((event.target as HTMLInputElement).value) / 100;
    for (const m of share.maps) if (map.getLayer(`map-${m.aoi_id}`)) map.setPaintProperty(`map-${m.aoi_id}`, "raster-opacity", opacity);
  });
  (window as unknown as { __share: unknown }).__share = { map, share };
}

main().catch((error) => {
  document.getElementById("share-side")!.innerHTML = `<p class="empty">The map could not load: ${esc(error)}</p>`;
});
