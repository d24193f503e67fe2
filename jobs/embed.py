"""lakerec embed: item text -> ONNX MiniLM embeddings, similar items, cold-start evaluation.

    lakerec embed [--encoder-dir models/build/minilm] [--variant int8|fp32]
                  [--encoder-version N] [--batch-size 64] [--threads N] [--device auto|cpu|cuda]
                  [--similar 10] [--no-evaluate] [--holdout 0.1] [--content-reg 1.0] [--k 10]
    spark-submit jobs/embed.py  (same arguments)

1. The encoder: the export in ``--encoder-dir`` (built by ``make models``) is registered in
   MLflow as a ``lakerec-text-encoder`` version (once per file: its SHA-256 is the version's
   tag) -- or ``--encoder-version N`` uses a registered version as it is. The version used
   becomes the alias ``champion``, which ``score`` and ``stream`` read.
2. ``item_embeddings``: only items whose text changed, or all for a new encoder version, run
   through the model (pandas UDF; GPU executors when present); one atomic commit.
3. ``similar_items``: top-``--similar`` neighbours by cosine per item.
4. With an ALS champion: the cold-start evaluation (held-out warm items ranked by true,
   text-mapped and random factors), printed and logged to MLflow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipelines.model.card import DEFAULTS
from pipelines.runtime import cli
from pipelines.runtime.config import UsageError, fraction, positive_float, positive_int


@dataclass(frozen=True)
class EmbedConfig:
    lakehouse: str
    encoder_dir: str
    variant: str
    encoder_version: int | None
    batch_size: int
    threads: int | None
    device: str
    similar: int
    evaluate: bool
    holdout: float
    content_reg: float
    k: int
    log_level: str | None


def default_encoder_dir() -> str:
    from pipelines.runtime.package import source_root

    return os.path.join(source_root(), "models", "build", "minilm")


def _choice(*allowed: str):
    def cast(v):
        if v not in allowed:
            raise ValueError(v)
        return v
    return cast



def parse(argv: list[str] | None) -> EmbedConfig:
    p = cli.parser("embed", "Item text -> ONNX embeddings, similar items, cold-start evaluation.")
    p.add_argument("--encoder-dir", help="the ONNX export folder (models/build/minilm)")
    p.add_argument("--variant", help="int8 (default) or fp32 file of the export")
    p.add_argument("--encoder-version", help="use this registered lakerec-text-encoder version")
    p.add_argument("--batch-size", help="texts per ONNX Runtime call (64)")
    p.add_argument("--threads", help="intra-op threads per task (spark.task.cpus)")
    p.add_argument("--device", help="auto (GPU when the task holds one), cpu or cuda")
    p.add_argument("--similar", help="neighbours per item in similar_items (10)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the cold-start evaluation")
    p.add_argument("--holdout", help="share of warm items held out by the evaluation (0.1)")
    p.add_argument("--content-reg", help="ridge penalty of the text -> factor map of the "
                                         f"cold-start evaluation ({DEFAULTS.content_reg})")
    p.add_argument("--k", help=f"cut-off of the evaluation's recall ({DEFAULTS.k})")
    args, s = cli.parse_args(p, argv, section="embed")
    s.existing_lakehouse("items")  # reads it: a mistyped path is a usage error
    s.check_writable(s.lakehouse, "--lakehouse")
    holdout = s.get("holdout", flag=args.holdout, default=0.1, cast=fraction)
    if not 0 < holdout < 1:
        raise UsageError(f"--holdout must be between 0 and 1, not {holdout}")
    encoder_dir = os.path.abspath(s.get("encoder_dir", flag=args.encoder_dir,
                                        default=default_encoder_dir()))
    encoder_version = s.get("encoder_version", flag=args.encoder_version, default=None,
                            cast=positive_int)
    if encoder_version is None and not os.path.exists(os.path.join(encoder_dir, "manifest.json")):
        raise UsageError(f"no encoder export in {encoder_dir}: build it with `make models` (or "
                         f"pass --encoder-dir, or --encoder-version of a registered one)")
    return EmbedConfig(
        s.lakehouse, encoder_dir,
        s.get("variant", flag=args.variant, default="int8", cast=_choice("int8", "fp32")),
        encoder_version,
        s.get("batch_size", flag=args.batch_size, default=64, cast=positive_int),
        s.get("threads", flag=args.threads, default=None, cast=positive_int),
        s.get("device", flag=args.device, default="auto", cast=_choice("auto", "cpu", "cuda")),
        s.get("similar", flag=args.similar, default=10, cast=positive_int),
        not args.no_evaluate, holdout,
        s.get("content_reg", flag=args.content_reg, default=DEFAULTS.content_reg,
              cast=positive_float),
        s.get("k", flag=args.k, default=DEFAULTS.k, cast=positive_int),
        args.log_level)


def resolve_encoder(cfg: EmbedConfig) -> tuple[int, str]:
    """(registered version, local folder of that version) -- registering the build if needed."""
    from pipelines.storage import tracking

    if cfg.encoder_version is not None:
        version = cfg.encoder_version
    else:
        version = tracking.register_encoder(cfg.lakehouse, cfg.encoder_dir, cfg.variant)
    folder = tracking.encoder_folder(cfg.lakehouse, version,
                                     os.path.join(cfg.lakehouse, "_encoders"))
    return version, folder


def body(spark, cfg: EmbedConfig) -> int:
    import mlflow

    from pipelines.batch.embed import embed_items, evaluate_champion, write_similar_items
    from pipelines.model import encoder
    from pipelines.storage import tracking

    with cli.step("register the text encoder"):
        version, folder = resolve_encoder(cfg)
        tracking.set_alias(cfg.lakehouse, version, name=tracking.ENCODER_MODEL)
        bundle = encoder.Bundle.from_folder(folder)
        print(f"    {tracking.ENCODER_MODEL} v{version} "
              f"({bundle.manifest.get('variant', cfg.variant)}, "
              f"{encoder.describe(bundle.manifest)}) is the champion")
    with cli.step("embed item text"):
        r = embed_items(spark, cfg.lakehouse, bundle=bundle, encoder_version=version,
                        batch_size=cfg.batch_size, threads=cfg.threads, device=cfg.device)
        print(f"    {r.embedded:,} of {r.items:,} items embedded" +
              (" (all up to date)" if r.skipped else f" -> item_embeddings v{r.version}"))
    with cli.step(f"similar items (top {cfg.similar})"):
        s = write_similar_items(spark, cfg.lakehouse, encoder_version=version, n=cfg.similar)
        print("    up to date" if s.skipped else f"    similar_items v{s.version}")
    champ = tracking.get_alias(cfg.lakehouse)
    if cfg.evaluate and champ is not None:
        with cli.step(f"cold-start evaluation (ALS v{champ.version})"):
            from pipelines.storage import delta
            from schemas.tables import ITEM_EMBEDDINGS

            # one MLflow run per distinct evaluation: a re-run on the same inputs logs nothing
            key = delta.Txn.of_content(
                "cold-start-eval", champ.version, version,
                delta.latest_version(cfg.lakehouse, ITEM_EMBEDDINGS), cfg.holdout,
                cfg.content_reg, cfg.k).version
            c = tracking.client(cfg.lakehouse)
            done = c.search_runs([tracking.experiment_id(cfg.lakehouse)],
                                 f"tags.`lakerec.inputs` = '{key}'", max_results=1)
            if done:
                print(f"    already evaluated on these inputs (run {done[0].info.run_id})")
                return 0
            ev = evaluate_champion(cfg.lakehouse, model_version=champ.version,
                                   encoder_version=version, k=cfg.k, holdout=cfg.holdout,
                                   reg=cfg.content_reg)
            print(format_eval(ev))
            with mlflow.start_run(experiment_id=tracking.experiment_id(cfg.lakehouse),
                                  run_name="cold-start-eval", tags={"lakerec.inputs": str(key)}):
                mlflow.log_params({"als_version": champ.version, "encoder_version": version,
                                   "holdout": cfg.holdout, "content_reg": cfg.content_reg,
                                   "k": cfg.k})
                mlflow.log_metrics(ev.as_metrics())
    return 0


def format_eval(ev) -> str:
    return (f"    {ev.items} held-out warm items, {ev.users:,} users; recall@{ev.k} among them:\n"
            f"      true ALS factors   {ev.recall_true:.4f}\n"
            f"      text-mapped        {ev.recall_content:.4f}\n"
            f"      random vectors     {ev.recall_random:.4f}\n"
            f"    mapped vs true factor cosine {ev.factor_cosine:.3f}")


def main(argv: list[str] | None = None) -> int:
    return cli.run("embed", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
