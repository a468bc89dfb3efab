// Imagery upload for the new-project dialog (issue 24 item 2): GeoTIFFs sent in chunks (resumed after a dropped
// connection or a reload), checked by the server, previewed, their bands mapped to red, green, blue and NIR where
// the file does not say, then ingested (pearl ingest's code) into a collection of the uploader's own.
// Routes: review_app/routers/uploads.py. The collection goes to `onUploaded` for the dialog to select.
import type { components } from "./api-types";
import { authEnabled, authHeaders, onUnauthorized } from "./auth";
import { esc } from "./ui";

type Upload = components["schemas"]["UploadOut"];
type Ingest = components["schemas"]["IngestOut"];
type BandMap = [number, number, number, number];

const ROLES = ["red", "green", "blue", "nir"] as const;
const RETRIES = 8; // per chunk: a dropped connection or a 429 is retried from what the server has

class UploadFailed extends Error {}

async function call(method: string, path: string, init: { body?: BodyInit; headers?: Record<string, string> } = {}) {
  const go = () => fetch(path, { method, body: init.body, headers: { ...authHeaders(), ...(init.headers ?? {}) } });
  const response = await go();
  if (response.status === 401 && authEnabled() && (await onUnauthorized())) return go();
  return response;
}

async function json<T>(method: string, path: string, body?: unknown): Promise<T> {
  const response = await call(method, path, {
    body: body === undefined ? undefined : JSON.stringify(body),
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new UploadFailed((data && data.detail) || `${method} ${path}: HTTP ${response.status}`);
  return data as T;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** One file of the form: its upload, row in the list, and chosen band mapping. */
class FileRow {
  upload: Upload | null = null;
  bands: BandMap | null = null;
  private previews = 0; // previews asked for: only the latest one's answer is shown (they may arrive out of order)
  readonly row: HTMLElement;
  private readonly bar: HTMLProgressElement;
  private readonly status: HTMLElement;
  private readonly extra: HTMLElement;

  constructor(
    readonly file: File,
    list: HTMLElement,
    private readonly changed: () => void,
  ) {
    this.row = document.createElement("li");
    this.row.className = "upload-file";
    this.row.dataset.testid = "upload-file";
    this.row.innerHTML =
      `<div><b>${esc(file.name)}</b> <span class="pp-muted">${(file.size / 2 ** 20).toFixed(1)} MiB</span></div>` +
      `<progress data-testid="upload-progress" max="1" value="0" style="width:100%"></progress>` +
      `<div data-testid="upload-status" class="hint">waiting</div><div class="upload-extra"></div>`;
    this.bar = this.row.querySelector("progress")!;
    this.status = this.row.querySelector("[data-testid=upload-status]")!;
    this.extra = this.row.querySelector(".upload-extra")!;
    list.appendChild(this.row);
  }

  get ready(): boolean {
    return this.upload?.state === "ready" && this.bands !== null;
  }

  private say(text: string, error = false): void {
    this.status.textContent = text;
    this.status.dataset.testid = error ? "upload-error" : "upload-status";
    this.status.className = error ? "pp-error" : "hint";
  }

  async send(): Promise<void> {
    try {
      this.upload = await this.resumeOrStart();
      let retries = 0;
      while (this.upload.state === "receiving") {
        const start = this.upload.received;
        const end = Math.min(start + this.upload.chunk_bytes, this.file.size);
        this.bar.value = start / this.file.size;
        this.say(`uploading ${Math.round((100 * start) / this.file.size)} %`);
        // A Blob body without a type: the request carries no Content-Type (the server takes raw bytes).
        const response = await call("PUT", `/api/uploads/${this.upload.id}`, {
          body: this.file.slice(start, end),
          headers: { "Content-Range": `bytes ${start}-${end - 1}/${this.file.size}` },
        }).catch(() => null);
        if (response?.ok) {
          this.upload = (await response.json()) as Upload;
          retries = 0;
          continue;
        }
        const detail = response ? ((await response.json().catch(() => null))?.detail ?? `HTTP ${response.status}`) : "";
        if (response && ![409, 429, 500, 502, 503, 504].includes(response.status)) throw new UploadFailed(detail);
        if (++retries > RETRIES) throw new UploadFailed(`the upload stopped: ${detail || "no connection"}`);
        const wait = Number(response?.headers.get("Retry-After") ?? 0) * 1000 || 500 * 2 ** Math.min(retries, 5);
        this.say(`connection lost; resuming in ${Math.round(wait / 1000)} s`);
        await sleep(wait);
        this.upload = await json<Upload>("GET", `/api/uploads/${this.upload.id}`); // resume where the server is
      }
      this.bar.value = 1;
      if (this.upload.state === "rejected") throw new UploadFailed(this.upload.error ?? "the file was refused");
      this.showChecked();
    } catch (err) {
      this.say(err instanceof Error ? err.message : String(err), true);
    }
    this.changed();
  }

  /** An unfinished upload of the same file (name and size) is resumed: a reload loses nothing sent. */
  private async resumeOrStart(): Promise<Upload> {
    const mine = await json<Upload[]>("GET", "/api/uploads");
    const same = mine.find((u) => u.filename === this.file.name && u.size === this.file.size && u.state !== "rejected");
    return same ?? json<Upload>("POST", "/api/uploads", { filename: this.file.name, size: this.file.size });
  }

  private showChecked(): void {
    const info = this.upload!.inspection!;
    this.bands = info.band_map ? (info.band_map.slice(0, 4) as BandMap) : null;
    const names = info.descriptions.map((d, i) => d || info.colorinterp[i] || "");
    const options = (chosen: number | undefined) =>
      `<option value="">-</option>` +
      names
        .map((n, i) => `<option value="${i + 1}"${chosen === i + 1 ? " selected" : ""}>${i + 1}${n ? ` ${esc(n)}` : ""}</option>`)
        .join("");
    const selects = ROLES.map(
      (role, k) =>
        `<label>${role.toUpperCase()} <select class="pp-input" data-testid="band-${role}">${options(this.bands?.[k])}</select></label>`,
    ).join(" ");
    this.extra.innerHTML =
      `<div class="pp-muted">${info.width} x ${info.height} px, ${info.count} bands ${esc(info.dtype)}, ${esc(info.crs)}</div>` +
      `<img data-testid="upload-preview" alt="preview of ${esc(this.file.name)}" width="160" style="display:block;margin:4px 0;image-rendering:pixelated">` +
      `<div class="pp-row">${selects}</div>` +
      (info.band_map ? "" : `<div class="hint" data-testid="band-note">${esc(info.band_note)}: choose the band of each colour</div>`);
    this.extra.querySelectorAll("select").forEach((select) => select.addEventListener("change", () => this.pick()));
    this.say(info.band_map ? "ready" : "ready: choose the bands", false);
    void this.preview();
  }

  private pick(): void {
    const chosen = ROLES.map((role) => Number(this.extra.querySelector<HTMLSelectElement>(`[data-testid=band-${role}]`)!.value));
    const complete = chosen.every((b) => b > 0) && new Set(chosen).size === 4;
    this.bands = complete ? (chosen as BandMap) : null;
    this.say(complete ? "ready" : "choose four different bands for red, green, blue and NIR", !complete);
    if (chosen.slice(0, 3).every((b) => b > 0)) void this.preview(chosen.slice(0, 3));
    this.changed();
  }

  private async preview(rgb?: number[]): Promise<void> {
    const img = this.extra.querySelector<HTMLImageElement>("img");
    if (!img || !this.upload) return;
    const query = rgb ? `?bands=${rgb.join(",")}` : "";
    const asked = ++this.previews;
    const response = await call("GET", `/api/uploads/${this.upload.id}/preview.png${query}`);
    if (!response.ok) return;
    const picture = await response.blob();
    if (asked !== this.previews) return; // a later choice of bands is on its way
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.dataset.bands = rgb ? rgb.join(",") : "";
    img.src = URL.createObjectURL(picture);
  }
}

export function mountUpload(el: HTMLElement, onUploaded: (collection: string) => void): void {
  el.innerHTML = `<div class="upload" data-testid="upload">
    <label class="pp-field"><span>GeoTIFF files: a CRS and 4 or more bands (red, green, blue, NIR)</span>
      <input type="file" accept=".tif,.tiff,image/tiff" multiple data-testid="upload-input"></label>
    <ul class="upload-files" style="list-style:none;padding:0"></ul>
    <div class="pp-row"><input class="pp-input" type="text" maxlength="80" placeholder="name of the imagery"
        data-testid="upload-name" aria-label="name of the imagery">
      <button class="btn btn-small btn-primary" type="button" data-testid="upload-ingest" disabled>Add imagery</button></div>
    <progress data-testid="ingest-progress" max="1" value="0" style="width:100%" hidden></progress>
    <div data-testid="ingest-status" class="hint"></div>
  </div>`;
  const input = el.querySelector<HTMLInputElement>("[data-testid=upload-input]")!;
  const list = el.querySelector<HTMLElement>(".upload-files")!;
  const nameInput = el.querySelector<HTMLInputElement>("[data-testid=upload-name]")!;
  const button = el.querySelector<HTMLButtonElement>("[data-testid=upload-ingest]")!;
  const bar = el.querySelector<HTMLProgressElement>("[data-testid=ingest-progress]")!;
  const status = el.querySelector<HTMLElement>("[data-testid=ingest-status]")!;
  let rows: FileRow[] = [];
  let busy = false;
  const update = () => {
    button.disabled = busy || rows.length === 0 || !rows.every((r) => r.ready) || !nameInput.value.trim();
  };
  nameInput.addEventListener("input", update);

  input.addEventListener("change", () => {
    const files = Array.from(input.files ?? []);
    if (!files.length) return;
    list.innerHTML = "";
    rows = files.map((file) => new FileRow(file, list, update));
    if (!nameInput.value) nameInput.value = files[0].name.replace(/\.tiff?$/i, "");
    status.textContent = "";
    update();
    void (async () => {
      for (const row of rows) await row.send(); // one file at a time: the bandwidth goes to one progress bar
    })();
  });

  button.addEventListener("click", async () => {
    busy = true;
    update();
    bar.hidden = false;
    status.className = "hint";
    try {
      const files = rows.map((r) => ({ upload_id: r.upload!.id, band_map: r.bands }));
      let job = await json<Ingest>("POST", "/api/uploads/ingests", { name: nameInput.value.trim(), files });
      while (job.state === "queued" || job.state === "running") {
        bar.value = job.progress;
        status.textContent = `adding imagery: ${job.message}`;
        await sleep(500);
        job = await json<Ingest>("GET", `/api/uploads/ingests/${job.id}`);
      }
      if (job.state === "failed") throw new UploadFailed(job.error ?? "the ingest failed");
      bar.value = 1;
      status.textContent = `added as ${job.collection}`;
      status.dataset.collection = job.collection;
      onUploaded(job.collection);
    } catch (err) {
      status.textContent = err instanceof Error ? err.message : String(err);
      status.className = "pp-error";
      busy = false;
      update();
    }
  });
}
