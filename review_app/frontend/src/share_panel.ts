// The owner's "Share" section of the map page: make a read-only link to the current maps of some AOIs (title,
// AOIs, days, listed on /maps or not), copy it (shown once, like an API token), list the project's links, revoke.
import { ApiError, shareApi, type ShareIssued, type ShareOut } from "./api";
import { on, state } from "./state";
import "./share.css";
import { $, esc, toast } from "./ui";

let shares: ShareOut[] = [];
let issued: ShareIssued | null = null;
let refused = ""; // why the list could not load (not an owner): the section says so instead of the form

const linkOf = (path: string) => new URL(path, location.href).toString();
let loadedFor: number | null = null; // the project whose links `shares` holds
const isOwner = () => state.project?.role === "owner";

export function mountSharePanel(): void {
  // Only owners may list links: the list is asked for once the project (and the caller's role in it) is known.
  on(["project", "aoi"], () => (isOwner() && loadedFor !== state.projectId ? void load() : render()));
  $("#share-panel").addEventListener("click", onClick);
  $("#share-panel").addEventListener("submit", onSubmit);
  render();
}

async function load(): Promise<void> {
  if (!state.projectId || !isOwner()) return render();
  loadedFor = state.projectId;
  try {
    shares = await shareApi.list(state.projectId);
    refused = "";
  } catch (error) {
    refused = error instanceof ApiError && error.status === 403 ? "Only the project's owners share its maps." : String(error);
  }
  render();
}

function render(): void {
  const box = document.getElementById("share-panel");
  if (!box) return;
  if (!isOwner() || refused) {
    box.innerHTML = `<p class="empty">${esc(refused || "Only the project's owners share its maps.")}</p>`;
    return;
  }
  const kept = typed(box);
  const mapped = (state.project?.aois ?? []).filter((a) => a.prediction && !a.prediction.partial);
  const aois = mapped.length
    ? mapped
        .map(
          (a) => `<label class="check"><input type="checkbox" name="aoi" value="${a.id}" ${a.id === state.aoiId ? "checked" : ""}
            data-testid="share-aoi-${a.id}">${esc(a.name)}</label>`,
        )
        .join("")
    : `<p class="empty">Predict an AOI first: a share freezes AOI maps.</p>`;
  const link = issued
    ? `<div class="share-link"><input readonly value="${esc(linkOf(issued.url))}" data-testid="share-link" aria-label="share link">
        <button type="button" class="btn btn-small" data-action="copy-share" data-testid="share-copy">Copy</button></div>
        <p class="hint">Shown once: copy it now.</p>`
    : "";
  box.innerHTML = `
    <form class="share-form" data-testid="share-form">
      <input type="text" name="title" placeholder="Title, e.g. Farm survey June" maxlength="120" required data-testid="share-title-input">
      <div class="share-aois">${aois}</div>
      <div class="row"><span class="row-label">Valid for</span><span><input type="number" name="days" value="30" min="1" max="3650"
        style="width:64px" data-testid="share-days"> days</span></div>
      <label class="check"><input type="checkbox" name="listed" data-testid="share-listed">List on the public maps page</label>
      <button class="btn btn-small btn-primary" type="submit" ${mapped.length ? "" : "disabled"} data-testid="share-create">Create link</button>
    </form>
    ${link}
    <ul class="share-list" data-testid="share-list">${shares.map(item).join("")}</ul>`;
  if (kept) restore(box, kept);
}

interface Typed {
  title: string;
  days: string;
  listed: boolean;
  aois: Set<string>;
}

/** What the owner typed so far: the section re-renders on every project change (a prediction, a new AOI). */
function typed(box: HTMLElement): Typed | null {
  const form = box.querySelector<HTMLFormElement>("form.share-form");
  if (!form) return null;
  const data = new FormData(form);
  return {
    title: String(data.get("title") ?? ""),
    days: String(data.get("days") ?? "30"),
    listed: data.get("listed") === "on",
    aois: new Set(data.getAll("aoi").map(String)),
  };
}

function restore(box: HTMLElement, kept: Typed): void {
  const form = box.querySelector<HTMLFormElement>("form.share-form");
  if (!form) return;
  (form.elements.namedItem("title") as HTMLInputElement).value = kept.title;
  (form.elements.namedItem("days") as HTMLInputElement).value = kept.days;
  (form.elements.namedItem("listed") as HTMLInputElement).checked = kept.listed;
  for (const input of form.querySelectorAll<HTMLInputElement>("input[name=aoi]")) input.checked = kept.aois.has(input.value);
}

function item(s: ShareOut): string {
  const live = s.state === "live";
  return `<li data-testid="share-item" data-share="${s.id}" data-state="${s.state}">
    <span class="${live ? "" : "revoked"}" title="${esc(`${s.area_ha.toFixed(1)} ha, until ${new Date(s.expires_at).toLocaleDateString()}`)}">
      ${esc(s.title)}${s.listed ? " · listed" : ""}${live ? "" : ` · ${s.state}`}</span>
    ${live ? `<button type="button" class="btn btn-small" data-action="revoke-share" data-id="${s.id}" data-testid="share-revoke">Revoke</button>` : ""}</li>`;
}

async function onSubmit(event: Event): Promise<void> {
  event.preventDefault();
  const form = event.target as HTMLFormElement;
  const data = new FormData(form);
  const aoiIds = data.getAll("aoi").map(Number);
  if (!aoiIds.length) return toast("Pick at least one AOI to share", "error");
  try {
    issued = await shareApi.create(state.projectId, {
      title: String(data.get("title") ?? "").trim(),
      aoi_ids: aoiIds,
      days: Number(data.get("days") || 30),
      listed: data.get("listed") === "on",
    });
    toast("Share link created", "success");
  } catch (error) {
    return toast(`Could not share: ${error instanceof Error ? error.message : error}`, "error");
  }
  await load();
}

async function onClick(event: Event): Promise<void> {
  const button = (event.target as HTMLElement).closest<HTMLElement>("[data-action]");
  if (!button) return;
  if (button.dataset.action === "copy-share" && issued) {
    const input = $("[data-testid=share-link]") as HTMLInputElement;
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
      toast("Link copied", "success");
    } catch {
      toast("Select the link and copy it (the browser refused the clipboard)", "info");
    }
  }
  if (button.dataset.action === "revoke-share") {
    const id = Number(button.dataset.id);
    try {
      await shareApi.revoke(state.projectId, id);
      if (issued?.id === id) issued = null;
      toast("Link revoked", "success");
    } catch (error) {
      toast(`Could not revoke: ${error instanceof Error ? error.message : error}`, "error");
    }
    await load();
  }
}
