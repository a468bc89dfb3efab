"""The review app's domain services, one job each; `review_app.container` builds and wires them.

| module | owns |
|---|---|
| `classes` | each project's class schema (cached) and class changes |
| `model_cache` | each project's loaded model: base model + current version |
| `project_imagery` | building a project's imagery mosaic in the background |
| `aois` | AOIs, inference over one, suggestions in one |
| `labels` | labels: add, delete, undo, export |
| `models` | model versions: retrain, checkpoints, restore |
| `projects` | projects: create, describe, warm up |
| `errors` | `Conflict`: valid request, project not ready for it (409) |

Services raise domain errors (`errors.Conflict`, `KeyError` for unknown ids, ...) that review_app/errors.py maps
to HTTP statuses; job bodies live in review_app/tasks.py and get only the stores and callbacks they use.
"""
