// REST client: typed wrappers around /api; every call carries the signed-in user's access token in OIDC mode
// (auth.ts). The types are generated, never copied by hand: review_app/schemas.py -> the app's OpenAPI schema
// (python -m review_app.openapi -> ../openapi.json) -> openapi-typescript (npm run gen:types -> api-types.ts);
// `make types` runs both, and tests/review_app/test_generated_types.py fails when either file is stale. Only
// where the schema says "any object" (GeoJSON geometries, label properties) does a type below say more.
import type { components } from "./api-types";
import { authEnabled, authHeaders, onUnauthorized } from "./auth";

type Schemas = components["schemas"];

/** A GeoJSON geometry (the schema's `geometry` is a free-form object). */
export type Geometry = { type: string; coordinates: unknown };

export type ClassOut = Schemas["ClassOut"];
export type TileJsonLinks = Schemas["TileJsonLinks"];
export type PredictionLayer = Schemas["PredictionLayer"];
export type Aoi = Omit<Schemas["AoiOut"], "geometry"> & { geometry: Geometry };
export type Project = Omit<Schemas["ProjectOut"], "aois"> & { aois: Aoi[] };
export type ProjectSummary = Schemas["ProjectSummary"];
export type Job = Schemas["JobOut"];
export type ClassMetric = Schemas["ClassMetric"];
export type Metrics = Schemas["MetricsOut"];
export type Checkpoint = Schemas["CheckpointOut"];
export type Compare = Schemas["CompareOut"];
export type Me = Schemas["UserOut"];

/** The properties the label store gives every label (the schema's `properties` is a free-form object). */
export interface LabelProperties {
  class_name: string;
  aoi_id: number | null;
  geom_type: string;
  created_at: string | null;
  color?: string;
}
export type LabelFeature = Omit<Schemas["LabelFeature"], "geometry" | "properties"> & {
  geometry: Geometry;
  properties: LabelProperties;
};
export type LabelCollection = Omit<Schemas["LabelCollection"], "features"> & { features: LabelFeature[] };
export type Undo = Omit<Schemas["UndoOut"], "undone"> & { undone: LabelFeature | null };

/** The registry's strategies (pearl_pipelines/ml/strategies.py): the enum of the schema, titles from GET /strategy. */
export type StrategyName = Schemas["StrategyIn"]["strategy"];
export type Strategy = Schemas["StrategyOut"];

export type SuggestionMethod = Schemas["SuggestionCollection"]["method"];
export type SuggestionFeature = Omit<Schemas["SuggestionFeature"], "geometry"> & {
  geometry: { type: "Point"; coordinates: [number, number] };
};
export type SuggestionCollection = Omit<Schemas["SuggestionCollection"], "features"> & { features: SuggestionFeature[] };

/** A message of the project websocket (review_app/schemas.py `WsEvent`), discriminated by `type`. */
export type WsEvent = Schemas["WsEvent"];
export type InferenceRequest = Schemas["InferenceRequest"];
export type RetrainRequest = Schemas["RetrainRequest"];
export type View = NonNullable<InferenceRequest["view"]>;

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

export const api = {
  me: () => request<Me>("GET", "/api/me"),
  projects: () => request<ProjectSummary[]>("GET", "/api/projects"),
  project: (id: number) => request<Project>("GET", p(id)),
  labels: (id: number) => request<LabelCollection>("GET", `${p(id)}/labels`),
  addLabel: (id: number, class_name: string, geometry: Geometry, aoi_id: number | null) =>
    request<LabelFeature>("POST", `${p(id)}/labels`, { class_name, geometry, aoi_id }),
  deleteLabel: (id: number, labelId: number) => request<LabelFeature>("DELETE", `${p(id)}/labels/${labelId}`),
  undo: (id: number) => request<Undo>("POST", `${p(id)}/labels/undo`),
  addClass: (id: number, name: string, color: string, title?: string) =>
    request<ClassOut[]>("POST", `${p(id)}/classes`, { name, color, title }),
  updateClass: (id: number, name: string, change: { name?: string; title?: string; color?: string }) =>
    request<ClassOut[]>("PATCH", `${p(id)}/classes/${encodeURIComponent(name)}`, change),
  createAoi: (id: number, geometry: Geometry, name = "") => request<Aoi>("POST", `${p(id)}/aois`, { geometry, name }),
  /** `view`: the map's lon/lat bounds (west, south, east, north); the AOI's block nearest its centre shows first. */
  inference: (id: number, aoiId: number, view: View | null = null) =>
    request<Job>("POST", `${p(id)}/aois/${aoiId}/inference`, { view } satisfies InferenceRequest),
  suggestions: (id: number, aoiId: number, n: number, method: SuggestionMethod = "margin") =>
    request<SuggestionCollection>("GET", `${p(id)}/aois/${aoiId}/suggestions?n=${n}&method=${method}`),
  /** `view`: the map's lon/lat bounds; of a large AOI, the block around its centre is re-predicted and shown first. */
  retrain: (id: number, aoiId: number | null, view: View | null = null) =>
    request<Job>("POST", `${p(id)}/retrain`, { aoi_id: aoiId, view } satisfies RetrainRequest),
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

export type ShareOut = Schemas["ShareOut"];
export type ShareIssued = Schemas["ShareIssued"];
export type ShareCreate = Schemas["ShareCreate"];

/** Read-only share links of a project (owners; share_panel.ts). */
export const shareApi = {
  list: (id: number) => request<ShareOut[]>("GET", `${p(id)}/shares`),
  create: (id: number, body: ShareCreate) => request<ShareIssued>("POST", `${p(id)}/shares`, body),
  revoke: (id: number, shareId: number) => request<ShareOut>("DELETE", `${p(id)}/shares/${shareId}`),
};

export type CompareMaps = Schemas["CompareMapsOut"];
export type CompareMapsRequest = Schemas["CompareMapsRequest"];

/** Two versions as maps (compare.ts): the change table (409 until the maps are made) and the job that makes them. */
export const compareApi = {
  versions: (id: number) => request<Checkpoint[]>("GET", `${p(id)}/checkpoints?all_versions=true`),
  change: (id: number, q: CompareMapsRequest) =>
    request<CompareMaps>(
      "GET",
      `${p(id)}/compare?aoi=${q.aoi}&a=${q.a}&b=${q.b}${q.aoi_b ? `&aoi_b=${q.aoi_b}` : ""}${q.project_b ? `&project_b=${q.project_b}` : ""}`,
    ),
  aois: (id: number) => request<Aoi[]>("GET", `${p(id)}/aois`),
  prepare: (id: number, q: CompareMapsRequest) => request<Job>("POST", `${p(id)}/compare`, q),
  job: (jobId: string) => request<Job>("GET", `/api/jobs/${encodeURIComponent(jobId)}`),
};

export type ProjectListItem = Schemas["ProjectListItem"];
export type LocalCollection = Schemas["LocalCollectionOut"];
export type StacApi = Schemas["StacApiOut"];
export type StacSearch = Schemas["StacSearchOut"];
export type Starter = Schemas["StarterOut"];
export type Member = Schemas["MemberOut"];
export type MemberIn = Schemas["MemberIn"];
export type ProjectCreate = Schemas["ProjectCreate"];

/** The projects page (projects.ts): the list, create, rename, delete, members, and what a project is made of. */
export const projectsApi = {
  list: () => request<ProjectListItem[]>("GET", "/api/projects"),
  create: (body: ProjectCreate) => request<Project>("POST", "/api/projects", body),
  rename: (id: number, name: string) => request<Project>("PATCH", p(id), { name }),
  remove: (id: number, confirm: string) =>
    request<ProjectSummary>("DELETE", `${p(id)}?confirm=${encodeURIComponent(confirm)}`),
  members: (id: number) => request<Member[]>("GET", `${p(id)}/members`),
  setMember: (id: number, body: MemberIn) => request<Member[]>("PUT", `${p(id)}/members`, body),
  removeMember: (id: number, userId: number) => request<Member[]>("DELETE", `${p(id)}/members/${userId}`),
  localCollections: () => request<LocalCollection[]>("GET", "/api/imagery/local"),
  stacApis: () => request<StacApi[]>("GET", "/api/imagery/stac"),
  stacCollections: (api: string) => request<string[]>("GET", `/api/imagery/stac/${encodeURIComponent(api)}/collections`),
  stacSearch: (api: string, collections: string, bbox: number[], datetime: string | null) =>
    request<StacSearch>(
      "GET",
      `/api/imagery/stac/${encodeURIComponent(api)}/search?collections=${encodeURIComponent(collections)}` +
        `&bbox=${bbox.map((v) => v.toFixed(6)).join(",")}${datetime ? `&datetime=${encodeURIComponent(datetime)}` : ""}`,
    ),
  starters: () => request<Starter[]>("GET", "/api/starters"),
};

export type PatchOut = Omit<Schemas["PatchOut"], "geometry"> & { geometry: Geometry };
export type PatchCreate = Schemas["PatchCreate"];
export type PatchChange = Omit<Schemas["PatchChangeOut"], "patch"> & { patch: PatchOut | null };

/** Map patches (patches.ts): hand corrections drawn over the maps; changes answer with the job re-applying them. */
export const patchApi = {
  list: (id: number) => request<PatchOut[]>("GET", `${p(id)}/patches`),
  create: (id: number, body: PatchCreate) => request<PatchChange>("POST", `${p(id)}/patches`, body),
  remove: (id: number, patchId: number) => request<PatchChange>("DELETE", `${p(id)}/patches/${patchId}`),
  undo: (id: number) => request<PatchChange>("POST", `${p(id)}/patches/undo`),
  asLabels: (id: number, patchId: number) => request<LabelCollection>("POST", `${p(id)}/patches/${patchId}/labels`),
};

/** An image of this app fetched with the access token (an <img src> cannot carry it), as an object URL. */
export async function imageUrl(path: string): Promise<string> {
  const response = await send("GET", path);
  if (!response.ok) throw new ApiError(response.status, `GET ${path}: HTTP ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

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
