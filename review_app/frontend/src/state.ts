// One application state and a tiny topic-based change notifier (no framework needed at this size).
import type { Checkpoint, Compare, Job, LabelCollection, Metrics, Project, Strategy, StrategyName } from "./api";

export type Tool = "pan" | "point" | "polygon" | "erase" | "aoi" | "patch"; // patch: patches.ts
export type ImageryStyle = "true_color" | "false_color" | "off";
export type Topic = "project" | "labels" | "tool" | "class" | "layers" | "jobs" | "metrics" | "checkpoints" | "strategy" | "aoi" | "ws" | "suggestions";

export interface LayerSettings {
  imagery: ImageryStyle;
  predictions: boolean;
  predictionOpacity: number;
  confidence: boolean;
  confidenceOpacity: number;
  labels: boolean;
}

export const state = {
  projectId: 0,
  project: null as Project | null,
  labels: { type: "FeatureCollection", features: [] } as LabelCollection,
  tool: "pan" as Tool,
  selectedClass: "",
  aoiId: null as number | null,
  jobs: new Map<string, Job>(),
  metrics: null as Metrics | null,
  checkpoints: [] as Checkpoint[],
  strategy: null as Strategy | null, // how the next retrains fit their head, and the choices
  strategyPending: null as StrategyName | null, // sent by PUT /strategy, not answered yet: the selector waits
  compareIds: [] as number[],
  compare: null as Compare | null,
  layers: {
    imagery: "true_color",
    predictions: true,
    predictionOpacity: 0.65,
    confidence: false,
    confidenceOpacity: 0.8,
    labels: true,
  } as LayerSettings,
  // "Label here next" (suggestions.ts): whether the layer is on, a fetch is under way, and how many markers show.
  suggestions: { on: false, loading: false, count: 0 },
  wsConnected: false,
  lastUpdateSeconds: null as number | null,
};

const listeners = new Map<Topic, Set<() => void>>();

export function on(topics: Topic[], listener: () => void): void {
  for (const topic of topics) {
    if (!listeners.has(topic)) listeners.set(topic, new Set());
    listeners.get(topic)!.add(listener);
  }
}

export function emit(...topics: Topic[]): void {
  const called = new Set<() => void>();
  for (const topic of topics) {
    for (const listener of listeners.get(topic) ?? []) {
      if (!called.has(listener)) {
        called.add(listener);
        listener();
      }
    }
  }
}

export function classColor(name: string): string {
  return state.project?.classes.find((c) => c.name === name)?.color ?? "#ffffff";
}

export function labelCounts(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const f of state.labels.features) counts.set(f.properties.class_name, (counts.get(f.properties.class_name) ?? 0) + 1);
  return counts;
}

export function currentAoi() {
  return state.project?.aois.find((a) => a.id === state.aoiId) ?? null;
}

export function activeJob(kind?: Job["kind"]): Job | null {
  for (const job of state.jobs.values()) {
    if ((job.state === "queued" || job.state === "running") && (!kind || job.kind === kind)) return job;
  }
  return null;
}
