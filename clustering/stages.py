"""Routing stages and their fitting: the one core every DIMEE fit runs (the policy's ``fit``, the report's knob
choice and the cost sweep all reach it through ``DimeePolicy.fit``).

A stage standardises its features, finds the nearest centre and answers with that centre's candidate. A
cluster stage is fitted in two parts of very different cost:

* the clustering (k-means for each k of the grid, on each cross-validation fold and on all samples) depends on
  the features and the k-means settings only, not on the rewards, so it is computed once per feature matrix
  and kept in a small in-process cache (:class:`ClusterBank`, :func:`cluster_bank`);
* the choice (which candidate each cluster answers with, the held-out reward of each k, the chosen k) depends
  on the rewards, i.e. on mu and the cost model, and is a few array operations on the cached clustering.

So refitting a policy under another cost model or mu (a sweep, the report's mu grid) re-runs no k-means, and
the refit is the fit itself, not a copy of it: the fitted state is identical to a fit in a fresh process.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController

from .errors import PolicyError

CONTINUE = 0  # a cascade stage's "exit" for a cluster that continues to the next decision exit


@dataclass(frozen=True)
class ClusterSettings:
    """How a cluster stage is fitted: the k grid, the cross-validation folds, the k-means restarts and seed,
    the tolerance of the k choice and the shrinkage of a cluster's rewards (:func:`fit_cluster_stage`)."""

    k_grid: tuple[int, ...]
    n_folds: int = 3
    n_init: int = 4
    random_state: int = 0
    k_tolerance: float = 0.0
    shrinkage: float = 0.0
    min_cluster_size: int = 0  # a cluster with fewer fit samples answers as the whole population does


@dataclass
class RoutingStage:
    """Standardise, find the nearest centre, answer at that centre's exit. Plain arrays, so it serialises."""

    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    centers: np.ndarray  # [k, d], in standardised space
    exits: np.ndarray  # [k], 1-based exit per centre (cascade: the decision exit or CONTINUE; entry stage:
    #                   the entry tier index 0 mobile, 1 edge, 2 cloud)
    sizes: np.ndarray  # [k], fit samples per centre
    routes: np.ndarray | None = None  # [k], route index (into the plan's path table) per centre, if routed

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Index of the nearest centre per row (ties -> lowest index, as k-means predict)."""
        if x.shape[1] != self.mean.shape[0]:
            raise PolicyError(f"stage features have width {x.shape[1]}, fitted on {self.mean.shape[0]}")
        z = (x - self.mean) / self.scale
        d2 = (z**2).sum(axis=1)[:, None] - 2.0 * z @ self.centers.T + (self.centers**2).sum(axis=1)[None, :]
        return d2.argmin(axis=1)

    def targets(self, x: np.ndarray) -> np.ndarray:
        return self.exits[self.assign(x)]

    def target_routes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(route index, exit) of each row's nearest centre."""
        if self.routes is None:
            raise PolicyError("this stage has no routes (a cascade or entry stage)")
        centre = self.assign(x)
        return self.routes[centre], self.exits[centre]

    def to_dict(self) -> dict[str, Any]:
        data = {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "centers": self.centers.tolist(),
            "exits": self.exits.tolist(),
            "sizes": self.sizes.tolist(),
        }
        if self.routes is not None:
            data["routes"] = self.routes.tolist()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoutingStage":
        mean = np.asarray(data["mean"], dtype=np.float64)
        centers = np.asarray(data["centers"], dtype=np.float64).reshape(-1, mean.shape[0])
        return cls(
            mean=mean,
            scale=np.asarray(data["scale"], dtype=np.float64),
            centers=centers,
            exits=np.asarray(data["exits"], dtype=np.int64),
            sizes=np.asarray(data["sizes"], dtype=np.int64),
            routes=None if data.get("routes") is None else np.asarray(data["routes"], dtype=np.int64),
        )


# ---- fitting helpers (pure functions on arrays) ---------------------------------------------------------
def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler = StandardScaler().fit(x)
    return scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64)


@dataclass(frozen=True)
class LinearRewards:
    """Rewards of S settings at once: ``reward[s, i, j] = gain[i, j] - penalty[s, j]`` (DIMEE's
    ``correct_j - mu * cost_j``: the gain is per sample, the penalty per setting and candidate). Plain
    rewards [n, J] are the case S = 1 with penalty 0. A stage fitted on them shares, across the S settings,
    everything that does not depend on the penalty: group sums of the gain, not S copies of them. (A group's
    mean reward is its mean gain minus the penalty: equal to averaging the per-sample rewards up to float
    rounding, which the 12-decimal rounding of the choice absorbs.)"""

    gain: np.ndarray  # [n, J]
    penalty: np.ndarray  # [S, J]

    @classmethod
    def plain(cls, rewards: np.ndarray) -> "LinearRewards":
        rewards = np.asarray(rewards, dtype=np.float64)
        return cls(rewards, np.zeros((1, rewards.shape[1])))

    @property
    def n_settings(self) -> int:
        return int(self.penalty.shape[0])

    def rows(self, index: np.ndarray) -> "LinearRewards":
        return LinearRewards(self.gain[index], self.penalty)


def _group_means(groups: np.ndarray, n_groups: int, gain: np.ndarray, shrinkage: float, min_size: int = 0) -> np.ndarray:
    """Per group, the (shrunk) mean gain of its rows [g, J]; empty groups get the mean over all rows.

    `shrinkage` is a pseudo-count: a group's mean is pulled towards the mean over all rows,
    ``(sum + s * overall) / (count + s)``, so a small cluster needs a clear margin before it answers
    differently from the whole population (s = 0: plain means). The penalty is the same for every row of a
    setting, so subtracting it from these means gives the mean reward. A group of fewer than `min_size` rows
    gets the mean over all rows, as an empty one does (a hard floor, where shrinkage is a soft pull)."""
    onehot = np.zeros((n_groups, gain.shape[0]))
    onehot[groups, np.arange(gain.shape[0])] = 1.0
    counts = onehot.sum(axis=1)
    sums = onehot @ gain
    overall = gain.mean(axis=0)
    pulled = (sums + shrinkage * overall[None, :]) / np.maximum(counts + shrinkage, 1e-300)[:, None]
    return np.where((counts[:, None] > 0) & (counts[:, None] >= min_size), pulled, overall[None, :])


def _best_candidate_per_group(
    groups: np.ndarray, n_groups: int, rewards: LinearRewards, shrinkage: float = 0.0, min_size: int = 0
) -> np.ndarray:
    """Per setting and group: index of the candidate with the highest (shrunk) mean reward, [S, g]; ties
    (to 12 decimals) -> the first (cheapest) column; empty groups (and those under `min_size`) -> the best
    column overall."""
    means = _group_means(groups, n_groups, rewards.gain, shrinkage, min_size)[None, :, :] - rewards.penalty[:, None, :]
    return np.argmax(np.round(means, 12), axis=2)


def _held_out_rewards(assigned: np.ndarray, n_groups: int, rewards: LinearRewards, choice: np.ndarray) -> np.ndarray:
    """Mean reward of held-out rows (nearest centre `assigned`) answering with their group's `choice` [S, g],
    per setting [S]: per group, the held-out gain summed once, then each setting's choice picks a column."""
    onehot = np.zeros((n_groups, assigned.size))
    onehot[assigned, np.arange(assigned.size)] = 1.0
    gain_sums = onehot @ rewards.gain  # [g, J]
    counts = onehot.sum(axis=1)  # [g]
    groups = np.arange(n_groups)[None, :]
    total = gain_sums[groups, choice] - counts[None, :] * np.take_along_axis(rewards.penalty, choice, axis=1)
    return total.sum(axis=1) / assigned.size


_THREADPOOLS: list[ThreadpoolController] = []


def _one_thread():
    """BLAS/OpenMP capped at one thread; the controller scans the loaded libraries once (2 ms), not per fit."""
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1)


def _kmeans(z: np.ndarray, k: int, n_init: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    if k == 1:
        return z.mean(axis=0, keepdims=True), np.zeros(z.shape[0], dtype=np.int64)
    # One thread: these fits are small and many; OpenMP threads made them 40-200x slower on a busy 2-core box.
    with warnings.catch_warnings(), _one_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k: duplicate centres
        km = KMeans(n_clusters=k, n_init=n_init, random_state=random_state).fit(z)
    return km.cluster_centers_.astype(np.float64), km.labels_.astype(np.int64)


@dataclass(frozen=True)
class _Clustering:
    """k-means with k clusters on some rows: standardisation, centres and the rows' labels."""

    mean: np.ndarray
    scale: np.ndarray
    centers: np.ndarray
    labels: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, k: int, n_init: int, random_state: int) -> "_Clustering":
        mean, scale = _standardise(x)
        centers, labels = _kmeans((x - mean) / scale, k, n_init, random_state)
        return cls(mean, scale, centers, labels)

    def stage(self, exits: np.ndarray) -> RoutingStage:
        """A fitted stage with its own copies (a caller may change a stage; the cache must not change)."""
        sizes = np.bincount(self.labels, minlength=self.centers.shape[0])
        return RoutingStage(self.mean.copy(), self.scale.copy(), self.centers.copy(), exits, sizes)


@dataclass
class ClusterBank:
    """The reward-independent part of :func:`fit_cluster_stage` for one feature matrix: the folds, and per k
    the fold-wise clusterings (train labels, held-out rows' nearest centre) and the all-samples clustering,
    each computed on first use."""

    x: np.ndarray
    n_folds: int
    n_init: int
    random_state: int
    splits: list[tuple[np.ndarray, np.ndarray]] = field(init=False)
    _folds: dict[int, list[tuple[_Clustering, np.ndarray]]] = field(init=False, default_factory=dict)
    _full: dict[int, _Clustering] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        self.splits = []
        if n >= 2 * self.n_folds:
            folds = KFold(n_splits=self.n_folds, shuffle=True, random_state=self.random_state)
            self.splits = list(folds.split(self.x))

    def feasible_k(self, k_grid: Sequence[int]) -> list[int]:
        """The k of `k_grid` that every fold's training part can hold (none when there are too few rows)."""
        if not self.splits:
            return []
        n = self.x.shape[0]
        largest_train = n - math.ceil(n / self.n_folds)
        return sorted({int(k) for k in k_grid if 1 <= int(k) <= largest_train})

    def folds(self, k: int) -> list[tuple[_Clustering, np.ndarray]]:
        """Per fold: the clustering of its training rows and the nearest centre of each held-out row."""
        if k not in self._folds:
            out = []
            for train, test in self.splits:
                clustering = _Clustering.fit(self.x[train], k, self.n_init, self.random_state)
                assigned = clustering.stage(np.zeros(clustering.centers.shape[0], dtype=np.int64)).assign(self.x[test])
                out.append((clustering, assigned))
            self._folds[k] = out
        return self._folds[k]

    def full(self, k: int) -> _Clustering:
        if k not in self._full:
            self._full[k] = _Clustering.fit(self.x, k, self.n_init, self.random_state)
        return self._full[k]


_BANKS: "OrderedDict[tuple, ClusterBank]" = OrderedDict()
_MAX_BANKS = 32


def cluster_bank(x: np.ndarray, n_folds: int, n_init: int, random_state: int) -> ClusterBank:
    """The cached :class:`ClusterBank` of `x` (keyed by its bytes and the k-means settings; least recently
    used banks are dropped beyond 32)."""
    arr = np.ascontiguousarray(x)
    digest = hashlib.sha1(memoryview(arr).cast("B")).hexdigest()
    key = (digest, arr.shape, arr.dtype.str, int(n_folds), int(n_init), int(random_state))
    bank = _BANKS.get(key)
    if bank is not None:
        _BANKS.move_to_end(key)
        return bank
    own = np.array(arr, order="C", copy=True)  # the caller may change its array later; the bank's must not
    own.setflags(write=False)
    bank = ClusterBank(own, int(n_folds), int(n_init), int(random_state))
    _BANKS[key] = bank
    while len(_BANKS) > _MAX_BANKS:
        _BANKS.popitem(last=False)
    return bank


def clear_cluster_cache() -> None:
    """Drop every cached clustering (they are a pure function of their inputs; this only frees memory)."""
    _BANKS.clear()


def fit_cluster_stage(
    x: np.ndarray,
    rewards: np.ndarray,
    candidates: np.ndarray,
    settings: ClusterSettings,
    strict: bool = True,
) -> tuple[RoutingStage, int, dict[int, float]]:
    """:func:`fit_cluster_stages` for one setting with plain rewards [n, J]."""
    return fit_cluster_stages(x, LinearRewards.plain(rewards), candidates, settings, strict)[0]


def fit_cluster_stages(
    x: np.ndarray,
    rewards: LinearRewards,
    candidates: np.ndarray,
    settings: ClusterSettings,
    strict: bool = True,
) -> list[tuple[RoutingStage, int, dict[int, float]]]:
    """k-means routing with k chosen by cross-validated held-out reward, for each of the rewards' settings:
    the smallest k whose mean held-out reward is within ``settings.k_tolerance`` of the best (parsimony:
    fewer, larger clusters generalise better); each cluster answers with its best candidate by (shrunk) mean
    reward. Returns per setting the stage fitted on all of `x`, the chosen k and the held-out reward of every
    k tried. Too few samples for the folds -> one cluster. With `strict`, a split large enough for folds but
    too small for every k of the grid is a PolicyError naming the fix; without it (sub-populations whose size
    depends on mu: the edge stage, the cascade's "reached") it also falls back to one cluster. The
    clusterings come from :func:`cluster_bank`; one setting or many run the same arithmetic, row by row."""
    k_grid, n_folds, shrink = settings.k_grid, settings.n_folds, float(settings.shrinkage)
    floor = int(settings.min_cluster_size)
    bank = cluster_bank(x, n_folds, settings.n_init, settings.random_state)
    feasible = bank.feasible_k(k_grid)
    if strict and bank.splits and not feasible:
        n = x.shape[0]
        raise PolicyError(
            f"{n} fit samples cannot hold k in {sorted(int(k) for k in k_grid)} clusters under {n_folds}-fold "
            f"cross-validation (each fold fits on {n - math.ceil(n / n_folds)} samples): pass a smaller k_grid, "
            "fewer n_folds, or a larger calibration split"
        )
    S = rewards.n_settings
    cv = np.empty((S, len(feasible)))
    for column, k in enumerate(feasible):
        held_out = np.zeros(S)
        for (train, test), (clustering, assigned) in zip(bank.splits, bank.folds(k)):
            groups = clustering.centers.shape[0]
            choice = _best_candidate_per_group(clustering.labels, groups, rewards.rows(train), shrink, floor)
            held_out = held_out + _held_out_rewards(assigned, groups, rewards.rows(test), choice)
        cv[:, column] = held_out / len(bank.splits)
    best_k = np.ones(S, dtype=np.int64)
    if feasible:
        within = cv >= cv.max(axis=1, keepdims=True) - settings.k_tolerance - 1e-12
        best_k = np.asarray(feasible, dtype=np.int64)[within.argmax(axis=1)]  # feasible is sorted: smallest k
    out: list[tuple[RoutingStage, int, dict[int, float]]] = [None] * S  # type: ignore[list-item]
    for k in np.unique(best_k):
        members = np.flatnonzero(best_k == k)
        clustering = bank.full(int(k))
        sub = LinearRewards(rewards.gain, rewards.penalty[members])
        choice = _best_candidate_per_group(clustering.labels, clustering.centers.shape[0], sub, shrink, floor)
        for row, s in enumerate(members):
            scores = {int(kk): float(cv[s, c]) for c, kk in enumerate(feasible)}
            out[s] = (clustering.stage(candidates[choice[row]]), int(k), scores)
    return out


def fit_pool_stage(
    x: np.ndarray, pool_tiers: np.ndarray, rewards: np.ndarray, candidates: np.ndarray, candidate_tiers: np.ndarray
) -> RoutingStage:
    """Paper's rule: one centre per tier label present (mean of its standardised samples); a pool answers at
    the best-reward candidate exit of its tier (or of the next tier holding a candidate)."""
    mean, scale = _standardise(x)
    z = (x - mean) / scale
    centers, exits, sizes = [], [], []
    for tier in np.unique(pool_tiers):
        members = pool_tiers == tier
        allowed = np.nonzero(candidate_tiers == tier)[0]
        if allowed.size == 0:
            allowed = np.nonzero(candidate_tiers >= tier)[0]
        best = allowed[np.argmax(np.round(rewards[members][:, allowed].mean(axis=0), 12))]
        centers.append(z[members].mean(axis=0))
        exits.append(candidates[best])
        sizes.append(int(members.sum()))
    return RoutingStage(mean, scale, np.array(centers), np.array(exits, dtype=np.int64), np.array(sizes))


def threshold_stage(threshold: float, exit_: int, scores: np.ndarray) -> RoutingStage:
    """The record of a cascade stage on one score (the exit's confidence) that answers at `exit_` where the
    score is >= `threshold` and continues elsewhere: two centres, ``threshold + 0.5`` (answer) and
    ``threshold - 0.5`` (continue), on the unscaled score, so it serialises, lists and reloads as a fitted
    cluster stage does. Nearest-centre assignment agrees with the rule except within float rounding of the
    threshold, so the policy decides on the score itself (``DimeePolicy._stage_answers``); `scores` (the fit
    samples' [n, 1]) sets the centres' sizes."""
    answers = int((np.asarray(scores)[:, 0] >= threshold).sum())
    return RoutingStage(
        mean=np.zeros(1),
        scale=np.ones(1),
        centers=np.array([[threshold + 0.5], [threshold - 0.5]], dtype=np.float64),
        exits=np.array([exit_, CONTINUE], dtype=np.int64),
        sizes=np.array([answers, len(scores) - answers], dtype=np.int64),
    )


def cheapest_correct_candidates(correct_at: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per sample, the index of the cheapest candidate that is right (`correct_at` [n, J], `costs` [J]);
    the dearest candidate if none is right."""
    order = np.argsort(costs, kind="stable")
    block = correct_at[:, order]
    return np.where(block.any(axis=1), order[block.argmax(axis=1)], order[-1])


