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

function copyStatic() {
  copyFileSync(join(here, "src", "index.html"), join(out, "index.html"));
  copyFileSync(join(maplibre, "maplibre-gl-worker.mjs"), join(out, "maplibre-gl-worker.mjs"));
  // /docs: Swagger UI from this origin (the app's CSP allows no CDN and no inline script).
  mkdirSync(join(out, "swagger"), { recursive: true });
  for (const file of ["swagger-ui-bundle.js", "swagger-ui.css"]) copyFileSync(join(swagger, file), join(out, "swagger", file));
  for (const file of ["docs.html", "docs.js"]) copyFileSync(join(here, "src", file), join(out, "swagger", file));
}

copyStatic();
if (process.argv.includes("--watch")) {
  const ctx = await context(options);
  await ctx.watch();
} else {
  await build(options);
}
