// What the mapper can do: each action calls the API, updates the state, and says what went wrong if it did.
import { api, ApiError, type Geometry, type Job, type StrategyName } from "./api";
import { fitToAoi, mapView, markUpdateRequested } from "./map";
import { addPatch } from "./patches";
import { currentAoi, emit, state, type Tool } from "./state";
import { toast } from "./ui";

function fail(error: unknown, what?: string): void {
  const message = error instanceof ApiError ? error.message : String(error);
  toast(what ? `${what}: ${message}` : message, "error", 7000);
}

async function guarded<T>(work: () => Promise<T>, what?: string): Promise<T | undefined> {
  try {
    return await work();
  } catch (error) {
    fail(error, what);
    return undefined;
  }
}

export const actions = {
  async loadProject(): Promise<void> {
    const project = await api.project(state.projectId);
    const first = state.project === null;
    // A renamed class keeps its index: stay on it (the rename may arrive here before its own answer does).
    const selectedIndex = state.project?.classes.findIndex((c) => c.name === state.selectedClass) ?? -1;
    state.project = project;
    if (!project.classes.some((c) => c.name === state.selectedClass)) {
      state.selectedClass = (project.classes[selectedIndex] ?? project.classes[0])?.name ?? "";
    }
    if (state.aoiId === null || !project.aois.some((a) => a.id === state.aoiId)) {
      state.aoiId = project.aois.length ? project.aois[project.aois.length - 1].id : null;
    }
    emit("project", "class", "aoi");
    if (first) emit("layers");
  },

  async loadLabels(): Promise<void> {
    state.labels = await api.labels(state.projectId);
    emit("labels");
  },

  async loadModelPanels(): Promise<void> {
    const [metrics, checkpoints] = await Promise.all([api.metrics(state.projectId), api.checkpoints(state.projectId)]);
    state.metrics = metrics;
    state.checkpoints = checkpoints;
    state.compareIds = state.compareIds.filter((id) => checkpoints.some((c) => c.id === id));
    emit("metrics", "checkpoints");
  },

  /** The project's retrain strategy and the choices; a failure leaves the selector out, not the app. */
  async loadStrategy(): Promise<void> {
    const strategy = await guarded(() => api.strategy(state.projectId), "Could not load the retrain strategy");
    if (strategy && state.strategyPending === null) state.strategy = strategy;
    emit("strategy");
  },

  /** Store the strategy of the next retrains; if refused, the selector shows the stored one again. */
  async setStrategy(name: StrategyName): Promise<void> {
    if (!state.strategy || state.strategyPending !== null || state.strategy.strategy === name) return emit("strategy");
    state.strategyPending = name;
    emit("strategy");
    const saved = await guarded(() => api.setStrategy(state.projectId, name), "Retrain strategy not changed");
    state.strategyPending = null;
    if (saved) {
      state.strategy = saved;
      toast(`Next retrains use: ${strategyTitle(saved.strategy)}`, "success", 3000);
    }
    emit("strategy");
  },

  setTool(tool: Tool): void {
    if (tool !== "pan" && tool !== "aoi" && !state.project?.aois.length) {
      toast("Draw an AOI first (tool A): labels go inside an area the model has predicted", "info");
      tool = "aoi";
    }
    state.tool = tool;
    emit("tool");
  },

  selectClass(name: string): void {
    state.selectedClass = name;
    if (state.tool === "pan" || state.tool === "erase" || state.tool === "aoi") state.tool = "point";
    emit("class", "tool");
  },

  selectAoi(id: number): void {
    state.aoiId = id;
    emit("aoi");
  },

  /** Store a label of the selected class; true once it is stored. */
  async addLabel(geometry: Geometry): Promise<boolean> {
    if (!state.selectedClass) {
      toast("Pick a class first (keys 1-9)", "info");
      return false;
    }
    const label = await guarded(() => api.addLabel(state.projectId, state.selectedClass, geometry, null));
    if (!label) return false;
    state.labels.features.push(label);
    if (label.properties.aoi_id !== null && label.properties.aoi_id !== state.aoiId) {
      state.aoiId = label.properties.aoi_id;
      emit("aoi");
    }
    emit("labels");
    return true;
  },

  /** The Patch tool's polygon: fill it with the selected class, or paint in a checkpoint's map (patches.ts). */
  addPatch,

  async deleteLabel(id: number): Promise<void> {
    if (await guarded(() => api.deleteLabel(state.projectId, id))) {
      state.labels.features = state.labels.features.filter((f) => f.id !== id);
      emit("labels");
    }
  },

  async undo(): Promise<void> {
    const result = await guarded(() => api.undo(state.projectId));
    if (!result) return;
    if (!result.undone) return toast("Nothing to undo", "info", 2000);
    await actions.loadLabels();
    toast(result.restored ? "Label restored" : "Label removed", "info", 2000);
  },

  async addClass(name: string, color: string, title?: string): Promise<boolean> {
    const classes = await guarded(() => api.addClass(state.projectId, name, color, title));
    if (!classes || !state.project) return false;
    state.project.classes = classes;
    actions.selectClass(name);
    emit("project");
    toast(`Class “${title || name}” added: label it, then retrain`, "success", 4000);
    return true;
  },

  async updateClass(name: string, change: { name?: string; title?: string; color?: string }): Promise<void> {
    const index = state.project?.classes.findIndex((c) => c.name === state.selectedClass) ?? -1;
    const classes = await guarded(() => api.updateClass(state.projectId, name, change));
    if (!classes || !state.project) return;
    state.project.classes = classes;
    if (index >= 0 && classes[index]) state.selectedClass = classes[index].name;
    if (change.name) await actions.loadLabels();
    emit("project", "class", "labels");
  },

  async createAoi(geometry: Geometry): Promise<void> {
    const aoi = await guarded(() => api.createAoi(state.projectId, geometry));
    if (!aoi || !state.project) return;
    state.project.aois.push(aoi);
    state.aoiId = aoi.id;
    state.tool = "point";
    emit("project", "aoi", "tool");
    fitToAoi(aoi);
    toast(`${aoi.name} (${aoi.area_km2.toFixed(2)} km²) added: predicting it now`, "success", 3000);
    await actions.runInference();
  },

  async runInference(): Promise<void> {
    const aoi = currentAoi();
    if (!aoi) return toast("Draw an AOI first (tool A)", "info");
    const job = await guarded(() => api.inference(state.projectId, aoi.id, mapView()));
    if (job) trackJob(job);
  },

  async retrain(): Promise<void> {
    // The view: of a large AOI, the block in view is re-predicted and shown first.
    const job = await guarded(() => api.retrain(state.projectId, state.aoiId, mapView()));
    if (!job) return;
    trackJob(job);
    markUpdateRequested(state.aoiId);
  },

  async saveCheckpoint(name: string): Promise<boolean> {
    const saved = await guarded(() => api.saveCheckpoint(state.projectId, name));
    if (!saved) return false;
    toast(`Checkpoint “${name}” saved`, "success", 3000);
    await actions.loadModelPanels();
    return true;
  },

  async restore(id: number): Promise<void> {
    const job = await guarded(() => api.restore(state.projectId, id));
    if (job) trackJob(job);
  },

  async toggleCompare(id: number): Promise<void> {
    const ids = state.compareIds.includes(id) ? state.compareIds.filter((x) => x !== id) : [...state.compareIds, id].slice(-2);
    state.compareIds = ids;
    state.compare = ids.length === 2 ? ((await guarded(() => api.compare(state.projectId, ids[0], ids[1]))) ?? null) : null;
    emit("checkpoints");
  },
};

/** A strategy's title as GET /strategy lists it (from the registry, pearl_pipelines/ml/strategies.py). */
export function strategyTitle(name: string): string {
  return state.strategy?.available.find((o) => o.name === name)?.title ?? name.replaceAll("_", " ");
}

export function trackJob(job: Job): void {
  const known = state.jobs.get(job.id);
  if (known && known.state !== "queued") return; // the websocket was faster than the HTTP answer
  state.jobs.set(job.id, job);
  emit("jobs");
}
