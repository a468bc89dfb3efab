// The public-maps page (/maps): the share links their owners chose to list (GET /api/public-maps), newest first.
import "./style.css";
import "./share.css";
import type { components } from "./api-types";
import { esc } from "./ui";

type PublicMap = components["schemas"]["PublicMapOut"];

async function main(): Promise<void> {
  const response = await fetch("/api/public-maps", { credentials: "omit", cache: "no-store" });
  const list = document.getElementById("public-maps")!;
  if (!response.ok) {
    list.innerHTML = `<p class="empty">The list could not load (HTTP ${response.status}).</p>`;
    return;
  }
  const maps = (await response.json()) as PublicMap[];
  list.innerHTML = maps.length
    ? maps
        .map(
          (m) => `<a class="map-card" href="${esc(m.url)}" data-testid="public-map">
            <span class="map-card-title">${esc(m.title)}</span>
            <span class="hint">${m.area_ha.toLocaleString(undefined, { maximumFractionDigits: 1 })} ha · shared ${esc(new Date(m.created_at).toLocaleDateString())}</span></a>`,
        )
        .join("")
    : `<p class="empty" data-testid="public-maps-empty">No public maps yet. Owners list a map when they share it.</p>`;
}

main().catch((error) => {
  document.getElementById("public-maps")!.innerHTML = `<p class="empty">The list could not load: ${esc(error)}</p>`;
});
