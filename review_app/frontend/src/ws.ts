// The project websocket: every progress figure and map update arrives here (the page never polls). Its messages
// are the `WsEvent` union of review_app/schemas.py, typed by the generated api-types.ts.
import type { Job, WsEvent } from "./api";
import { actions } from "./actions";
import { renew, withAccessToken } from "./auth";
import { fitToImagery } from "./map";
import { emit, state } from "./state";
import { toast } from "./ui";

let retryMs = 500;

export function connect(): void {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(withAccessToken(`${scheme}://${location.host}/api/projects/${state.projectId}/ws`));
  socket.onopen = () => {
    retryMs = 500;
    state.wsConnected = true;
    emit("ws");
  };
  socket.onclose = (event) => {
    state.wsConnected = false;
    emit("ws");
    if (event.code === 4403 || event.code === 4404) {
      // Refused for good (no role, or no such project for this user): retrying cannot help.
      toast(`Live updates refused: ${event.reason || "no access to this project"}`, "error", 10000);
      return;
    }
    if (event.code === 4401) void renew(); // not signed in (an expired token): the next try takes a new one
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 8000);
  };
  socket.onmessage = (message) => void handle(JSON.parse(message.data) as WsEvent);
}

async function handle(event: WsEvent): Promise<void> {
  switch (event.type) {
    case "hello":
      for (const job of event.active_jobs) state.jobs.set(job.id, job);
      emit("jobs");
      // Catch up on anything that happened while the socket was down.
      await Promise.all([actions.loadProject(), actions.loadLabels(), actions.loadModelPanels(), actions.loadStrategy()]);
      break;
    case "job":
      onJob(event);
      break;
    case "prediction_updated": {
      const aoi = state.project?.aois.find((a) => a.id === event.aoi_id);
      if (!aoi) return actions.loadProject();
      // A partial layer is the block in view (a new AOI's first block, or a retrain's first re-predicted block):
      // shown at once (map.ts draws it over the AOI's previous layer), the whole AOI follows as the next version.
      aoi.prediction = {
        version: event.version,
        model_version: event.model_version,
        tilejson: event.tilejson,
        embeddings: event.embeddings,
        partial: event.partial,
      };
      if (state.project && event.model_version !== null) state.project.model.current_version = event.model_version;
      emit("project");
      break;
    }
    case "imagery_ready":
      await actions.loadProject();
      fitToImagery();
      break;
    case "model_status":
      await Promise.all([actions.loadProject(), actions.loadModelPanels()]);
      break;
    case "metrics_updated":
      await actions.loadModelPanels();
      break;
    case "labels_changed":
      await actions.loadLabels();
      break;
    case "classes_changed":
      await actions.loadProject();
      break;
    case "error":
      if (!event.job_id) toast(event.message, "error", 7000);
      break;
  }
}

async function onJob(job: Job): Promise<void> {
  const before = state.jobs.get(job.id);
  state.jobs.set(job.id, job);
  emit("jobs");
  if (before?.state === job.state || (job.state !== "done" && job.state !== "failed")) return;
  if (job.state === "failed") {
    toast(job.error ?? `${job.kind} failed`, "error", 8000);
  } else if (job.kind !== "imagery") {
    toast(job.message, "success", 3500);
    if (job.kind !== "inference") await actions.loadModelPanels();
    await actions.loadProject();
  }
  setTimeout(() => {
    state.jobs.delete(job.id);
    emit("jobs");
  }, 4000);
}
