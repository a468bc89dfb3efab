// Bundles the front-end into ../static/dist (served at /static): app.js + app.css, index.html, and
// MapLibre's worker and stylesheet and Swagger UI (/docs) copied from node_modules, so nothing is fetched from a
// CDN at run time.
import { build, context } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static", "dist");
const maplibre = join(here, "node_modules", "maplibre-gl", "dist");
const swagger = join(here, "node_modules", "swagger-ui-dist");
mkdirSync(out, { recursive: true });

const options = {
  entryPoints: [join(here, "src", "main.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  outfile: join(out, "app.js"),
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  logLevel: "info",
};

// The read-only pages, each its own small bundle (no sign-in code): a shared map (/share/<token>) and the public maps
// (/maps). share.js + share.css, maps.js + maps.css.
const pages = {
  ...options,
  entryPoints: { share: join(here, "src", "share.ts"), maps: join(here, "src", "maps.ts") },
  outfile: undefined,
  outdir: out,
};

function copyStatic() {
  copyFileSync(join(here, "src", "index.html"), join(out, "index.html"));
  for (const page of ["share.html", "maps.html"]) copyFileSync(join(here, "src", page), join(out, page));
  copyFileSync(join(maplibre, "maplibre-gl-worker.mjs"), join(out, "maplibre-gl-worker.mjs"));
  // /docs: Swagger UI from this origin (the app's CSP allows no CDN and no inline script).
  mkdirSync(join(out, "swagger"), { recursive: true });
  for (const file of ["swagger-ui-bundle.js", "swagger-ui.css"]) copyFileSync(join(swagger, file), join(out, "swagger", file));
  for (const file of ["docs.html", "docs.js"]) copyFileSync(join(here, "src", file), join(out, "swagger", file));
}

copyStatic();
if (process.argv.includes("--watch")) {
  for (const each of [options, pages]) await (await context(each)).watch();
} else {
  await Promise.all([build(options), build(pages)]);
}
