"""Retraining: fit a new 1x1 head on cached embeddings under the user's labels (+ a replay set).

The backbone is frozen; a retrain reads embeddings from the area's cache (no forward pass) and fits
from scratch on the whole label set, so adding a class just means a head with one more row (PEARL's
warm-started SGD crashed there). Classes are only ever appended or renamed, never removed or
reordered: class index i is pixel value i in every map already written.

Which labels are accepted:
- at least one label; each a Point/Polygon (or Multi-) with a class_name, in any CRS, inside the cached area;
- class names of the parent schema, or new ones listed in `new_classes` with their colour;
- labels of a single class are fine when the replay set brings other classes; otherwise at least two
  classes are needed (a classifier needs something to tell apart).
Classes with no sample at all (not labelled, not in the replay set) cannot be learned: their head row
gets zero weight and a very low bias, so they are never predicted; the version's info lists them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from pydantic import ValidationError

from pearl_pipelines.classes import ClassDef, ClassSchema
from pearl_pipelines.ml.embeddings import EmbeddingCache, sample_embeddings
from pearl_pipelines.ml.errors import RetrainError
from pearl_pipelines.ml.heads import head_logits
from pearl_pipelines.ml.metrics import compute_metrics, grouped_cross_val_predict
from pearl_pipelines.ml.replay import ReplaySet
from pearl_pipelines.ml.samples import SamplingConfig, labels_to_samples, sample_on_grid, validate_labels
from pearl_pipelines.ml.strategies import (
    STRATEGIES,
    UNLEARNED_BIAS,
    LogisticRegressionHead,
    RetrainStrategy,
    make_strategy,
)
from pearl_pipelines.ml.versions import ModelVersion, label_set_digest, new_version_id

__all__ = [
    "STRATEGIES",
    "LogisticRegressionHead",
    "RetrainError",
    "RetrainOptions",
    "RetrainStrategy",
    "evolve_schema",
    "make_strategy",
    "rename_classes",
    "retrain",
]


@dataclass(frozen=True)
class RetrainOptions:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Replay weight of a class nobody labelled, relative to the labels of an average labelled class.
    replay_weight: float = 1.0
    # Replay weight of a class the user labelled, relative to that class's labels: small, since the labels
    # describe this imagery and the replay set another (a shifted domain's replay pulls the head back).
    labelled_replay_weight: float = 0.1
    # A labelled class with fewer samples than the average labelled class is up-weighted towards that
    # average, by at most this factor: a new class clicked with a few points then competes with classes
    # labelled with polygons (hundreds of pixels each) instead of vanishing. 1 turns it off.
    max_class_boost: float = 20.0
    # Share of the replay set to use, chosen per retrain by grouped CV on the user's labels among
    # `replay_scales` (it multiplies every replay weight; 0 drops the set). A fixed `replay_scale` skips the
    # choice. On real imagery full replay cost ~8 points of accuracy at 50 clicks (bench/real_imagery.py).
    replay_scales: tuple[float, ...] = (0.0, 0.3, 1.0)
    # Replay samples per class a fit uses (a seeded subset; the class keeps its total weight): 100 of the 500
    # a starter keeps fit 10x faster (0.05 s instead of 0.6 s for 9 classes x 228 channels) for the same head.
    replay_per_class: int | None = 100
    replay_scale: float | None = None
    # Whether the fit is centred on the replay set's prior head (the starter's zero-shot map), so a few clicks
    # correct that map instead of replacing it (strategies with `centres_on_prior`). None chooses by grouped CV
    # with the replay share: with 10-25 labels that CV is too noisy to beat always centring (bench/real_imagery.py).
    prior: bool | None = True
    cv_folds: int = 5
    seed: int = 0
    evaluate: bool = True


def _class_def(name: str, spec: str | Mapping[str, Any] | ClassDef) -> ClassDef:
    if isinstance(spec, ClassDef):
        return spec
    fields = {"color": spec} if isinstance(spec, str) else dict(spec)
    fields.setdefault("title", name.replace("_", " ").title())
    try:
        return ClassDef(name=name, **fields)
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors())
        raise RetrainError(f"new class {name!r} cannot be added: {problems}") from None


def evolve_schema(
    schema: ClassSchema,
    *,
    add: Mapping[str, str | Mapping[str, Any] | ClassDef] | None = None,
    rename: Mapping[str, str] | None = None,
    remove: Sequence[str] = (),
) -> ClassSchema:
    """A child schema: classes renamed in place (index kept) and new classes appended. Removal is refused."""
    if remove:
        raise RetrainError(
            f"classes cannot be removed ({', '.join(remove)}): class index i is pixel value i in every map "
            "already written. Rename a class instead, or stop labelling it"
        )
    classes = list(schema.classes)
    for old, new in (rename or {}).items():
        idx = schema.index(old) if old in schema.names else None
        if idx is None:
            raise RetrainError(f"cannot rename {old!r}: not in schema {schema.id!r} ({', '.join(schema.names)})")
        try:
            classes[idx] = ClassDef.model_validate({**classes[idx].model_dump(by_alias=True), "name": new})
        except ValidationError as exc:
            raise RetrainError(f"cannot rename {old!r} to {new!r}: {exc.errors()[0]['msg']}") from None
    classes += [_class_def(name, spec) for name, spec in (add or {}).items() if name not in schema.names]
    try:
        return schema.model_copy(update={"classes": ClassSchema(id=schema.id, classes=classes).classes})
    except ValidationError as exc:
        raise RetrainError(f"invalid class schema: {exc.errors()[0]['msg']}") from None


def rename_classes(version: ModelVersion, rename: Mapping[str, str]) -> ModelVersion:
    """A child version with renamed classes and the same head (no retrain needed)."""
    return dataclasses.replace(
        version,
        id=new_version_id(),
        parent_id=version.id,
        schema=evolve_schema(version.schema, rename=rename),
        strategy="rename",
        strategy_params={"rename": dict(rename)},
        info={"renamed": dict(rename)},
    )


def _schema_for_labels(
    parent: ClassSchema, names: Sequence[str], new_classes: Mapping[str, str | Mapping[str, Any] | ClassDef]
) -> ClassSchema:
    unknown = sorted(set(names) - set(parent.names))
    missing = [n for n in unknown if n not in new_classes]
    if missing:
        example = ", ".join(f"{n!r}: '#rrggbb'" for n in missing)
        raise RetrainError(
            f"label class(es) {', '.join(map(repr, missing))} not in schema {parent.id!r} "
            f"({', '.join(parent.names)}); to add them as new classes pass new_classes={{{example}}}"
        )
    return evolve_schema(parent, add={n: new_classes[n] for n in unknown})


def retrain(
    parent: ModelVersion,
    cache: EmbeddingCache | Sequence[EmbeddingCache],
    labels: gpd.GeoDataFrame,
    *,
    replay: ReplaySet | None = None,
    strategy: RetrainStrategy | None = None,
    new_classes: Mapping[str, str | Mapping[str, Any] | ClassDef] | None = None,
    options: RetrainOptions | None = None,
) -> ModelVersion:
    """Fit a new head for `parent` on the labels' cached embeddings (+ replay); returns the child version.

    `cache` may be several caches (e.g. every AOI of a project): each label is sampled in every cache
    it falls in, and labels outside all of them are counted in `info["labels_outside_area"]`.
    """
    options = options or RetrainOptions()
    strategy = strategy or LogisticRegressionHead()
    labels = validate_labels(labels)
    caches = [cache] if isinstance(cache, EmbeddingCache) else list(cache)
    for c in caches:
        if c.meta.backbone_digest != parent.base_model_id:
            raise RetrainError(
                f"the embedding cache {c.directory} was made by backbone {c.meta.backbone_digest}, but version "
                f"{parent.id} uses backbone {parent.base_model_id}: predict the area with this model (with embeddings)"
            )
    if replay is not None and replay.backbone_digest and replay.backbone_digest != parent.base_model_id:
        raise RetrainError(f"the replay set was made by backbone {replay.backbone_digest}, not {parent.base_model_id}")
    schema = _schema_for_labels(parent.schema, labels["class_name"].unique().tolist(), new_classes or {})
    if strategy.uses_xy and len({c.meta.crs_wkt for c in caches}) > 1:
        raise RetrainError(
            f"strategy {strategy.name!r} places labels on the map, but the areas are in different CRSs; "
            f"use {LogisticRegressionHead.name!r} or label areas of one imagery collection"
        )
    x_user, xy_user, names, group_ids, outside = _sample_caches(caches, labels, options.sampling)
    index = {name: i for i, name in enumerate(schema.names)}
    y_user = np.array([index[n] for n in names], dtype=np.int64)
    groups = pd.factorize(pd.Series(group_ids).astype(str))[0]
    w_user = _user_weights(y_user, len(schema), options.max_class_boost)
    user_totals = np.bincount(y_user, weights=w_user, minlength=len(schema))
    x_replay, y_replay, w_replay = _replay_arrays(replay, schema, user_totals, options, x_user.shape[1])

    if len(np.unique(np.concatenate([y_user, y_replay]))) < 2:
        raise RetrainError(
            f"all labels are of class {schema.names[y_user[0]]!r} and no replay set brings other classes: "
            "label at least two classes"
        )
    channel_groups = caches[0].meta.channel_groups
    prior = _prior(replay, schema, options, strategy)
    reference = _reference_pixels(caches, options.seed) if prior is not None else None

    # A parent fitted around the same prior is where the solver starts (the live loop: a few labels more each time).
    warm_start = (
        (parent.weight, parent.bias, parent.prior_scale)
        if prior is not None and parent.prior_scale is not None and parent.weight.shape == prior[0].shape
        else None
    )
    xy_replay = np.full((len(y_replay), 2), np.nan)  # replay samples come from elsewhere: no position here

    def fit(train: np.ndarray | slice, choice: Choice) -> Fitted:
        """The head on `train`'s labels, and the scale a centred fit gave the prior (None when not centred)."""
        scale, centred = choice
        keep = slice(None) if scale > 0 else slice(0)  # scale 0: no replay at all
        x_train = np.concatenate([x_user[train], x_replay[keep]])
        y_train = np.concatenate([y_user[train], y_replay[keep]])
        w_train = np.concatenate([w_user[train], scale * w_replay[keep]])
        if centred:
            assert prior is not None and strategy.centres_on_prior
            weight, bias, prior_scale = strategy.fit_centred(
                x_train,
                y_train,
                prior,
                sample_weight=w_train,
                channel_groups=channel_groups,
                reference=reference,
                start=warm_start,
            )
            return weight, bias, {}, prior_scale
        if len(np.unique(y_train)) < 2:  # a fold with one class and no replay can only predict that class
            weight = np.zeros((len(schema), x_user.shape[1]), np.float32)
            bias = np.full(len(schema), UNLEARNED_BIAS, np.float32)
            bias[y_train[0]] = 0.0
            return weight, bias, {}, None
        head = strategy.fit(
            x_train,
            y_train,
            len(schema),
            sample_weight=w_train,
            seed=options.seed,
            channel_groups=channel_groups,
            xy=np.concatenate([xy_user[train], xy_replay[keep]]),
        )
        return *head, None

    def cross_validate(choice: Choice) -> tuple[np.ndarray, list[str]]:
        def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            weight, bias, extra, _ = fit(train, choice)
            return np.argmax(head_logits(weight, bias, extra, x_user[test], xy_user[test]), axis=1)

        return grouped_cross_val_predict(y_user, groups, fit_predict, n_splits=options.cv_folds, seed=options.seed)

    scales = _replay_candidates(options, has_replay=len(y_replay) > 0, user_classes=len(np.unique(y_user)))
    centring = (False,) if prior is None else (True, False) if options.prior is None else (options.prior,)
    choices = [(s, c) for c in centring for s in scales]
    folds = {c: cross_validate(c) for c in choices} if options.evaluate or len(choices) > 1 else {}
    (scale, centred), replay_cv = _choose(y_user, folds, choices)
    weight, bias, head_extra, prior_scale = fit(slice(None), (scale, centred))
    y_all = np.concatenate([y_user, y_replay if scale > 0 else y_replay[:0]])
    learned = set(y_all.tolist()) | (set(range(len(replay.class_names))) if centred and replay else set())

    info: dict[str, Any] = {
        "seed": options.seed,
        "n_labels": int(labels["label_id"].nunique()),
        "n_user_samples": len(y_user),
        "n_replay_samples": len(y_replay) if scale > 0 else 0,
        "replay_cv_accuracy": replay_cv,
        "prior_centred": centred,
        "labels_outside_area": outside,
        # A centred fit keeps what the prior knows of classes nobody labelled.
        "unlearned_classes": [n for i, n in enumerate(schema.names) if i not in learned],
        "options": dataclasses.asdict(options),
    }
    metrics = None
    if options.evaluate:
        predicted, notes = folds[(scale, centred)]
        held_out = predicted >= 0
        info["metric_notes"] = notes
        if held_out.any():
            method = f"grouped_cv:{options.cv_folds}"
            metrics = compute_metrics(y_user[held_out], predicted[held_out], schema.names, method=method, notes=notes)
    return ModelVersion(
        id=new_version_id(),
        parent_id=parent.id,
        base_model_id=parent.base_model_id,
        schema=schema,
        weight=weight,
        bias=bias,
        head_extra=head_extra,
        strategy=strategy.name,
        strategy_params=strategy.params(),
        label_set_digest=label_set_digest(labels),
        metrics=metrics,
        info=info,
        replay_scale=scale,
        # How far the labels trust the prior's logits (centred fits; 1 = as registered).
        prior_scale=None if prior_scale is None else round(prior_scale, 4),
        new_classes=[n for n in schema.names if n not in parent.schema.names],
    )


Prior = tuple[np.ndarray, np.ndarray]  # (K, C) weight, (K,) bias of the starter's zero-shot head
Choice = tuple[float, bool]  # replay scale, centred on the prior
Fitted = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], float | None]  # head (ml/heads.py), prior's scale


def _prior(
    replay: ReplaySet | None, schema: ClassSchema, options: RetrainOptions, strategy: RetrainStrategy
) -> Prior | None:
    """The replay set's prior head over `schema` (zero rows for classes added since), if a retrain can use it."""
    if replay is None or replay.prior_weight is None or replay.prior_bias is None or options.prior is False:
        return None
    if not strategy.centres_on_prior:  # the strategy says whether it can fit around a prior head
        return None
    known = len(replay.class_names)
    weight = np.zeros((len(schema), replay.prior_weight.shape[1]), np.float32)
    bias = np.zeros(len(schema), np.float32)
    weight[:known], bias[:known] = replay.prior_weight, replay.prior_bias
    return weight, bias


def _replay_candidates(options: RetrainOptions, *, has_replay: bool, user_classes: int) -> tuple[float, ...]:
    """Replay scales worth cross-validating: none without a replay set; never 0 for one-class labels."""
    if not has_replay:
        return (0.0,)
    scales = options.replay_scales if options.replay_scale is None else (options.replay_scale,)
    return tuple(s for s in scales if s > 0 or user_classes >= 2) or (max(scales),)


def _reference_pixels(caches: Sequence[EmbeddingCache], seed: int, n: int = 2000) -> np.ndarray:
    """Embeddings of up to `n` random valid pixels of the caches: the imagery's own feature statistics, which a
    handful of clicks cannot estimate."""
    rng = np.random.default_rng(seed)
    out = []
    for cache in caches:
        rows, cols = rng.integers(0, cache.shape[0], n), rng.integers(0, cache.shape[1], n)
        inside = np.asarray(cache.valid[rows, cols]) > 0
        out.append(sample_embeddings(cache, rows[inside], cols[inside]))
    pixels = np.concatenate(out)
    return pixels[rng.permutation(len(pixels))[:n]]


def _choose(
    y_user: np.ndarray, folds: Mapping[Choice, tuple[np.ndarray, list[str]]], choices: Sequence[Choice]
) -> tuple[Choice, dict[str, float]]:
    """The (replay scale, centred) whose grouped-CV accuracy on the user's own labels is highest (ties: centred
    on the prior, then more replay, which keep unlabelled classes alive); with no held-out labels, the first
    such choice, as before selection existed.

    Selection uses the same folds for every choice, so the chosen retrain is never worse in grouped CV
    than the same retrain without replay (scale 0 is a candidate whenever the labels have two classes)."""
    accuracy = {}
    for choice, (predicted, _) in folds.items():
        held_out = predicted >= 0
        if held_out.any():
            accuracy[choice] = float((predicted[held_out] == y_user[held_out]).mean())
    preference = sorted(choices, key=lambda c: (c[1], c[0]), reverse=True)
    if not accuracy:
        return preference[0], {}
    best = max(accuracy.values())
    chosen = next(c for c in preference if c in accuracy and accuracy[c] >= best - 1e-12)
    return chosen, {_choice_key(c): round(acc, 4) for c, acc in accuracy.items()}


def _choice_key(choice: Choice) -> str:
    return f"{choice[0]:g}" + ("+prior" if choice[1] else "")


def _sample_caches(
    caches: Sequence[EmbeddingCache], labels: gpd.GeoDataFrame, sampling: SamplingConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(embeddings float32, map coordinates, class names, group ids, labels outside every cache) of labels."""
    if len(caches) == 1:  # the one-cache case keeps labels_to_samples' error message with the cache bounds
        c = caches[0]
        one = labels_to_samples(
            labels, crs=c.crs, transform=c.transform, shape=c.shape, config=sampling, validate=False
        )
        x, xy = sample_embeddings(c, one.rows, one.cols), c.xy(one.rows, one.cols)
        return x, xy, one.class_names, one.groups, one.labels_outside
    found = [
        (c, sample_on_grid(labels, crs=c.crs, transform=c.transform, shape=c.shape, config=sampling)) for c in caches
    ]
    found = [(c, s) for c, s in found if len(s)]
    if not found:
        raise RetrainError(
            f"none of the {labels['label_id'].nunique()} labels falls inside the {len(caches)} areas with "
            "embeddings; label inside an area under review, or predict the area the labels are in first"
        )
    inside = set().union(*(s.groups.tolist() for _, s in found))
    return (
        np.concatenate([sample_embeddings(c, s.rows, s.cols) for c, s in found]),
        np.concatenate([c.xy(s.rows, s.cols) for c, s in found]),
        np.concatenate([s.class_names for _, s in found]),
        np.concatenate([s.groups for _, s in found]),
        labels["label_id"].nunique() - len(inside),
    )


def _user_weights(y_user: np.ndarray, n_classes: int, max_boost: float) -> np.ndarray:
    """Per-sample weights of the user's samples: 1, or more for classes with fewer samples than average."""
    counts = np.bincount(y_user, minlength=n_classes).astype(np.float64)
    labelled = counts > 0
    boost = np.ones(n_classes)
    boost[labelled] = np.clip(counts[labelled].mean() / counts[labelled], 1.0, max(max_boost, 1.0))
    return boost[y_user].astype(np.float32)


def _replay_arrays(
    replay: ReplaySet | None,
    schema: ClassSchema,
    user: np.ndarray,
    options: RetrainOptions,
    channels: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay embeddings, labels and sample weights, weighted per class against `user`, the user's
    (weighted) sample count per class (see `RetrainOptions`)."""
    if replay is None or len(replay) == 0:
        return np.empty((0, channels), np.float32), np.empty(0, np.int64), np.empty(0, np.float32)
    if replay.embeddings.shape[1] != channels:
        raise RetrainError(f"replay embeddings have {replay.embeddings.shape[1]} channels, the cache has {channels}")
    if len(replay.class_names) > len(schema):
        raise RetrainError(f"replay set has {len(replay.class_names)} classes, more than schema {schema.id!r}")
    x, y = replay.embeddings, replay.labels.astype(np.int64)
    if options.replay_per_class:
        rng = np.random.default_rng(options.seed)
        keep = np.concatenate(
            [rng.permutation(np.flatnonzero(y == c))[: options.replay_per_class] for c in np.unique(y)]
        )
        x, y = x[np.sort(keep)], y[np.sort(keep)]
    labelled = user > 0
    # Total replay weight per class: a share of the class's own labels where the user labelled it, else
    # that of an average labelled class, so unlabelled classes neither vanish nor swamp the user's labels.
    total = np.where(labelled, options.labelled_replay_weight * user, options.replay_weight * user[labelled].mean())
    per_sample = total / np.maximum(np.bincount(y, minlength=len(schema)), 1)
    return x.astype(np.float32), y, per_sample[y].astype(np.float32)
