// The projects page (`/` without ?project=): the signed-in user's projects (open, rename, delete), the new-project
// dialog (imagery from the local catalog, a configured STAC API's search or an upload; a starter model; an AOI to
// start with) and the members dialog (owners). Everything goes through the REST API (api.ts `projectsApi`).
import * as maplibregl from "maplibre-gl";
import "maplibre-gl/dist/maplibre-gl.css";
import "./projects.css";
import {
  api,
  imageUrl,
  projectsApi,
  type LocalCollection,
  type Member,
  type ProjectCreate,
  type ProjectListItem,
  type StacSearch,
  type Starter,
} from "./api";
import { authHeaders, signedInName, signOut } from "./auth";
import { mountUpload } from "./upload";
import { esc, timeAgo, toast } from "./ui";

type Bbox = [number, number, number, number];
type ImageryTab = "local" | "stac" | "upload";
const ROLES = ["viewer", "mapper", "owner"] as const;
const READY_WAIT_MS = 180000; // a start AOI waits this long for the new project's imagery mosaic

let root: HTMLElement;
let projects: ProjectListItem[] = [];

export async function mountProjectsPage(): Promise<void> {
  const app = document.getElementById("app");
  if (app) app.style.display = "none";
  root = document.createElement("div");
  root.id = "projects-page";
  root.setAttribute("data-testid", "projects-page");
  document.body.appendChild(root);
  root.addEventListener("click", onClick);
  root.addEventListener("keydown", onKey);
  await refresh();
}

async function refresh(): Promise<void> {
  projects = await projectsApi.list();
  render();
}

function imageryText(source: Record<string, unknown>): string {
  if (source.source === "stac") {
    const collections = (source.collections as string[] | undefined)?.join(", ") ?? "";
    return `STAC ${String(source.api ?? "default")} · ${collections}`;
  }
  return `local · ${String(source.collection ?? "")}`;
}

function render(): void {
  const name = signedInName();
  const user = name === null ? "" : `<span class="user-name" data-testid="user-name">${esc(name)}</span>
      <button class="btn btn-small" data-action="sign-out" data-testid="sign-out">Sign out</button>`;
  const rows = projects
    .map((p) => {
      const owner = p.role === "owner";
      return `<tr data-testid="project-row" data-id="${p.id}" data-name="${esc(p.name)}">
        <td class="pp-name"><a href="/?project=${p.id}" data-testid="project-open">${esc(p.name)}</a></td>
        <td>${esc(imageryText(p.imagery_source))}</td>
        <td class="num" data-testid="project-classes">${p.class_count}</td>
        <td class="num" data-testid="project-labels">${p.label_count}</td>
        <td class="num">${p.aoi_count}</td>
        <td title="${esc(new Date(p.last_activity).toLocaleString())}">${esc(timeAgo(p.last_activity))}</td>
        <td><span class="chip ${owner ? "chip-ok" : ""}" data-testid="project-role">${p.role}</span></td>
        <td class="pp-actions">
          <a class="btn btn-small" href="/?project=${p.id}">Open</a>
          ${owner ? `<button class="btn btn-small" data-action="rename" data-testid="project-rename">Rename</button>
          <button class="btn btn-small" data-action="members" data-testid="project-members">Members</button>
          <button class="btn btn-small pp-danger" data-action="delete" data-testid="project-delete">Delete</button>` : ""}
        </td></tr>`;
    })
    .join("");
  root.innerHTML = `
    <header class="pp-top">
      <div class="brand"><span class="logo"></span>PEARL<span class="brand-sub">land-cover mapping</span></div>
      <h1 class="pp-title">Projects</h1><span class="pp-spacer"></span>${user}
      <button class="btn btn-primary" data-action="new" data-testid="new-project">New project</button>
    </header>
    <main class="pp-main">
      ${projects.length ? `<table class="pp-table" data-testid="project-list">
        <thead><tr><th>Name</th><th>Imagery</th><th class="num">Classes</th><th class="num">Labels</th><th class="num">AOIs</th>
        <th>Last activity</th><th>Your role</th><th></th></tr></thead><tbody>${rows}</tbody></table>`
        : `<p class="empty pp-empty" data-testid="no-projects">No project yet: create one with “New project”.</p>`}
    </main>`;
}

function rowOf(el: HTMLElement): ProjectListItem | null {
  const id = Number(el.closest<HTMLElement>("[data-testid=project-row]")?.dataset.id);
  return projects.find((p) => p.id === id) ?? null;
}

function onClick(e: Event): void {
  const target = e.target as HTMLElement;
  const action = target.closest<HTMLElement>("[data-action]")?.dataset.action;
  const project = rowOf(target);
  switch (action) {
    case "new":
      return void openCreateDialog();
    case "sign-out":
      return void signOut();
    case "rename":
      return project ? startRename(project) : undefined;
    case "members":
      return project ? void openMembers(project) : undefined;
    case "delete":
      return project ? openDelete(project) : undefined;
  }
}

function onKey(e: KeyboardEvent): void {
  const input = e.target as HTMLElement;
  if (!(input instanceof HTMLInputElement) || input.dataset.testid !== "rename-input") return;
  const project = rowOf(input);
  if (e.key === "Escape") render();
  if (e.key === "Enter" && project) void saveRename(project, input.value.trim());
}

// -- rename and delete --------------------------------------------------------------------------------------------
function startRename(project: ProjectListItem): void {
  const cell = root.querySelector<HTMLElement>(`[data-id="${project.id}"] .pp-name`);
  if (!cell) return;
  cell.innerHTML = `<input class="pp-input" data-testid="rename-input" maxlength="120" value="${esc(project.name)}">
    <span class="hint">Enter to save, Esc to cancel</span>`;
  const input = cell.querySelector("input")!;
  input.focus();
  input.select();
}

async function saveRename(project: ProjectListItem, name: string): Promise<void> {
  if (!name || name === project.name) return render();
  try {
    await projectsApi.rename(project.id, name);
    toast(`Renamed to “${name}”`, "success");
    await refresh();
  } catch (error) {
    toast(`Rename failed: ${(error as Error).message}`, "error", 8000);
  }
}

function dialog(testid: string, html: string): HTMLDialogElement {
  document.querySelector(`dialog[data-testid=${testid}]`)?.remove();
  const el = document.createElement("dialog");
  el.className = "pp-dialog";
  el.setAttribute("data-testid", testid);
  el.innerHTML = html;
  document.body.appendChild(el);
  el.addEventListener("close", () => el.remove());
  el.showModal();
  return el;
}

function openDelete(project: ProjectListItem): void {
  const el = dialog(
    "delete-dialog",
    `<h2>Delete “${esc(project.name)}”?</h2>
    <p>It disappears for every member: its map, labels, AOIs and versions are no longer reachable here.
    Nothing is erased on the server (an operator can restore it). Type the project's name to confirm.</p>
    <input class="pp-input" data-testid="delete-confirm" autocomplete="off" placeholder="${esc(project.name)}">
    <p class="pp-error" data-testid="delete-error" hidden></p>
    <div class="pp-buttons"><button class="btn" data-close>Cancel</button>
    <button class="btn pp-danger" data-testid="delete-confirm-button" disabled>Delete project</button></div>`,
  );
  const input = el.querySelector<HTMLInputElement>("[data-testid=delete-confirm]")!;
  const button = el.querySelector<HTMLButtonElement>("[data-testid=delete-confirm-button]")!;
  input.addEventListener("input", () => (button.disabled = input.value !== project.name));
  el.querySelector("[data-close]")!.addEventListener("click", () => el.close());
  button.addEventListener("click", async () => {
    try {
      await projectsApi.remove(project.id, input.value);
      el.close();
      toast(`Deleted “${project.name}”`, "success");
      await refresh();
    } catch (error) {
      showError(el, "delete-error", (error as Error).message);
    }
  });
}

function showError(el: HTMLElement, testid: string, message: string): void {
  const box = el.querySelector<HTMLElement>(`[data-testid=${testid}]`);
  if (!box) return toast(message, "error", 8000);
  box.hidden = false;
  box.textContent = message;
}

// -- members ------------------------------------------------------------------------------------------------------
async function openMembers(project: ProjectListItem): Promise<void> {
  const el = dialog(
    "members-dialog",
    `<h2>Members of “${esc(project.name)}”</h2>
    <table class="pp-table pp-members"><thead><tr><th>Name</th><th>E-mail or subject</th><th>Role</th><th></th></tr></thead>
    <tbody data-testid="member-list"></tbody></table>
    <form class="pp-add-member" data-testid="add-member-form">
      <input class="pp-input" name="who" required maxlength="320" placeholder="e-mail (signed in once) or subject oidc:<issuer>#<sub>" data-testid="member-who">
      <select name="role" data-testid="member-role">${ROLES.map((r) => `<option ${r === "mapper" ? "selected" : ""}>${r}</option>`).join("")}</select>
      <button class="btn btn-primary btn-small" type="submit" data-testid="member-add">Add</button>
    </form>
    <p class="pp-error" data-testid="members-error" hidden></p>
    <div class="pp-buttons"><button class="btn" data-close>Done</button></div>`,
  );
  el.querySelector("[data-close]")!.addEventListener("click", () => el.close());
  const list = el.querySelector<HTMLElement>("[data-testid=member-list]")!;
  const show = (members: Member[]) => {
    el.querySelector<HTMLElement>("[data-testid=members-error]")!.hidden = true;
    list.innerHTML = members
      .map(
        (m) => `<tr data-testid="member-row" data-user="${m.id}" data-name="${esc(m.name)}">
        <td>${esc(m.name)}</td><td class="pp-muted">${esc(m.email ?? m.subject)}</td>
        <td><select data-testid="member-role-select" data-subject="${esc(m.subject)}">${ROLES.map((r) => `<option ${r === m.role ? "selected" : ""}>${r}</option>`).join("")}</select></td>
        <td><button class="btn btn-small" data-testid="member-remove" type="button">Remove</button></td></tr>`,
      )
      .join("");
  };
  const run = async (call: () => Promise<Member[]>) => {
    try {
      show(await call());
      void refresh(); // the list's roles (e.g. the caller's own) may have changed
    } catch (error) {
      const message = (error as Error).message;
      show(await projectsApi.members(project.id).catch(() => [])); // the selects show what is stored again
      showError(el, "members-error", message);
    }
  };
  await run(() => projectsApi.members(project.id));
  list.addEventListener("change", (e) => {
    const select = e.target as HTMLSelectElement;
    const role = select.value as (typeof ROLES)[number];
    void run(() => projectsApi.setMember(project.id, { subject: select.dataset.subject ?? "", role }));
  });
  list.addEventListener("click", (e) => {
    const row = (e.target as HTMLElement).closest<HTMLElement>("[data-testid=member-row]");
    if (!row || !(e.target as HTMLElement).closest("[data-testid=member-remove]")) return;
    void run(() => projectsApi.removeMember(project.id, Number(row.dataset.user)));
  });
  el.querySelector("form")!.addEventListener("submit", (e) => {
    e.preventDefault();
    const form = e.target as HTMLFormElement;
    const who = (form.elements.namedItem("who") as HTMLInputElement).value.trim();
    const role = (form.elements.namedItem("role") as HTMLSelectElement).value as (typeof ROLES)[number];
    const byEmail = who.includes("@") && !who.startsWith("oidc:");
    void run(async () => {
      const members = await projectsApi.setMember(project.id, byEmail ? { email: who, role } : { subject: who, role });
      form.reset();
      return members;
    });
  });
}

// -- the new-project dialog ---------------------------------------------------------------------------------------
interface Draft {
  tab: ImageryTab;
  collection: string | null;
  stac: { api: string; collections: string; bbox: Bbox; datetime: string | null; found: StacSearch } | null;
  starter: Starter | null;
  aoi: Bbox | null;
}

async function openCreateDialog(): Promise<void> {
  const draft: Draft = { tab: "local", collection: null, stac: null, starter: null, aoi: null };
  const el = dialog(
    "create-dialog",
    `<h2>New project</h2>
    <form class="pp-create" data-testid="create-form">
      <label class="pp-field"><span>Name</span><input class="pp-input" name="name" required maxlength="120" data-testid="new-project-name" autocomplete="off"></label>
      <div class="pp-grid">
        <section>
          <h3>Imagery</h3>
          <div class="segmented pp-tabs" data-testid="imagery-tabs">
            <span class="seg on" data-tab="local" data-testid="tab-local">Local catalog</span>
            <span class="seg" data-tab="stac" data-testid="tab-stac">STAC API</span>
            <span class="seg" data-tab="upload" data-testid="tab-upload">Upload</span>
          </div>
          <div data-pane="local"><ul class="pp-cards" data-testid="local-collections"><li class="empty">Loading…</li></ul></div>
          <div data-pane="stac" hidden>
            <div class="pp-row"><select data-testid="stac-api"></select>
              <input class="pp-input" data-testid="stac-collection" placeholder="collection, e.g. naip" list="stac-collections">
              <datalist id="stac-collections"></datalist></div>
            <div class="pp-row"><label>from <input type="date" data-testid="stac-from"></label>
              <label>to <input type="date" data-testid="stac-to"></label>
              <button class="btn btn-small" type="button" data-testid="stac-search">Search this view</button></div>
            <p class="hint">Searches the map's current view. The project mosaics every item found (newest on top).</p>
            <ul class="pp-thumbs" data-testid="stac-results"></ul>
          </div>
          <div data-pane="upload" hidden><div data-testid="upload-slot"></div></div>
        </section>
        <section>
          <div class="pp-map" data-testid="create-map"></div>
          <div class="pp-row"><button class="btn btn-small" type="button" data-testid="draw-aoi">Draw a start AOI</button>
            <button class="btn btn-small" type="button" data-testid="clear-aoi" hidden>No start AOI</button>
            <span class="hint" data-testid="aoi-hint">Optional: two clicks on the map for opposite corners.</span></div>
        </section>
      </div>
      <h3>Class schema and starter model</h3>
      <ul class="pp-cards" data-testid="starters"><li class="empty">Loading…</li></ul>
      <p class="pp-error" data-testid="create-error" hidden></p>
      <div class="pp-buttons"><button class="btn" type="button" data-close>Cancel</button>
        <button class="btn btn-primary" type="submit" data-testid="create-project">Create project</button></div>
    </form>`,
  );
  el.querySelector("[data-close]")!.addEventListener("click", () => el.close());
  const map = createDialogMap(el.querySelector<HTMLElement>("[data-testid=create-map]")!);
  el.addEventListener("close", () => map.remove());
  const $in = <T extends HTMLElement>(testid: string) => el.querySelector<T>(`[data-testid=${testid}]`)!;

  // Imagery tabs.
  const setTab = (tab: ImageryTab) => {
    draft.tab = tab;
    el.querySelectorAll<HTMLElement>("[data-tab]").forEach((t) => t.classList.toggle("on", t.dataset.tab === tab));
    el.querySelectorAll<HTMLElement>("[data-pane]").forEach((p) => (p.hidden = p.dataset.pane !== tab));
  };
  el.querySelector("[data-testid=imagery-tabs]")!.addEventListener("click", (e) => {
    const tab = (e.target as HTMLElement).closest<HTMLElement>("[data-tab]")?.dataset.tab as ImageryTab | undefined;
    if (tab) setTab(tab);
  });

  // Local collections: a card each, their footprints on the map.
  let collections: LocalCollection[] = [];
  const selectCollection = (id: string) => {
    draft.collection = id;
    el.querySelectorAll<HTMLElement>("[data-testid=local-collection]").forEach((c) =>
      c.classList.toggle("on", c.dataset.id === id),
    );
    const found = collections.find((c) => c.id === id);
    if (found?.bbox) map.fitBounds(found.bbox as Bbox, { padding: 20, duration: 0 });
    showFootprints(map, collections.filter((c) => c.bbox).map((c) => ({ bbox: c.bbox as Bbox, on: c.id === id })));
  };
  const loadCollections = async (select: string | null = null) => {
    collections = await projectsApi.localCollections();
    $in("local-collections").innerHTML =
      collections
        .map(
          (c) => `<li class="pp-card" data-testid="local-collection" data-id="${esc(c.id)}">
          <b>${esc(c.title)}</b><span class="pp-muted">${esc(c.id)} · ${c.item_count} item${c.item_count === 1 ? "" : "s"}${c.start ? ` · ${esc(c.start.slice(0, 10))}` : ""}</span></li>`,
        )
        .join("") || `<li class="empty">The local catalog is empty: use a STAC API or upload imagery.</li>`;
    const pick = select ?? draft.collection ?? collections[0]?.id ?? null;
    if (pick) map.once("idle", () => selectCollection(pick));
    if (pick) selectCollection(pick);
  };
  $in("local-collections").addEventListener("click", (e) => {
    const card = (e.target as HTMLElement).closest<HTMLElement>("[data-testid=local-collection]");
    if (card?.dataset.id) selectCollection(card.dataset.id);
  });

  // Upload (upload.ts): a new local collection, selected once ingested.
  mountUpload($in("upload-slot"), (collection) => {
    void loadCollections(collection).then(() => setTab("local"));
    toast(`Imagery “${collection}” is ready`, "success");
  });

  // STAC search over the map's view.
  void projectsApi.stacApis().then((apis) => {
    $in("stac-api").innerHTML = apis.map((a) => `<option value="${esc(a.id)}">${esc(a.id)}${a.default ? " (default)" : ""}</option>`).join("");
  });
  $in("stac-collection").addEventListener("focus", async () => {
    const list = el.querySelector("#stac-collections")!;
    if (list.childElementCount) return;
    try {
      const ids = await projectsApi.stacCollections($in<HTMLSelectElement>("stac-api").value);
      list.innerHTML = ids.map((id) => `<option value="${esc(id)}">`).join("");
    } catch {
      // the list is a convenience: a collection id can be typed
    }
  });
  $in("stac-search").addEventListener("click", async () => {
    const apiId = $in<HTMLSelectElement>("stac-api").value;
    const collection = $in<HTMLInputElement>("stac-collection").value.trim();
    const from = $in<HTMLInputElement>("stac-from").value;
    const to = $in<HTMLInputElement>("stac-to").value;
    const datetime = from || to ? `${from || ".."}/${to || ".."}` : null;
    const b = map.getBounds();
    const bbox: Bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
    const results = $in("stac-results");
    if (!collection) return showError(el, "create-error", "Name the STAC collection to search, e.g. naip.");
    results.innerHTML = `<li class="empty"><span class="spinner"></span>Searching…</li>`;
    try {
      const found = await projectsApi.stacSearch(apiId, collection, bbox, datetime);
      draft.stac = found.items.length ? { api: apiId, collections: collection, bbox, datetime, found } : null;
      results.innerHTML =
        found.items
          .map(
            (i) => `<li class="pp-thumb" data-testid="stac-item" data-id="${esc(i.id)}"><img alt="" data-src="${esc(i.thumbnail)}">
            <span>${esc(i.id)}</span><span class="pp-muted">${esc((i.datetime ?? "").slice(0, 10))}</span></li>`,
          )
          .join("") + (found.more ? `<li class="hint">More items match: zoom in or narrow the dates.</li>` : "") ||
        `<li class="empty" data-testid="stac-none">Nothing found in this view and these dates.</li>`;
      showFootprints(map, found.items.map((i) => ({ bbox: i.bbox as Bbox, on: true })));
      clearOverlays(map);
      found.items.forEach((item, n) => {
        const img = results.querySelector<HTMLImageElement>(`[data-testid=stac-item]:nth-child(${n + 1}) img`);
        imageUrl(item.thumbnail)
          .then((url) => {
            if (img) img.src = url;
            addOverlay(map, `thumb-${n}`, item.thumbnail, item.bbox as Bbox); // where each item lies, on the map
          })
          .catch(() => img?.classList.add("pp-broken"));
      });
    } catch (error) {
      draft.stac = null;
      results.innerHTML = `<li class="pp-error">${esc((error as Error).message)}</li>`;
    }
  });

  // The start AOI: two clicks on the map.
  let corner: [number, number] | null = null;
  let drawing = false;
  $in("draw-aoi").addEventListener("click", () => {
    drawing = true;
    corner = null;
    $in("aoi-hint").textContent = "Click one corner of the AOI, then the opposite one.";
  });
  $in("clear-aoi").addEventListener("click", () => {
    draft.aoi = null;
    showAoi(map, null);
    $in("clear-aoi").hidden = true;
    $in("aoi-hint").textContent = "Optional: two clicks on the map for opposite corners.";
  });
  map.on("click", (e) => {
    if (!drawing) return;
    const here: [number, number] = [e.lngLat.lng, e.lngLat.lat];
    if (!corner) {
      corner = here;
      $in("aoi-hint").textContent = "Now the opposite corner.";
      return;
    }
    draft.aoi = [Math.min(corner[0], here[0]), Math.min(corner[1], here[1]), Math.max(corner[0], here[0]), Math.max(corner[1], here[1])];
    drawing = false;
    showAoi(map, draft.aoi);
    $in("clear-aoi").hidden = false;
    $in("aoi-hint").textContent = "The project starts with this AOI.";
    el.setAttribute("data-aoi", draft.aoi.map((v) => v.toFixed(5)).join(","));
  });

  // Starters: schema and model together.
  void projectsApi.starters().then((starters) => {
    const usable = starters.filter((s) => s.available);
    draft.starter = usable[0] ?? starters[0] ?? null;
    $in("starters").innerHTML = starters
      .map(
        (s) => `<li class="pp-card ${s === draft.starter ? "on" : ""}" data-testid="starter" data-name="${esc(s.name)}">
        <b>${esc(s.class_schema_id)}</b> <span class="pp-muted">${s.class_titles.length} classes · ${esc(s.name)}</span>
        <span class="pp-f1" data-testid="starter-f1">${s.holdout_f1 === null || s.holdout_f1 === undefined ? "holdout F1 not known here" : `holdout F1 ${s.holdout_f1.toFixed(3)}`}</span>
        <span class="pp-muted">${s.available ? `ready (${s.source === "registry" ? `registered, v${esc(s.version)}` : "on this server"})` : "not registered on this server yet (pearl starter)"}</span>
        <span class="pp-classes">${s.class_titles.map(esc).join(", ")}</span></li>`,
      )
      .join("");
    $in("starters").addEventListener("click", (e) => {
      const card = (e.target as HTMLElement).closest<HTMLElement>("[data-testid=starter]");
      const chosen = starters.find((s) => s.name === card?.dataset.name);
      if (!chosen) return;
      draft.starter = chosen;
      el.querySelectorAll<HTMLElement>("[data-testid=starter]").forEach((c) => c.classList.toggle("on", c === card));
    });
  });
  await loadCollections();

  el.querySelector("form")!.addEventListener("submit", (e) => {
    e.preventDefault();
    void create(el, draft);
  });
}

function imageryOf(draft: Draft): ProjectCreate["imagery"] | string {
  if (draft.tab === "stac") {
    if (!draft.stac) return "Search a STAC API first, and find at least one item.";
    const s = draft.stac;
    return { source: "stac", api: s.api, collections: [s.collections], bbox: s.bbox, datetime: s.datetime };
  }
  if (!draft.collection) return "Choose a collection of the local catalog (or upload imagery).";
  return { source: "local", collection: draft.collection };
}

async function create(el: HTMLDialogElement, draft: Draft): Promise<void> {
  const name = el.querySelector<HTMLInputElement>("[data-testid=new-project-name]")!.value.trim();
  const imagery = imageryOf(draft);
  if (typeof imagery === "string") return showError(el, "create-error", imagery);
  if (!draft.starter) return showError(el, "create-error", "Choose a starter model.");
  const button = el.querySelector<HTMLButtonElement>("[data-testid=create-project]")!;
  button.disabled = true;
  button.innerHTML = `<span class="spinner"></span>Creating…`;
  try {
    const made = await projectsApi.create({
      name,
      imagery,
      class_schema: draft.starter.class_schema_id,
      base_model: draft.starter.base_model,
    });
    if (draft.aoi) {
      button.innerHTML = `<span class="spinner"></span>Preparing the imagery for the AOI…`;
      await createStartAoi(made.id, draft.aoi);
    }
    location.href = `/?project=${made.id}`;
  } catch (error) {
    button.disabled = false;
    button.textContent = "Create project";
    showError(el, "create-error", (error as Error).message);
  }
}

/** The start AOI, once the new project's imagery is ready (an AOI is drawn over imagery). */
async function createStartAoi(projectId: number, box: Bbox): Promise<void> {
  const [w, s, e, n] = box;
  const geometry = { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] };
  const deadline = Date.now() + READY_WAIT_MS;
  while (Date.now() < deadline) {
    const project = await api.project(projectId);
    if (project.imagery.state === "ready") {
      await api.createAoi(projectId, geometry, "start AOI");
      return;
    }
    if (project.imagery.state === "error") throw new Error(`the imagery failed: ${project.imagery.message}`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  toast("The imagery is still being prepared: draw the AOI on the map once it shows.", "info", 10000);
}

// -- the dialog's small map: footprints and the start AOI ---------------------------------------------------------
function createDialogMap(container: HTMLElement): maplibregl.Map {
  maplibregl.setWorkerUrl(new URL("/static/maplibre-gl-worker.mjs", location.href).toString());
  const map = new maplibregl.Map({
    container,
    style: {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#0b1120" } }],
    },
    center: [-76.41, 38.97],
    zoom: 11,
    attributionControl: false,
    // Thumbnails are fetched by the map from this app (the CSP allows no blob: fetch), with the access token.
    transformRequest: (url) =>
      new URL(url, location.href).origin === location.origin ? { url, headers: authHeaders() } : { url },
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "bottom-right");
  map.on("load", () => {
    for (const id of ["footprints", "aoi"]) map.addSource(id, { type: "geojson", data: EMPTY });
    map.addLayer({ id: "footprints-fill", type: "fill", source: "footprints", paint: { "fill-color": ["case", ["get", "on"], "#34d399", "#8797b3"], "fill-opacity": 0.15 } });
    map.addLayer({ id: "footprints-line", type: "line", source: "footprints", paint: { "line-color": ["case", ["get", "on"], "#34d399", "#8797b3"], "line-width": 1.5 } });
    map.addLayer({ id: "aoi-line", type: "line", source: "aoi", paint: { "line-color": "#fbbf24", "line-width": 2.5, "line-dasharray": [2, 1] } });
    (window as unknown as { __pearlCreateMap: maplibregl.Map }).__pearlCreateMap = map;
  });
  return map;
}

const EMPTY = { type: "FeatureCollection", features: [] } as GeoJSON.FeatureCollection;

function boxFeature(b: Bbox, properties: Record<string, unknown> = {}): GeoJSON.Feature {
  const [w, s, e, n] = b;
  return { type: "Feature", properties, geometry: { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] } };
}

function setData(map: maplibregl.Map, id: string, data: GeoJSON.FeatureCollection): void {
  const apply = () => (map.getSource(id) as maplibregl.GeoJSONSource | undefined)?.setData(data);
  if (map.getSource(id)) apply();
  else map.once("load", apply);
}

function showFootprints(map: maplibregl.Map, boxes: { bbox: Bbox; on: boolean }[]): void {
  setData(map, "footprints", { type: "FeatureCollection", features: boxes.map((b) => boxFeature(b.bbox, { on: b.on })) });
}

const overlays: string[] = [];

/** A thumbnail drawn over its item's lon/lat box, under the footprints (orientation, not a georeferenced image). */
function addOverlay(map: maplibregl.Map, id: string, path: string, [w, s, e, n]: Bbox): void {
  const url = new URL(path, location.href).toString();
  const add = () => {
    if (map.getSource(id)) return;
    map.addSource(id, { type: "image", url, coordinates: [[w, n], [e, n], [e, s], [w, s]] });
    map.addLayer({ id, type: "raster", source: id, paint: { "raster-opacity": 0.9 } }, "footprints-fill");
    overlays.push(id);
  };
  if (map.getLayer("footprints-fill")) add();
  else map.once("load", add);
}

function clearOverlays(map: maplibregl.Map): void {
  for (const id of overlays.splice(0)) {
    if (map.getLayer(id)) map.removeLayer(id);
    if (map.getSource(id)) map.removeSource(id);
  }
}

function showAoi(map: maplibregl.Map, box: Bbox | null): void {
  setData(map, "aoi", { type: "FeatureCollection", features: box ? [boxFeature(box)] : [] });
}
