"""The search behind ``lakerec train --tune``: which settings to try, within a budget.

Pure logic: :func:`search` draws settings from :data:`SPACES` (a seeded random search, log-
uniform where a setting spans decades), asks ``score(card)`` for each trial's validation
metric and keeps the best. Trial 0 is always the base card (the lakehouse's current
defaults), so the winner is never worse than them on the validation split. The budget is a
number of trials and a wall-clock limit, whichever ends first; a trial already running when
time is up finishes.

Example
-------
>>> budget = Budget(trials=3, minutes=1.0, seed=1)
>>> best, trials = search(ModelCard(window_days=28), lambda c: {"ndcg": -abs(c.reg - 0.1)},
...                       budget, windows=[14, 28])
>>> len(trials), trials[0].settings == {}
(3, True)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.model.card import TUNABLE, ModelCard

log = logging.getLogger(__name__)

# (kind, choices or (low, high)) per setting; "log" draws log-uniformly in [low, high]
SPACES: dict[str, dict[str, tuple]] = {
    "als": {
        "rank": ("choice", (16, 32, 64, 128)),
        "reg": ("log", (0.005, 1.0)),
        "alpha": ("log", (0.1, 50.0)),
        "max_iter": ("choice", (10, 15, 20)),
        "half_life_days": ("choice", (0.0, 7.0, 30.0, 90.0, 365.0)),
    },
    "ease": {
        "ease_lambda": ("log", (10.0, 5000.0)),
    },
}


@dataclass(frozen=True)
class Budget:
    """At most ``trials`` trials and about ``minutes`` of wall-clock time."""

    trials: int = 12
    minutes: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1 or not self.minutes > 0:
            raise ValueError("a tuning budget needs trials >= 1 and minutes > 0")


@dataclass(frozen=True)
class Trial:
    number: int
    settings: dict  # what differs from the base card ({} for trial 0)
    metrics: dict
    seconds: float


def window_choices(base_days: int, *, longest: int, least: int = 7) -> list[int]:
    """Window lengths worth trying around ``base_days``: a quarter, half, it and double,
    rounded to weeks, at least ``max(7, least)`` days and at most ``longest``."""
    least = max(7, least)
    out = {min(longest, max(least, 7 * round(base_days * f / 7)))
           for f in (0.25, 0.5, 1.0, 2.0)}
    return sorted(out | {min(base_days, longest)})


def draw(space: dict[str, tuple], rng: np.random.Generator, windows: Sequence[int]) -> dict:
    """One random point of ``space`` (and a window length from ``windows``)."""
    out: dict = {}
    for name, (kind, values) in space.items():
        if kind == "choice":
            out[name] = values[int(rng.integers(len(values)))]
        else:
            lo, hi = values
            v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            out[name] = float(f"{v:.3g}")
    if windows:
        out["window_days"] = int(windows[int(rng.integers(len(windows)))])
    return out


def search(base: ModelCard, score: Callable[[ModelCard], dict], budget: Budget, *,
           windows: Sequence[int], metric: str = "ndcg",
           on_trial: Callable[[Trial, Trial], None] | None = None
           ) -> tuple[ModelCard, list[Trial]]:
    """Try ``base`` and random settings; return the best card and every trial.

    ``score(card)`` trains and evaluates one trial on the validation split and returns its
    metrics; ``on_trial(trial, best_so_far)`` reports progress. Ties keep the earlier trial
    (the base first). Cost: ``budget.trials`` calls of ``score`` at most.
    """
    rng = np.random.default_rng(budget.seed)
    space = SPACES.get(base.trainer, {})
    deadline = time.monotonic() + budget.minutes * 60
    trials: list[Trial] = []
    best: Trial | None = None
    seen: set = set()
    for n in range(budget.trials):
        if n and time.monotonic() >= deadline:
            log.info("tuning: time budget of %.1f min spent after %d trials", budget.minutes, n)
            break
        settings = {} if n == 0 else draw(space, rng, windows)
        key = tuple(sorted(settings.items()))
        if key in seen:
            continue
        seen.add(key)
        card = dataclasses.replace(base, **settings)
        t0 = time.monotonic()
        got = score(card)
        trial = Trial(n, settings, got, time.monotonic() - t0)
        trials.append(trial)
        if best is None or got[metric] > best.metrics[metric]:
            best = trial
        if on_trial:
            on_trial(trial, best)
    assert best is not None
    return dataclasses.replace(base, **best.settings), trials


def remembered(card: ModelCard) -> dict:
    """The settings of ``card`` a tuned lakehouse keeps as its next defaults."""
    return {name: getattr(card, name) for name in TUNABLE}
