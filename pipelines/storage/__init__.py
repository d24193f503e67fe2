"""I/O: Delta tables through delta-rs (log, commit core, Spark and Arrow I/O), the landing
zone, MLflow, DuckDB SQL."""
