"""lakerec place: map new catalog items into the champion's factor space from their text.

    lakerec place [--model-version N] [--encoder-version N] [--content-reg 1.0]
    spark-submit jobs/place.py  (same arguments)

Runs after ``embed`` and before ``score``: fits a ridge map from text embeddings to the
model's trained item factors and writes every catalog item without trained factors to
``item_placements`` (the model's own ``item_factors`` are never rewritten). Nothing to place
(no champion yet, no embeddings) is not an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.model.card import DEFAULTS
from pipelines.runtime import cli
from pipelines.runtime.config import positive_float, positive_int


@dataclass(frozen=True)
class PlaceConfig:
    lakehouse: str
    model_version: int | None
    encoder_version: int | None
    content_reg: float
    log_level: str | None


def parse(argv: list[str] | None) -> PlaceConfig:
    p = cli.parser("place", "Place new items in the champion's factor space from their text.")
    p.add_argument("--model-version", help="place into this lakerec-als version, not the "
                                           "champion")
    p.add_argument("--encoder-version", help="use this lakerec-text-encoder version's "
                                             "embeddings, not the champion's")
    p.add_argument("--content-reg", help="ridge penalty of the text -> factor map "
                                         f"({DEFAULTS.content_reg})")
    args, s = cli.parse_args(p, argv, section="place")
    s.existing_lakehouse("items")  # reads it: a mistyped path is a usage error
    s.check_writable(s.lakehouse, "--lakehouse")
    return PlaceConfig(
        s.lakehouse,
        s.get("model_version", flag=args.model_version, default=None, cast=positive_int),
        s.get("encoder_version", flag=args.encoder_version, default=None, cast=positive_int),
        s.get("content_reg", flag=args.content_reg, default=DEFAULTS.content_reg,
              cast=positive_float),
        args.log_level)


def body(spark, cfg: PlaceConfig) -> int:
    from pipelines.batch.place import place

    with cli.step("place new items from their text"):
        r = place(spark, cfg.lakehouse, model_version=cfg.model_version,
                  encoder_version=cfg.encoder_version, reg=cfg.content_reg)
    if r.skipped:
        print(f"    nothing to do: {r.reason}")
    else:
        print(f"    {r.placed:,} new items placed from {r.warm:,} trained items (model "
              f"v{r.model_version}, encoder v{r.encoder_version}) -> item_placements "
              f"v{r.version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("place", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
