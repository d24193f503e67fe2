"""Text embedding throughput: standalone ONNX Runtime vs the same model inside the Spark UDF.

    python bench/embed_throughput.py [--texts 4000] [--cores 2] [--batch-size 64]
                                     [--encoder models/build/minilm]

One run, the same texts (the synthetic catalog's item texts, as the embed job builds them)
for every contender, fp32 and int8:

* standalone, one process with ``--cores`` intra-op threads;
* standalone, ``--cores`` processes with one thread each (how Spark runs ``--cores`` tasks);
* the Spark pandas UDF of ``lakerec embed`` in ``local[--cores]`` (one task per core,
  ``spark.task.cpus = 1``), timed to materialise every embedding (``noop`` sink); the
  encoder is warmed up first, as a long job's Python workers are.

Sentences/s include tokenisation. Prints the UDF's share of the better standalone figure,
int8's speed-up over fp32, and the mean cosine of int8 to fp32 on these texts. Run it on an
idle machine: int8 is sensitive to contention (see FIELD-NOTES).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np
from common import machine, session

VARIANTS = ("fp32", "int8")


def catalog_texts(spark, n: int) -> list[str]:
    import datetime as dt

    from pipelines.dev.generate import SyntheticSpec, catalog
    from pipelines.model.encoder import item_text

    spec = SyntheticSpec(users=10, items=n, events=10, clusters=20, start=dt.date(2024, 6, 1))
    rows = catalog(spark, spec).orderBy("item_id").collect()
    return [item_text(r.title, r.category, r.description) for r in rows]


def _encode(args):
    folder, variant, threads, texts, batch = args
    from pipelines.model.encoder import Encoder

    enc = Encoder.load(folder, variant=variant, threads=threads)
    enc.encode(texts[:batch], batch_size=batch)  # warm-up
    t = time.perf_counter()
    out = enc.encode(texts, batch_size=batch)
    return time.perf_counter() - t, out


def standalone(folder, variant, texts, *, procs: int, threads: int, batch: int):
    """(sentences/s, embeddings): ``procs`` processes share the texts; the wall time is the
    slowest process's."""
    if procs == 1:
        dt_, out = _encode((folder, variant, threads, texts, batch))
        return len(texts) / dt_, out
    parts = np.array_split(np.arange(len(texts)), procs)
    with mp.get_context("spawn").Pool(procs) as pool:
        res = pool.map(_encode, [(folder, variant, threads, [texts[i] for i in p], batch)
                                 for p in parts])
    return len(texts) / max(r[0] for r in res), np.concatenate([r[1] for r in res])


def in_spark(spark, folder, variant, texts, *, cores: int, batch: int) -> float:
    from pipelines.batch.embed import embed_texts
    from pipelines.model.encoder import Bundle

    df = spark.createDataFrame([(t,) for t in texts], "text string").repartition(cores).cache()
    df.count()
    bundle = Bundle.from_folder(folder, variant)
    emb = embed_texts(df, bundle=bundle, batch_size=batch, partitions=cores)
    # warm-up: every Python worker loads its session once (a long job pays this once)
    embed_texts(df.limit(cores * batch), bundle=bundle, batch_size=batch, partitions=cores) \
        .write.format("noop").mode("overwrite").save()
    t = time.perf_counter()
    emb.write.format("noop").mode("overwrite").save()
    wall = time.perf_counter() - t
    df.unpersist()
    return len(texts) / wall


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=4000)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--encoder", default=os.path.join(root, "models", "build", "minilm"))
    a = p.parse_args()
    print(machine())
    spark = session(a.cores, "4g")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
    texts = catalog_texts(spark, a.texts)
    from pipelines.model.encoder import Encoder

    enc = Encoder.load(a.encoder, variant="fp32", threads=1)
    lens = [sum(e.attention_mask) for e in enc.tokenizer.encode_batch(texts[:500])]
    print(f"{len(texts):,} texts, median {int(np.median(lens))} tokens; {a.cores} cores, "
          f"batch {a.batch_size}; load before the run {os.getloadavg()[0]:.2f}")

    rate, emb = {}, {}
    for v in VARIANTS:
        one, emb[v] = standalone(a.encoder, v, texts, procs=1, threads=a.cores,
                                 batch=a.batch_size)
        many, _ = standalone(a.encoder, v, texts, procs=a.cores, threads=1, batch=a.batch_size)
        udf = in_spark(spark, a.encoder, v, texts, cores=a.cores, batch=a.batch_size)
        rate[v] = {"one": one, "many": many, "udf": udf}
        print(f"  {v}: standalone 1 process x {a.cores} threads {one:7.1f}/s, "
              f"{a.cores} processes x 1 thread {many:7.1f}/s, Spark UDF {udf:7.1f}/s",
              flush=True)
    cos = (emb["int8"] * emb["fp32"]).sum(1)
    print("\nratios")
    for v in VARIANTS:
        best = max(rate[v]["one"], rate[v]["many"])
        print(f"  {v}: UDF / best standalone = {rate[v]['udf'] / best:.2f} (goal >= 0.80)")
    best = {v: max(rate[v]["one"], rate[v]["many"]) for v in VARIANTS}
    print(f"  int8 / fp32 speed: standalone {best['int8'] / best['fp32']:.2f}x, in the UDF "
          f"{rate['int8']['udf'] / rate['fp32']['udf']:.2f}x (goal >= 2)")
    print(f"  int8 vs fp32 cosine: mean {cos.mean():.4f}, min {cos.min():.4f} (goal mean >= "
          f"0.98)")
    print(f"load after the run {os.getloadavg()[0]:.2f}")
    spark.stop()


if __name__ == "__main__":
    main()
