"""lakerec: a lakehouse recommender pipeline on Apache Spark.

The package holds the logic as DataFrame -> DataFrame transforms (``generate``, ``validate``,
``ingest``, ``train``, ``score`` ...) plus small I/O modules (``delta``, ``tracking``, ``sql``,
``landing``). Importing it is cheap: Spark, MLflow and the rest load only where used.
"""

__version__ = "0.1.0"
