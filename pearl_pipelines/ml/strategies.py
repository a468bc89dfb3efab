"""Retraining strategies: how a head is fitted on cached embeddings. Pluggable by name (`make_strategy`).

A strategy is one class in one place: a `RetrainStrategy` subclass with its `name`, `title` and `description`,
listed once in `STRATEGIES`. The registry feeds everything else: the review app's API (the strategy enum of its
OpenAPI schema and the options GET /strategy lists with their titles and descriptions), the front-end (its types
are generated from that schema; the page renders the listed options) and the retrain (`make_strategy`; whether a
fit is centred on the starter's prior is the strategy's own `centres_on_prior` / `fit_centred`).

The seed's three trade-offs, one strategy each (figures in the README, from bench/real_imagery.py):
- `logistic_regression`: linear, refit from scratch in tens of milliseconds; the default.
- `mlp`: one hidden layer; more capacity, seconds per fit, needs more labels before it pays.
- `spatial_ensemble`: local linear heads, one per neighbourhood of labels, blended by distance, with the global
  head where no labels are near: for areas whose look changes across the map.

Every strategy standardises features for its solver and folds the scaling back into the head, so heads apply
to raw embeddings (ml/heads.py).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import Bounds, minimize
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from pearl_pipelines.ml.errors import RetrainError
from pearl_pipelines.ml.threads import single_threaded

ChannelGroups = Mapping[str, tuple[int, int]]
HeadFit = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]  # weight, bias, extra arrays (ml/heads.py)
CentredHead = tuple[np.ndarray, np.ndarray, float]  # (K, C) weight, (K,) bias on raw embeddings, the prior's scale

# Bias of a class that has no training sample: exp(-1e4) is 0, so it is never predicted.
UNLEARNED_BIAS = -1e4


@dataclass(frozen=True)
class FitData:
    """What a strategy fits on: float64 embeddings, labels 0..P-1 of the classes present, per-sample weights,
    the embedding's feature groups and the samples' map coordinates (NaN where unknown; None: none at all)."""

    x: np.ndarray
    y: np.ndarray
    n_present: int
    sample_weight: np.ndarray
    seed: int
    channel_groups: ChannelGroups
    xy: np.ndarray | None


class RetrainStrategy(ABC):
    """Fits a head on (N, C) embeddings. Implement `_fit` for the classes present.

    `fit` maps the classes present in `y` to 0..P-1, calls `_fit`, and gives absent classes an
    unlearned row, so every strategy handles schemas with classes nobody labelled.
    """

    name: ClassVar[str]  # the API's and the model version's name of the strategy
    title: ClassVar[str]  # what the page shows in the strategy selector
    description: ClassVar[str]  # one line on when to choose it (the selector's help)
    # Whether `_fit` uses the samples' map coordinates (`xy`; NaN for replay samples, which have none).
    uses_xy: ClassVar[bool] = False
    # Whether the strategy can fit a head centred on a prior head (`fit_centred`): a retrain with a prior (the
    # starter's zero-shot head) then lets a few clicks correct that map instead of replacing it.
    centres_on_prior: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        *,
        sample_weight: np.ndarray | None = None,
        seed: int = 0,
        channel_groups: ChannelGroups | None = None,
        xy: np.ndarray | None = None,
    ) -> HeadFit:
        present = np.unique(y)
        if len(present) < 2:
            raise RetrainError(f"a head needs samples of at least two classes, got only class index {present.tolist()}")
        groups = channel_groups or {"embedding": (0, x.shape[1])}
        if sample_weight is None:
            sample_weight = np.ones(len(y), np.float32)
        data = FitData(
            np.asarray(x, np.float64), np.searchsorted(present, y), len(present), sample_weight, seed, groups, xy
        )
        w, b, extra = self._fit(data)
        weight = np.zeros((n_classes, w.shape[1]), dtype=np.float32)
        bias = np.full(n_classes, UNLEARNED_BIAS, dtype=np.float32)
        weight[present], bias[present] = w, b
        if "local_weight" in extra:  # the local heads of a spatial ensemble get the same class rows
            j, _, c = extra["local_weight"].shape
            local_w = np.zeros((j, n_classes, c), np.float32)
            local_b = np.full((j, n_classes), UNLEARNED_BIAS, np.float32)
            local_w[:, present], local_b[:, present] = extra["local_weight"], extra["local_bias"]
            extra = {**extra, "local_weight": local_w, "local_bias": local_b}
        return weight, bias, extra

    @abstractmethod
    def _fit(self, data: FitData) -> HeadFit:
        """(P, ...) output layer and extra arrays for labels `data.y` in 0..P-1, applying to raw embeddings."""

    def fit_centred(
        self,
        x: np.ndarray,
        y: np.ndarray,
        prior: tuple[np.ndarray, np.ndarray],
        *,
        sample_weight: np.ndarray,
        channel_groups: ChannelGroups | None = None,
        reference: np.ndarray | None = None,
        start: CentredHead | None = None,
    ) -> CentredHead:
        """The (K, C) weight and (K,) bias of a head centred on `prior` over every class of the prior, and the scale
        the fit gave the prior's logits; only strategies with `centres_on_prior` implement it. `start`: a head
        centred on the same prior to start the solver from (the parent version's: the optimum is the same)."""
        raise RetrainError(f"strategy {self.name!r} does not fit around a prior head")


def group_scales(groups: ChannelGroups, channels: int, weights: Mapping[str, float]) -> np.ndarray:
    """(C,) per-channel scale that balances feature groups (see `LogisticRegressionHead`)."""
    scales = np.ones(channels)
    if len(groups) < 2:
        return scales
    first = min(groups.values())
    reference = first[1] - first[0]
    for name, (start, stop) in groups.items():
        scales[start:stop] = weights.get(name, 1.0) * np.sqrt(reference / max(stop - start, 1))
    return scales


def _default_group_weights() -> dict[str, float]:
    return {"spectral_texture": 3.0}


def _standardiser(x: np.ndarray, groups: ChannelGroups, weights: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and divisor: z = (x - mean) / div standardises and balances the feature groups."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-6] = 1.0  # constant channels (dead ReLUs) carry no information
    return mean, std / group_scales(groups, x.shape[1], weights)


def _logistic(
    z: np.ndarray, data: FitData, sample_weight: np.ndarray, *, C: float, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """(P, C) coefficients and (P,) intercepts of multinomial L2 logistic regression on standardised z."""
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol, random_state=data.seed)
    with single_threaded():  # a small problem: threads cost ~10x more than they save here
        clf.fit(z.astype(np.float32), data.y, sample_weight=sample_weight)  # float32: ~15% faster
    coef, intercept = clf.coef_, clf.intercept_
    if data.n_present == 2:  # sklearn's binary model is one logit; softmax over [0, z] is the same model
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return coef, intercept


def _unscale(
    coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, div: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A layer on standardised inputs as the same layer on raw inputs."""
    weight = coef / div
    return weight.astype(np.float32), (intercept - weight @ mean).astype(np.float32)


@dataclass
class LogisticRegressionHead(RetrainStrategy):
    """Multinomial logistic regression (lbfgs), refit from scratch, as microsoft/landcover does.

    In a wide embedding each feature group is scaled, after standardisation, by
    `group_weights[name] * sqrt(d_first / d_group)`: every group gets the same prior weight in the logits
    whatever its width (152 ImageNet channels do not drown 12 spectral ones), and a weight above 1 lowers a
    group's L2 penalty. Spectra + texture get 3: with 10 clicks they are what a head can trust (measured on
    Rotterdam and `shifted`, bench/real_imagery.py). A one-group embedding is fitted as before.
    """

    name: ClassVar[str] = "logistic_regression"
    title: ClassVar[str] = "Logistic regression"
    description: ClassVar[str] = "linear head, refit in well under a second: the default"
    centres_on_prior: ClassVar[bool] = True
    C: float = 1.0
    max_iter: int = 500
    # lbfgs gradient tolerance: 1e-3 on standardised features halves the iterations of sklearn's 1e-4
    # without a measurable change in accuracy (the fit is on the interactive path).
    tol: float = 1e-3
    standardise: bool = True
    group_weights: dict[str, float] = field(default_factory=_default_group_weights)

    def _fit(self, data: FitData) -> HeadFit:
        x = data.x
        if self.standardise:
            mean, div = _standardiser(x, data.channel_groups, self.group_weights)
        else:
            mean, div = np.zeros(x.shape[1]), np.ones(x.shape[1])
        coef, intercept = _logistic(
            (x - mean) / div, data, data.sample_weight, C=self.C, tol=self.tol, max_iter=self.max_iter
        )
        return *_unscale(coef, intercept, mean, div), {}

    def fit_centred(
        self,
        x: np.ndarray,
        y: np.ndarray,
        prior: tuple[np.ndarray, np.ndarray],
        *,
        sample_weight: np.ndarray,
        channel_groups: ChannelGroups | None = None,
        reference: np.ndarray | None = None,
        start: CentredHead | None = None,
    ) -> CentredHead:
        """The head centred on `prior` (see `centred_logistic`), over every class of the prior, and the scale the
        fit gave the prior's logits; features are standardised with the statistics of `reference` embeddings (the
        imagery's pixels) when given.

        The distance from the prior is penalised with the same C as a free fit penalises the weights: 10x more
        strongly cost ~1 point of accuracy at 25-100 clicks on Rotterdam and `shifted` (20 draws, bench/
        real_imagery.py), 3-10x more weakly changed nothing measurable."""
        return centred_logistic(
            np.asarray(x, np.float64),
            y,
            prior,
            reference=np.asarray(reference if reference is not None and len(reference) > 1 else x, np.float64),
            sample_weight=sample_weight,
            channel_groups=channel_groups or {"embedding": (0, x.shape[1])},
            group_weights=self.group_weights,
            C=self.C,
            max_iter=self.max_iter,
            start=start,
        )


# L-BFGS-B's relative loss change to stop at: 1e-6 takes a third fewer steps than scipy's 2.2e-9 and the map it
# gives agrees with the tight fit on 99.96 % of a 1 km^2 scene's pixels (bench/retrain_loop.py's scene).
CENTRED_FTOL = 1e-6


def centred_logistic(
    x: np.ndarray,
    y: np.ndarray,
    prior: tuple[np.ndarray, np.ndarray],
    *,
    reference: np.ndarray,
    sample_weight: np.ndarray,
    channel_groups: ChannelGroups,
    group_weights: Mapping[str, float],
    C: float,
    max_iter: int = 500,
    start: CentredHead | None = None,
) -> CentredHead:
    """Multinomial logistic regression centred on a prior head: logits = s prior(x) + A x + a, L2 on A, a and s - 1.

    `prior` is a (K, C) weight and (K,) bias over every class of the schema (zero rows for classes it does not
    know); `y` are class indices 0..K-1; `reference` embeddings give the standardisation. With a few labels
    A and a stay small and the prior's map survives, classes nobody labelled included; more labels move it
    further (L2-SP: regularisation towards the starting point, not towards zero). The scale s >= 0 lets the
    labels say how far to trust the prior: it starts at 1 and is penalised like the other weights. The labels
    of a scene that the prior maps poorly shrink it (~0.7 on Rotterdam and `shifted` from 25 clicks on), which
    took Rotterdam from 0.865 / 0.889 / 0.900 to 0.879 / 0.904 / 0.914 at 25 / 50 / 100 clicks and left
    `shifted` within +-0.005 (20 draws, bench/real_imagery.py).
    Returns the (K, C) weight and (K,) bias of the whole head on raw embeddings, and s. Solved with L-BFGS-B, from
    `start` when given (a head centred on the same prior, e.g. the parent version's: the loss is convex, so the
    start changes the steps taken, not the optimum; a few new labels then take a fraction of the steps).
    """
    w0, b0 = prior
    k = len(b0)
    mean, div = _standardiser(reference, channel_groups, group_weights)
    # The loss runs in float32 (half the time of float64 per step; the solver keeps its float64 state): L-BFGS
    # stops at a relative change of CENTRED_FTOL, far above float32's rounding.
    # Class-major (K, N) arrays: every elementwise step and reduction runs along the N samples, and both matmuls
    # read z once in its stored layout (0.75 ms a step instead of 1.27 ms for 3,700 samples x 228 channels).
    z = ((x - mean) / div).astype(np.float32)
    offset = np.ascontiguousarray((x @ w0.T + b0).T, dtype=np.float32)
    z_t = np.ascontiguousarray(z.T)
    rows, samples = np.asarray(y), np.arange(len(y))
    onehot = np.zeros((k, len(y)), dtype=np.float32)
    onehot[rows, samples] = 1.0
    sw = np.asarray(sample_weight, np.float32)
    d = z.shape[1]

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a_w, a_b = params[: k * d].reshape(k, d).astype(np.float32), params[k * d : -1].astype(np.float32)
        s = float(params[-1])
        logits = a_w @ z_t
        logits += s * offset
        logits += a_b[:, None]
        logits -= logits.max(axis=0)
        prob = np.exp(logits)
        total = prob.sum(axis=0)
        log_total = np.log(total)
        penalty = float((a_w**2).sum() + (a_b**2).sum()) + (s - 1.0) ** 2
        value = -float((sw * (logits[rows, samples] - log_total)).sum()) + 0.5 / C * penalty
        prob /= total
        prob -= onehot
        prob *= sw  # the gradient of the data term w.r.t. the logits
        grads = [
            (prob @ z + a_w / C).ravel(),
            prob.sum(axis=1) + a_b / C,
            [float((prob * offset).sum()) + (s - 1.0) / C],
        ]
        return value, np.concatenate(grads).astype(np.float64)

    params = np.concatenate([np.zeros(k * d + k), [1.0]]) if start is None else _centred_params(start, prior, mean, div)
    # A prior is trusted less, never turned upside down (s >= 0). As arrays: scipy converts a list of 2,000 pairs on
    # every call.
    lower = np.full(k * d + k + 1, -np.inf)
    lower[-1] = 0.0
    bounds = Bounds(lower, np.full(k * d + k + 1, np.inf))
    options = {"maxiter": max_iter, "ftol": CENTRED_FTOL}
    with single_threaded():
        result = minimize(loss, params, jac=True, method="L-BFGS-B", bounds=bounds, options=options)
    s = float(result.x[-1])
    a_w, a_b = _unscale(result.x[: k * d].reshape(k, d), result.x[k * d : -1], mean, div)
    return (a_w + s * w0).astype(np.float32), (a_b + s * b0).astype(np.float32), s


def _centred_params(
    head: CentredHead, prior: tuple[np.ndarray, np.ndarray], mean: np.ndarray, div: np.ndarray
) -> np.ndarray:
    """`centred_logistic`'s solver parameters (A and a on standardised inputs, s) of a head it returned: the
    inverse of its return (head = s prior + A/div, bias = s b0 + a - (A/div) mean)."""
    weight, bias, s = head
    raw_w = weight.astype(np.float64) - s * prior[0]
    raw_b = bias.astype(np.float64) - s * prior[1]
    return np.concatenate([(raw_w * div).ravel(), raw_b + raw_w @ mean, [s]])


@dataclass
class MLPHead(RetrainStrategy):
    """One hidden ReLU layer (sklearn's MLPClassifier, lbfgs, L2 `alpha`) on the standardised, group-balanced
    embedding; the standardisation is folded into the hidden layer."""

    name: ClassVar[str] = "mlp"
    title: ClassVar[str] = "MLP (one hidden layer)"
    description: ClassVar[str] = "one hidden layer: more capacity, pays off with many labels"
    hidden: int = 64
    alpha: float = 1.0
    max_iter: int = 300
    group_weights: dict[str, float] = field(default_factory=_default_group_weights)

    def _fit(self, data: FitData) -> HeadFit:
        mean, div = _standardiser(data.x, data.channel_groups, self.group_weights)
        clf = MLPClassifier(
            (self.hidden,), alpha=self.alpha, solver="lbfgs", max_iter=self.max_iter, random_state=data.seed
        )
        with single_threaded(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ConvergenceWarning)  # max_iter bounds the interactive fit
            clf.fit(((data.x - mean) / div).astype(np.float32), data.y, sample_weight=data.sample_weight)
        hidden_w, hidden_b = _unscale(clf.coefs_[0].T, clf.intercepts_[0], mean, div)
        out_w, out_b = clf.coefs_[1].T, clf.intercepts_[1]
        if data.n_present == 2:  # one logistic output: softmax over [0, z] is the same model
            out_w = np.vstack([np.zeros_like(out_w), out_w])
            out_b = np.concatenate([[0.0], out_b])
        return out_w.astype(np.float32), out_b.astype(np.float32), {"hidden_weight": hidden_w, "hidden_bias": hidden_b}


@dataclass
class SpatialEnsembleHead(RetrainStrategy):
    """Local logistic heads, one per neighbourhood of the user's labels (k-means of their positions), each fitted
    on every sample weighted by a Gaussian of its distance to the neighbourhood's centre (plus `floor`, so all
    classes stay known), blended per pixel by the same kernel, with the global head taking over far from
    every centre (ml/heads.py). Replay samples have no position: they weigh `floor` in every local head."""

    name: ClassVar[str] = "spatial_ensemble"
    title: ClassVar[str] = "Spatial ensemble"
    description: ClassVar[str] = (
        "local heads per neighbourhood of labels: for maps whose look changes from place to place"
    )
    uses_xy: ClassVar[bool] = True
    max_heads: int = 4
    min_samples_per_head: int = 15
    bandwidth: float | None = (
        None  # map units; default: `bandwidth_factor` x the mean distance of labels to their centre
    )
    bandwidth_factor: float = 1.0
    floor: float = 0.01
    C: float = 1.0
    tol: float = 1e-3
    max_iter: int = 500
    group_weights: dict[str, float] = field(default_factory=_default_group_weights)

    def _fit(self, data: FitData) -> HeadFit:
        mean, div = _standardiser(data.x, data.channel_groups, self.group_weights)
        z, xy, n = (data.x - mean) / div, data.xy, len(data.y)
        fit = functools.partial(_logistic, C=self.C, tol=self.tol, max_iter=self.max_iter)
        weight, bias = _unscale(*fit(z, data, data.sample_weight), mean, div)
        placed = np.zeros(n, bool) if xy is None else np.isfinite(xy).all(axis=1)
        n_heads = min(self.max_heads, int(placed.sum()) // self.min_samples_per_head)
        if n_heads < 2:  # too few labels for neighbourhoods: the global head alone (a linear head)
            return weight, bias, {}
        assert xy is not None
        points = xy[placed]
        kmeans = KMeans(n_heads, n_init=3, random_state=data.seed).fit(points)
        centres = kmeans.cluster_centers_
        spread = np.linalg.norm(points - centres[kmeans.labels_], axis=1).mean()
        bandwidth = float(self.bandwidth or max(self.bandwidth_factor * spread, 1e-6))
        local_w, local_b = [], []
        for centre in centres:
            near = np.full(n, self.floor)
            near[placed] += np.exp(-((points - centre) ** 2).sum(axis=1) / (2 * bandwidth**2))
            w, b = _unscale(*fit(z, data, data.sample_weight * near), mean, div)
            local_w.append(w)
            local_b.append(b)
        extra = {
            "centres": centres.astype(np.float32),
            "local_weight": np.stack(local_w),
            "local_bias": np.stack(local_b),
            "bandwidth": np.asarray(bandwidth, np.float32),
        }
        return weight, bias, extra


# The registry: a new strategy is its class above plus its entry here (the API, the page and the retrain follow).
STRATEGIES: dict[str, type[RetrainStrategy]] = {
    cls.name: cls for cls in (LogisticRegressionHead, MLPHead, SpatialEnsembleHead)
}
DEFAULT_STRATEGY = LogisticRegressionHead.name  # a new project's, and a retrain's when none is named


def make_strategy(name: str, **params: Any) -> RetrainStrategy:
    if name not in STRATEGIES:
        raise RetrainError(f"unknown retrain strategy {name!r}; available: {', '.join(STRATEGIES)}")
    try:
        return STRATEGIES[name](**params)
    except TypeError as exc:
        raise RetrainError(f"bad parameters for strategy {name!r}: {exc}") from exc
