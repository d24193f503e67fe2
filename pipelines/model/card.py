"""The model card: the settings a model was trained with, typed, and the defaults, declared once.

Every default a user can override (``k``, the new-item slots, the event weights, the ALS
settings, the training window) is a field of :data:`DEFAULTS` or of :class:`ModelCard`; jobs,
the stream and the docs read them from here. A card round-trips through MLflow params as
strings (:meth:`ModelCard.to_params`, :meth:`ModelCard.from_params`), so the stream and the
champion's re-evaluation read back exactly the settings training used, typed, instead of
parsing strings with their own fallbacks.

Example
-------
>>> card = ModelCard(rank=8, alpha=2.0)
>>> ModelCard.from_params(card.to_params()) == card
True
>>> DEFAULTS.k, DEFAULTS.new_item_slots
(10, 1)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.events import check_weights, default_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Defaults:
    """Defaults that are not training settings (those are :class:`ModelCard`'s)."""

    k: int = 10
    new_item_slots: int = 1
    content_reg: float = 1.0
    # popularity is counted over this many days when no trained model says otherwise
    popularity_days: int = 30


DEFAULTS = Defaults()


def _weights() -> dict[str, float]:
    return default_weights()


def _known_weights(logged: Mapping[str, object]) -> dict[str, float]:
    """A logged run's weights, less what the event table no longer accepts (older runs could
    log any name): those types weighed nothing the model learned from but its own value."""
    known = default_weights()
    kept = {k: float(v) for k, v in logged.items() if k in known}
    dropped = sorted(set(logged) - set(kept))
    if dropped:
        log.warning("model card: ignoring weights of %s (not weighted event types)", dropped)
    return kept


# what the promotion gate asks of a challenger (see ModelCard)
PROMOTE_IF = ("significant", "better")
# the settings `train --tune` searches, and the ones a tuned lakehouse remembers
TUNABLE = ("rank", "alpha", "reg", "max_iter", "window_days", "half_life_days", "ease_lambda")


@dataclass(frozen=True)
class ModelCard:
    """What a model is: its trainer, its settings and (once trained) its data window.

    ``as_of`` and the window bounds are ``None`` in a card that asks for a training; the
    trained model's card has them resolved (``start <= cutoff < end``, UTC).

    Settings beyond the ALS ones:

    * ``window_days`` -- ``None``: chosen from the data at training
      (:func:`pipelines.batch.split.auto_window_days`); the trained card holds the number.
    * ``holdout_days`` -- the *least* number of days held out; the holdout grows a day at a
      time until it holds ``min_eval_users`` evaluated users, up to ``max_holdout_days``.
      The trained card holds the days used. At most ``max_eval_users`` (a fixed hash sample)
      are evaluated.
    * ``half_life_days`` -- ``> 0``: each event's weight decays by half every that many
      days before the end of the training span (recency); ``0``: no decay.
    * ``ease_lambda``, ``ease_rank``, ``ease_max_items`` -- EASE's ridge, the spectrum kept
      (``0``: all of it, exact) and the largest catalog it is trained on (above it, ALS).
    * ``promote_if`` -- ``"significant"``: a challenger is promoted only when the 95% paired
      bootstrap interval of its NDCG gain excludes 0; ``"better"``: when the gain is > 0.
    * ``popularity_days`` -- the popularity list's window before ``end``, chosen at training
      on the validation split; ``None``: the whole window.
    """

    trainer: str = "als"
    rank: int = 32
    alpha: float = 5.0
    reg: float = 0.05
    max_iter: int = 10
    seed: int = 7
    window_days: int | None = None
    holdout_days: int = 3
    k: int = DEFAULTS.k
    weights: Mapping[str, float] = field(default_factory=_weights)
    half_life_days: float = 0.0
    ease_lambda: float = 250.0
    ease_rank: int = 256
    ease_max_items: int = 5000
    min_eval_users: int = 500
    max_holdout_days: int = 28
    max_eval_users: int = 50_000
    promote_if: str = "significant"
    popularity_days: int | None = None
    as_of: _dt.date | None = None
    start: _dt.datetime | None = None
    cutoff: _dt.datetime | None = None
    end: _dt.datetime | None = None

    def __post_init__(self) -> None:
        for name in ("rank", "max_iter", "window_days", "k", "holdout_days", "min_eval_users",
                     "max_holdout_days", "max_eval_users", "ease_max_items", "popularity_days"):
            v = getattr(self, name)
            if v is None and name in ("window_days", "popularity_days"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        if isinstance(self.ease_rank, bool) or not isinstance(self.ease_rank, int) \
                or self.ease_rank < 0:
            raise ValueError(f"ease_rank must be an integer >= 0, not {self.ease_rank!r}")
        if self.window_days is not None and self.holdout_days >= self.window_days:
            raise ValueError("holdout_days must be an integer in [1, window_days)")
        if self.max_holdout_days < self.holdout_days:
            raise ValueError("max_holdout_days must be at least holdout_days")
        if self.promote_if not in PROMOTE_IF:
            raise ValueError(f"promote_if must be one of {', '.join(PROMOTE_IF)}, "
                             f"not {self.promote_if!r}")
        for name in ("alpha", "reg", "half_life_days", "ease_lambda"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {v!r}")
        object.__setattr__(self, "weights", dict(check_weights(self.weights)))

    # ------------------------------------------------------------------ MLflow round trip

    def to_params(self) -> dict[str, str]:
        """MLflow params (strings); the window bounds only once resolved."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name == "weights":
                out[f.name] = json.dumps(dict(v), sort_keys=True)
            elif isinstance(v, _dt.date):
                out[f.name] = v.isoformat()
            else:
                out[f.name] = str(v)
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ModelCard:
        """The card of a run; a key a run lacks (an older run) takes its default here."""
        kw: dict = {}
        for f in dataclasses.fields(cls):
            if f.name not in params:
                continue
            text = params[f.name]
            if f.name == "weights":
                kw[f.name] = _known_weights(json.loads(text))
            elif f.name == "as_of":
                kw[f.name] = _dt.date.fromisoformat(text)
            elif f.name in ("start", "cutoff", "end"):
                t = _dt.datetime.fromisoformat(text)
                kw[f.name] = t if t.tzinfo else t.replace(tzinfo=_dt.UTC)
            elif f.type == "str":
                kw[f.name] = text
            elif f.type == "float":
                kw[f.name] = float(text)
            else:  # int and int | None (None is never logged)
                kw[f.name] = int(text)
        return cls(**kw)

    def with_window(self, as_of: _dt.date) -> ModelCard:
        """This card with its window resolved for ``as_of``: ``[as_of + 1 - window, as_of + 1)``
        of event time, the last ``holdout_days`` held out."""
        if self.window_days is None:
            raise ValueError("the window length is chosen from the data first (window_days)")
        end = _dt.datetime.combine(as_of + _dt.timedelta(days=1), _dt.time(), _dt.UTC)
        return dataclasses.replace(
            self, as_of=as_of, start=end - _dt.timedelta(days=self.window_days),
            cutoff=end - _dt.timedelta(days=self.holdout_days), end=end)

    def settings(self) -> dict:
        """The requested settings (no resolved window): what makes two trainings the same."""
        d = dataclasses.asdict(self)
        for name in ("start", "cutoff", "end"):
            d.pop(name)
        d["weights"] = dict(self.weights)
        return d
