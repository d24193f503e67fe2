"""The Spark jobs' logic: validate, ingest, train, evaluate, embed, place, score, check."""
