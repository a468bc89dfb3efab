// REST client: typed wrappers around /api (schemas mirror review_app/schemas.py); every call carries the
// signed-in user's access token in OIDC mode (auth.ts).
import { authEnabled, authHeaders, onUnauthorized } from "./auth";

export type Geometry = { type: string; coordinates: unknown };

export interface ClassOut {
  index: number;
  name: string;
  title: string;
  color: string;
  label_count: number;
}

export interface TileJsonLinks {
  classes?: string | null;
  confidence?: string | null;
  true_color?: string | null;
  false_color?: string | null;
}

export interface PredictionLayer {
  version: number;
  model_version: number | null;
  tilejson: TileJsonLinks;
  embeddings: boolean;
}

export interface Aoi {
  id: number;
  name: string;
  geometry: Geometry;
  area_km2: number;
  tile_keys: number;
  prediction: PredictionLayer | null;
}

export interface Project {
  id: number;
  name: string;
  class_schema_id: string;
  classes: ClassOut[];
  imagery: {
    state: "missing" | "building" | "ready" | "error";
    message: string;
    bounds: [number, number, number, number] | null;
    tilejson: TileJsonLinks;
  };
  model: { ready: boolean; message: string; base_model: string; current_version: number | null };
  aois: Aoi[];
  live_aoi_max_km2: number;
}

export interface Job {
  id: string;
  project_id: number;
  kind: "imagery" | "inference" | "retrain" | "restore";
  state: "queued" | "running" | "done" | "failed";
  progress: number;
  message: string;
  error: string | null;
  aoi_id: number | null;
}

export interface LabelFeature {
  type: "Feature";
  id: number;
  geometry: Geometry;
  properties: { class_name: string; aoi_id: number | null; geom_type: string; created_at: string | null; color?: string };
}

export interface LabelCollection {
  type: "FeatureCollection";
  features: LabelFeature[];
}

export interface ClassMetric {
  name: string;
  f1: number | null;
  precision: number | null;
  recall: number | null;
  support: number;
}

export interface Metrics {
  model_version: number | null;
  method: string;
  per_class: ClassMetric[];
  confusion: number[][];
  classes: string[];
  columns: string[];
  mean_f1: number | null;
  accuracy: number | null;
  n_labels: number;
  n_samples: number;
  message: string;
}

export interface Checkpoint {
  id: number;
  name: string | null;
  kind: "base" | "retrain";
  parent: number | null;
  created_at: string;
  n_labels: number;
  classes: string[];
  mean_f1: number | null;
  current: boolean;
  saved: boolean;
  mlflow_version: string | null;
}

export interface Compare {
  a: Checkpoint;
  b: Checkpoint;
  rows: { class_name: string; f1_a: number | null; f1_b: number | null; delta: number | null }[];
}

export type StrategyName = "logistic_regression" | "mlp" | "spatial_ensemble";

export interface Strategy {
  strategy: StrategyName;
  available: { name: StrategyName; description: string }[];
}

export type SuggestionMethod = "margin" | "entropy";

export interface SuggestionFeature {
  type: "Feature";
  geometry: { type: "Point"; coordinates: [number, number] };
  properties: { rank: number; score: number; predicted_class: string; row: number; col: number };
}

export interface SuggestionCollection {
  type: "FeatureCollection";
  features: SuggestionFeature[];
  aoi_id: number;
  model_version: number | null;
  method: SuggestionMethod;
  spacing_px: number;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function send(method: string, path: string, body?: unknown): Promise<Response> {
  const json: Record<string, string> = body === undefined ? {} : { "Content-Type": "application/json" };
  const call = () =>
    fetch(path, {
      method,
      headers: { ...authHeaders(), ...json },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  const response = await call();
  // Signed in with OIDC and refused: renew the token once and retry (or the page signs in again).
  if (response.status === 401 && authEnabled() && (await onUnauthorized())) return call();
  return response;
}

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const response = await send(method, path, body);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.detail) || `${method} ${path}: HTTP ${response.status}`);
  }
  return data as T;
}

const p = (id: number) => `/api/projects/${id}`;

export interface Me {
  id: number;
  subject: string;
  name: string;
}

export const api = {
  me: () => request<Me>("GET", "/api/me"),
  projects: () => request<{ id: number; name: string }[]>("GET", "/api/projects"),
  project: (id: number) => request<Project>("GET", p(id)),
  labels: (id: number) => request<LabelCollection>("GET", `${p(id)}/labels`),
  addLabel: (id: number, class_name: string, geometry: Geometry, aoi_id: number | null) =>
    request<LabelFeature>("POST", `${p(id)}/labels`, { class_name, geometry, aoi_id }),
  deleteLabel: (id: number, labelId: number) => request<LabelFeature>("DELETE", `${p(id)}/labels/${labelId}`),
  undo: (id: number) => request<{ undone: LabelFeature | null; restored: boolean }>("POST", `${p(id)}/labels/undo`),
  addClass: (id: number, name: string, color: string, title?: string) =>
    request<ClassOut[]>("POST", `${p(id)}/classes`, { name, color, title }),
  updateClass: (id: number, name: string, change: { name?: string; title?: string; color?: string }) =>
    request<ClassOut[]>("PATCH", `${p(id)}/classes/${encodeURIComponent(name)}`, change),
  createAoi: (id: number, geometry: Geometry, name = "") => request<Aoi>("POST", `${p(id)}/aois`, { geometry, name }),
  inference: (id: number, aoiId: number) => request<Job>("POST", `${p(id)}/aois/${aoiId}/inference`),
  suggestions: (id: number, aoiId: number, n: number, method: SuggestionMethod = "margin") =>
    request<SuggestionCollection>("GET", `${p(id)}/aois/${aoiId}/suggestions?n=${n}&method=${method}`),
  retrain: (id: number, aoiId: number | null) => request<Job>("POST", `${p(id)}/retrain`, { aoi_id: aoiId }),
  strategy: (id: number) => request<Strategy>("GET", `${p(id)}/strategy`),
  setStrategy: (id: number, strategy: StrategyName) => request<Strategy>("PUT", `${p(id)}/strategy`, { strategy }),
  metrics: (id: number) => request<Metrics>("GET", `${p(id)}/metrics`),
  checkpoints: (id: number) => request<Checkpoint[]>("GET", `${p(id)}/checkpoints`),
  saveCheckpoint: (id: number, name: string) => request<Checkpoint>("POST", `${p(id)}/checkpoints`, { name }),
  restore: (id: number, checkpointId: number) =>
    request<Job>("POST", `${p(id)}/checkpoints/${checkpointId}/restore`),
  compare: (id: number, a: number, b: number) =>
    request<Compare>("GET", `${p(id)}/checkpoints/compare?a=${a}&b=${b}`),
};

export const exportLinks = (id: number, aoiId: number | null) => ({
  labelsGeojson: `${p(id)}/labels/export.geojson`,
  labelsGpkg: `${p(id)}/labels/export.gpkg`,
  classesCog: aoiId ? `${p(id)}/aois/${aoiId}/export/classes.tif` : null,
  areasCsv: aoiId ? `${p(id)}/aois/${aoiId}/export/areas.csv` : null,
});

/** A download through fetch (it carries the access token, which a plain link cannot), saved under the server's name. */
export async function download(path: string): Promise<void> {
  const response = await send("GET", path);
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    throw new ApiError(response.status, (data && data.detail) || `GET ${path}: HTTP ${response.status}`);
  }
  const disposition = response.headers.get("content-disposition") ?? "";
  const name = /filename="?([^";]+)"?/.exec(disposition)?.[1] ?? path.split("/").pop() ?? "download";
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.addEventListener("click", (e) => e.stopPropagation()); // the page's own click handling leaves it alone
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
