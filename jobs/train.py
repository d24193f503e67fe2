"""lakerec train: a model on a window of interactions, gated on a temporal holdout.

    lakerec train [--trainer als|ease] [--as-of YYYY-MM-DD] [--window-days N]
                  [--holdout-days 3] [--rank 32] [--alpha 5] [--reg 0.05] [--max-iter 10]
                  [--half-life-days 0] [--promote-if significant|better] [--k 10] ...
                  [--tune [--tune-trials 12] [--tune-minutes 30]]
    spark-submit jobs/train.py  (same arguments)

Logs an MLflow run, registers the model as lakerec-als (both families share the name, so
one ``champion`` alias says which serves) and moves ``champion`` to it only if the paired
bootstrap of its per-user NDCG@k against the champion's (or, for the first model, the tuned
popularity list's) on the same holdout says so. ``--tune`` first searches the settings on a
validation split before the holdout (each trial an MLflow child run) and remembers the
winner as this lakehouse's defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass

from pipelines.model.card import PROMOTE_IF, ModelCard
from pipelines.model.tuning import Budget
from pipelines.runtime import cli
from pipelines.runtime.config import (
    UsageError,
    boolean,
    date_value,
    integer,
    nonneg_float,
    number,
    positive_float,
    positive_int,
)


@dataclass(frozen=True)
class TrainConfig:
    lakehouse: str
    params: ModelCard
    log_level: str | None
    tune: Budget | None = None
    tuned: dict | None = None


def parse_weights(text) -> dict[str, float]:
    """``view=1,click=2`` (a flag or env) or a toml table ``{view = 1, click = 2}``."""
    if isinstance(text, dict):
        return {str(k): number(v) for k, v in text.items()}
    out = {}
    for part in str(text).split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(part)
        out[name.strip()] = number(value)
    return out


# flag -> help; every flag is also a lakerec.toml key ([train]) and a LAKEREC_* variable
TRAIN_HELP = {
    "as-of": "train on data as known on this date (default: the newest ingested day)",
    "trainer": "model family: als (implicit ALS) or ease (EASE, catalogs up to "
               "--ease-max-items; ALS above)",
    "window-days": "days of history to train on (default: chosen from the data, enough "
                   "for 90%% of recent users' history)",
    "holdout-days": "least days held out for the promotion gate (grown until "
                    "--min-eval-users users are evaluated)",
    "rank": "ALS factors per vector", "alpha": "ALS confidence scale: c = 1 + alpha r",
    "reg": "ALS L2 regularisation", "max-iter": "ALS iterations", "seed": "random seed",
    "k": "list length evaluated and served",
    "weights": "event weights, e.g. view=1,click=2,add_to_cart=4,purchase=8",
    "half-life-days": "recency: an event's weight halves every this many days (0: off)",
    "ease-lambda": "EASE's L2 regularisation", "ease-max-items": "largest catalog EASE trains on",
    "min-eval-users": "evaluated users the holdout is sized to hold",
    "max-holdout-days": "longest holdout the sizing may choose",
    "promote-if": "significant (the 95%% interval of the NDCG gain excludes 0) or better "
                  "(any gain)",
}
TRAIN_FLAGS = tuple(TRAIN_HELP)


def add_train_options(p, flags=TRAIN_FLAGS) -> None:
    for flag in flags:
        p.add_argument(f"--{flag}", help=TRAIN_HELP[flag])


def params_from(args, s, *, tuned: dict | None = None, **defaults) -> ModelCard:
    """Training settings from flags > env > lakerec.toml > ``tuned`` (what the lakehouse's
    last ``train --tune`` chose) > ``defaults`` > ModelCard()."""
    try:
        d = dataclasses.replace(ModelCard(**defaults), **(tuned or {}))
    except ValueError as e:
        raise UsageError(str(e)) from None

    def get(name, cast):
        return s.get(name, flag=getattr(args, name, None), default=getattr(d, name), cast=cast)

    values = dict(
        trainer=get("trainer", _trainer), rank=get("rank", positive_int),
        alpha=get("alpha", nonneg_float), reg=get("reg", nonneg_float),
        max_iter=get("max_iter", positive_int), seed=get("seed", integer),
        window_days=get("window_days", positive_int),
        holdout_days=get("holdout_days", positive_int), k=get("k", positive_int),
        as_of=get("as_of", date_value),
        weights=get("weights", parse_weights),
        half_life_days=get("half_life_days", nonneg_float),
        ease_lambda=get("ease_lambda", nonneg_float),
        ease_max_items=get("ease_max_items", positive_int),
        min_eval_users=get("min_eval_users", positive_int),
        max_holdout_days=get("max_holdout_days", positive_int),
        promote_if=get("promote_if", _promote_if),
    )
    if values["window_days"] is not None and values["holdout_days"] >= values["window_days"]:
        raise UsageError("--holdout-days must be smaller than --window-days")
    values["max_holdout_days"] = max(values["max_holdout_days"], values["holdout_days"])
    try:  # the card checks every value once more (types, ranges, event types)
        return ModelCard(**values)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _trainer(v) -> str:
    from pipelines.serving.policy import TRAINED_SOURCES

    if str(v) not in TRAINED_SOURCES:
        raise ValueError(v)
    return str(v)


def _promote_if(v) -> str:
    if str(v) not in PROMOTE_IF:
        raise ValueError(v)
    return str(v)


def tuned_card_settings(lakehouse: str) -> dict:
    """What the lakehouse's last ``train --tune`` chose, typed by the card."""
    from pipelines.storage import tracking

    raw = tracking.tuned_settings(lakehouse)
    if not raw:
        return {}
    try:
        card = ModelCard.from_params(raw)
    except ValueError as e:  # a hand-edited tag: say so, train with the defaults
        logging.getLogger(__name__).warning("ignoring the remembered tuned settings: %s", e)
        return {}
    return {name: getattr(card, name) for name in raw if hasattr(card, name)}


def parse(argv: list[str] | None) -> TrainConfig:
    p = cli.parser("train", "Train a model, gate it against the champion (or popularity) on "
                            "a temporal holdout, register it.")
    add_train_options(p)
    p.add_argument("--tune", action="store_true",
                   help="search the settings on a validation split before training; the "
                        "winner's settings become this lakehouse's defaults")
    p.add_argument("--tune-trials", help=f"tuning budget in trials (default "
                                         f"{Budget.trials})")
    p.add_argument("--tune-minutes", help=f"tuning budget in minutes (default "
                                          f"{Budget.minutes:g})")
    args, s = cli.parse_args(p, argv, section="train")
    s.existing_lakehouse("interactions")  # reads it: a mistyped path is a usage error
    tune, tuned = None, {}
    if args.tune or s.get("tune", flag=None, default=False, cast=boolean):
        # a search starts afresh from the defaults and the flags (so that re-running the
        # same tuning is the same training, whatever the last one remembered)
        params = params_from(args, s)
        try:
            tune = Budget(trials=s.get("tune_trials", flag=args.tune_trials,
                                       default=Budget.trials, cast=positive_int),
                          minutes=s.get("tune_minutes", flag=args.tune_minutes,
                                        default=Budget.minutes, cast=positive_float),
                          seed=params.seed)
        except ValueError as e:
            raise UsageError(str(e)) from None
    else:
        tuned = tuned_card_settings(s.lakehouse)
        params = params_from(args, s, tuned=tuned)
    s.check_writable(s.lakehouse, "--lakehouse")
    return TrainConfig(s.lakehouse, params, args.log_level, tune, tuned)


def body(spark, cfg: TrainConfig) -> int:
    from pipelines.batch.train import train

    if cfg.tuned:
        print("    defaults from the last tuning: " + ", ".join(
            f"{k}={v}" for k, v in sorted(cfg.tuned.items())))

    def progress(t, best):
        print(f"    trial {t.number + 1}/{cfg.tune.trials}: validation NDCG@{cfg.params.k} "
              f"{t.metrics['ndcg']:.4f} in {t.seconds:.0f} s "
              f"{_settings(t.settings) or '(current defaults)'}; best "
              f"{best.metrics['ndcg']:.4f}", flush=True)

    with cli.step(f"train {cfg.params.trainer}" + (" with tuning" if cfg.tune else "")):
        r = train(spark, cfg.lakehouse, cfg.params, tune=cfg.tune,
                  on_trial=progress if cfg.tune else None)
    if r.skipped:
        print(f"    already trained from these inputs and settings: model v{r.model_version} "
              f"(run {r.run_id})")
    print(format_report(r, cfg.params.k))
    return 0


def _settings(d: dict) -> str:
    def show(k, v):
        if v is None:  # popularity_days unset: the whole window
            return f"{k}=whole window"
        return f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"

    return ", ".join(show(k, v) for k, v in sorted(d.items()))


def format_report(r, k: int) -> str:
    from pipelines.batch.metrics import METRICS

    cols = ["model", *[f"{m}@{k}" for m in METRICS]]
    pop = r.settings.get("popularity_days") if r.settings else None
    rows = [(f"{r.trainer.upper()} v{r.model_version}", r.metrics),
            ("popularity" + (f" {pop}d" if pop else ""), r.baseline)]
    if r.champion:
        rows.append((f"champion v{r.champion_version}", r.champion))
    lines = ["    " + "  ".join(f"{c:>14}" for c in cols)]
    for name, m in rows:
        lines.append("    " + "  ".join([f"{name:>14}"] + [f"{m[c]:>14.4f}" for c in METRICS]))
    if r.settings:
        lines.append(f"    settings: {_settings(r.settings)}"
                     + (f" (best of {r.trials} tuning trials)" if r.trials else ""))
    lines.append(f"    holdout {r.window[1][:10]} .. {r.window[2][:10]}, {r.metrics['users']:,} "
                 f"users evaluated")
    lines.append(f"    {r.reason}; "
                 + ("promoted to champion" if r.promoted else "champion unchanged"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run("train", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
