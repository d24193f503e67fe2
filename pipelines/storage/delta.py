"""Delta Lake tables, as one import: the log and commit core, Spark I/O, Arrow I/O.

The layers under it: :mod:`pipelines.storage.deltalog` (tables, transactions, staging ->
commit, conflicts), :mod:`pipelines.storage.spark_io` (parallel reads and writes by Spark),
:mod:`pipelines.storage.arrow_io` (datasets for DuckDB/Polars/pandas, the stream's small
writes). Callers write ``delta.read(...)``, ``delta.write(...)``, ``delta.append_arrow(...)``.

Example
-------
>>> from pipelines.storage import delta
>>> delta.Txn.batch("lakerec.stream/feedback", 3).sequence
True
"""

from pipelines.storage.arrow_io import (
    append_arrow,
    arrow_dataset,
    current_table,
    replace_rows_arrow,
    stage_arrow,
)
from pipelines.storage.deltalog import (
    STAGING_DIR,
    BrokenTableError,
    Commit,
    CommitResult,
    DataChanges,
    DeltaConflictError,
    StagedWrite,
    TableMissingError,
    Txn,
    UnsupportedTableError,
    add_actions,
    commit,
    data_changes,
    done,
    ensure_table,
    exists,
    history,
    latest_version,
    open_table,
    partition_values,
    table_path,
    txn_version,
    undone_skipped,
    version_at,
)
from pipelines.storage.spark_io import (
    conform,
    current_rows,
    file_uri_to_relative,
    read,
    replace_rows,
    replace_snapshot,
    stage,
    write,
)

__all__ = [
    "STAGING_DIR", "BrokenTableError", "CommitResult", "DataChanges", "DeltaConflictError",
    "StagedWrite", "TableMissingError", "Txn", "UnsupportedTableError", "add_actions",
    "Commit", "history", "undone_skipped", "version_at",
    "append_arrow", "arrow_dataset", "commit", "conform", "current_rows", "current_table",
    "data_changes", "done", "ensure_table", "exists", "file_uri_to_relative", "latest_version",
    "open_table", "partition_values", "read", "replace_rows", "replace_rows_arrow",
    "replace_snapshot", "stage", "stage_arrow", "table_path", "txn_version", "write",
]
