// "Upload AOI" in the AOI section of the left panel: a GeoJSON, GeoPackage, KML or zipped Shapefile (any CRS) becomes
// one AOI per feature or one AOI of all features (the mapper's choice), named by an attribute or the file's name.
// POST /api/projects/{id}/aois/upload (multipart); every refusal (a limit and its setting, a bad file) is a toast.
import type { components } from "./api-types";
import { type Aoi, ApiError } from "./api";
import { actions } from "./actions";
import { authEnabled, authHeaders, onUnauthorized } from "./auth";
import { fitToAoi } from "./map";
import { emit, state } from "./state";
import { $, toast } from "./ui";

type Grouping = components["schemas"]["Body_upload_aois_api_projects__project_id__aois_upload_post"]["grouping"];
const ACCEPT = ".geojson,.json,.gpkg,.kml,.zip";

export function mountAoiUpload(): void {
  const box = $("#aoi-upload");
  box.innerHTML = `
    <div class="aoi-upload" data-testid="aoi-upload">
      <label class="btn btn-small" title="GeoJSON, GeoPackage, KML or a zipped Shapefile, in any CRS">Upload AOI…
        <input type="file" accept="${ACCEPT}" hidden data-testid="aoi-upload-file"></label>
      <select class="aoi-upload-grouping" data-testid="aoi-upload-grouping" title="How the file's features become AOIs">
        <option value="per_feature">one AOI per feature</option>
        <option value="one">all features as one AOI</option>
      </select>
      <input class="aoi-upload-name" type="text" maxlength="100" placeholder="name attribute (optional)"
        title="The attribute that names each AOI (default: 'name', else the file's name)" data-testid="aoi-upload-name-field">
    </div>`;
  const input = box.querySelector<HTMLInputElement>("input[type=file]")!;
  input.addEventListener("change", () => {
    const file = input.files?.[0];
    input.value = ""; // the same file can be chosen again after a fix
    if (file) void uploadAoiFile(file);
  });
}

async function post(form: FormData): Promise<Response> {
  const call = () => fetch(`/api/projects/${state.projectId}/aois/upload`, { method: "POST", headers: authHeaders(), body: form });
  const response = await call();
  if (response.status === 401 && authEnabled() && (await onUnauthorized())) return call();
  return response;
}

export async function uploadAoiFile(file: File): Promise<void> {
  const grouping = ($("#aoi-upload").querySelector<HTMLSelectElement>("select")!.value || "per_feature") as Grouping;
  const nameField = $("#aoi-upload").querySelector<HTMLInputElement>(".aoi-upload-name")!.value.trim();
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("grouping", grouping);
  if (nameField) form.append("name_field", nameField);
  toast(`Reading ${file.name}…`, "info", 2000);
  let aois: Aoi[];
  try {
    const response = await post(form);
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data?.detail || `upload refused (HTTP ${response.status})`);
    aois = data as Aoi[];
  } catch (error) {
    toast(`${file.name}: ${error instanceof Error ? error.message : String(error)}`, "error", 9000);
    return;
  }
  if (!state.project || !aois.length) return;
  state.project.aois.push(...aois);
  const first = aois[0];
  state.aoiId = first.id;
  emit("project", "aoi");
  fitToAoi(first);
  const what = aois.length === 1 ? `${first.name} (${first.area_km2.toFixed(2)} km²)` : `${aois.length} AOIs`;
  toast(`${what} added from ${file.name}: predicting ${first.name} now`, "success", 4000);
  await actions.runInference();
}
