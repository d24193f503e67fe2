"""lakerec train: implicit ALS on a window of interactions, evaluated against popularity.

    lakerec train [--as-of YYYY-MM-DD] [--window-days 30] [--holdout-days 3] [--rank 32]
                  [--alpha 5] [--reg 0.05] [--max-iter 10] [--seed 7] [--k 10]
                  [--weights view=1,click=2,add_to_cart=4,purchase=8]
    spark-submit jobs/train.py  (same arguments)

Logs an MLflow run, registers the model as lakerec-als and moves the alias "champion" to it
only if its NDCG@k beats the current champion's on the same holdout (the first model must
beat popularity).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.model.card import ModelCard
from pipelines.runtime import cli
from pipelines.runtime.config import (
    UsageError,
    date_value,
    integer,
    nonneg_float,
    number,
    positive_int,
)


@dataclass(frozen=True)
class TrainConfig:
    lakehouse: str
    params: ModelCard
    log_level: str | None


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


TRAIN_FLAGS = ("as-of", "window-days", "holdout-days", "rank", "alpha", "reg", "max-iter",
               "seed", "k", "weights")


def add_train_options(p, flags=TRAIN_FLAGS) -> None:
    for flag in flags:
        p.add_argument(f"--{flag}")


def params_from(args, s, **defaults) -> ModelCard:
    """Training settings from flags > env > lakerec.toml > ``defaults`` > ModelCard()."""
    try:
        d = ModelCard(**defaults)
    except ValueError as e:
        raise UsageError(str(e)) from None

    def get(name, cast):
        return s.get(name, flag=getattr(args, name, None), default=getattr(d, name), cast=cast)

    values = dict(
        rank=get("rank", positive_int), alpha=get("alpha", nonneg_float), reg=get("reg", nonneg_float),
        max_iter=get("max_iter", positive_int), seed=get("seed", integer),
        window_days=get("window_days", positive_int),
        holdout_days=get("holdout_days", positive_int), k=get("k", positive_int),
        as_of=get("as_of", date_value),
        weights=get("weights", parse_weights),
    )
    if values["holdout_days"] >= values["window_days"]:
        raise UsageError("--holdout-days must be smaller than --window-days")
    try:  # the card checks every value once more (types, ranges, event types)
        return ModelCard(**values)
    except ValueError as e:
        raise UsageError(str(e)) from None


def parse(argv: list[str] | None) -> TrainConfig:
    p = cli.parser("train", "Train implicit ALS, evaluate on a temporal holdout, register.")
    add_train_options(p)
    args, s = cli.parse_args(p, argv, section="train")
    s.existing_lakehouse()  # reads one: a mistyped path is a usage error
    params = params_from(args, s)
    s.check_writable(s.lakehouse, "--lakehouse")
    return TrainConfig(s.lakehouse, params, args.log_level)


def body(spark, cfg: TrainConfig) -> int:
    from pipelines.batch.train import train

    with cli.step("train ALS"):
        r = train(spark, cfg.lakehouse, cfg.params)
    if r.skipped:
        print(f"    already trained from these inputs and settings: model v{r.model_version} "
              f"(run {r.run_id})")
    print(format_report(r, cfg.params.k))
    return 0


def format_report(r, k: int) -> str:
    from pipelines.batch.metrics import METRICS

    cols = ["model", *[f"{m}@{k}" for m in METRICS]]
    rows = [(f"ALS v{r.model_version}", r.metrics), ("popularity", r.baseline)]
    if r.champion:
        rows.append((f"champion v{r.champion_version}", r.champion))
    lines = ["    " + "  ".join(f"{c:>14}" for c in cols)]
    for name, m in rows:
        lines.append("    " + "  ".join([f"{name:>14}"] + [f"{m[c]:>14.4f}" for c in METRICS]))
    lines.append(f"    holdout {r.window[1][:10]} .. {r.window[2][:10]}, {r.metrics['users']:,} "
                 f"users evaluated; {r.reason}; "
                 + ("promoted to champion" if r.promoted else "champion unchanged"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run("train", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
