"""lakerec: a lakehouse recommender pipeline on Apache Spark.

The package is in layers, each importing only those before it (``docs/ARCHITECTURE.md``):
:mod:`pipelines.errors` and the contracts in ``schemas``; :mod:`pipelines.model` (numpy
maths: fold-in, top-K kernels, the content map, the encoder, the model card);
:mod:`pipelines.serving` (the serving model and the one list policy);
:mod:`pipelines.storage` (Delta through delta-rs, landing, MLflow, SQL);
:mod:`pipelines.batch` (the Spark jobs' logic); :mod:`pipelines.streaming` (Kafka to fresh
lists); :mod:`pipelines.dev` (generator, MovieLens, local broker); :mod:`pipelines.runtime`
(command line, session, packaging). Importing it is cheap: Spark, MLflow and the rest load
only where used.
"""

__version__ = "0.1.0"
