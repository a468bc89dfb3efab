// Entry point: pick the project, mount panels and map, load data, connect the websocket, bind shortcuts.
import "./style.css";
import { api } from "./api";
import { actions } from "./actions";
import { authEnabled, setDisplayName, startAuth } from "./auth";
import { cancelSketch, createMap, finishSketch, removeLastVertex } from "./map";
import { mountPanels } from "./panels";
import { mountPatchLayer } from "./patches";
import { mountProjectsPage } from "./projects";
import { emit, state } from "./state";
import { mountSuggestions, toggleSuggestions } from "./suggestions";
import { $, toast } from "./ui";
import { connect } from "./ws";

async function main(): Promise<void> {
  if (!(await startAuth())) return; // on the way to the identity provider, or showing the sign-in screen
  if (authEnabled()) setDisplayName((await api.me()).name);
  // `/`: the projects page (projects.ts); `/?project=N`: that project's map.
  const params = new URLSearchParams(location.search);
  if (!params.has("project")) return mountProjectsPage();
  const wanted = Number(params.get("project"));
  const projects = await api.projects();
  if (!projects.some((p) => p.id === wanted)) {
    await mountProjectsPage();
    return toast(`Project ${params.get("project")} is not one of your projects (or it was deleted).`, "error", 10000);
  }
  state.projectId = wanted;
  mountPanels();
  const map = createMap($("#map"), actions);
  mountSuggestions(map);
  mountPatchLayer(map); // patches.ts: outlines of the map patches in force
  await Promise.all([actions.loadProject(), actions.loadLabels(), actions.loadModelPanels(), actions.loadStrategy()]);
  connect();
  bindKeys();
  emit("project", "jobs", "tool", "layers");
}

function bindKeys(): void {
  document.addEventListener("keydown", (e) => {
    const target = e.target as HTMLElement;
    const typing = target.closest("textarea, select, [contenteditable]") ||
      (target instanceof HTMLInputElement && !["checkbox", "radio", "range", "button"].includes(target.type));
    if (typing) return; // keys are text there, not shortcuts
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
      e.preventDefault();
      return void actions.undo();
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const classes = state.project?.classes ?? [];
    if (/^[1-9]$/.test(e.key)) {
      const c = classes[Number(e.key) - 1];
      if (c) actions.selectClass(c.name);
      return;
    }
    switch (e.key) {
      case "Escape":
        cancelSketch();
        return actions.setTool("pan");
      case "Enter":
        return void finishSketch();
      case "Backspace":
        return removeLastVertex();
      case "p":
      case "P":
        return actions.setTool("point");
      case "g":
      case "G":
        return actions.setTool("polygon");
      case "e":
      case "E":
        return actions.setTool("erase");
      case "a":
      case "A":
        return actions.setTool("aoi");
      case "h":
      case "H":
        return actions.setTool("patch"); // patches.ts: hand corrections of the map
      case "n":
      case "N":
        return void toggleSuggestions();
      case "r":
      case "R":
        return void actions.retrain();
      case "t":
      case "T":
        state.layers.predictions = !state.layers.predictions;
        return emit("layers");
    }
  });
}

main().catch((error) => toast(`The app could not start: ${error}`, "error", 60000));
