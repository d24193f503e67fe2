"""Quality gate: the invariants ``recommendations`` must hold, checked with DuckDB.

Each check is a query counting violations; zero means it holds. The checks read each user's
current list (``current_recommendations``, the merge-on-read view). Used by ``lakerec check``
and the Airflow DAG's last task, which fails the run when any count is not zero.

Example
-------
>>> failures = [c for c in check_recommendations("/lh", k=10) if c.violations]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.storage import sql


def served_k(lakehouse: str, *, lookback: int = 100) -> int | None:
    """The K the current lists were written with (``score`` and the stream record it in each
    commit of ``recommendations``); ``None`` when no recent commit says (an older lakehouse).

    A restore takes the table back to an earlier write: the commits it undid are skipped.
    Cost: the newest ``lookback`` commit records of the table, read newest first.
    """
    from pipelines.storage import delta
    from schemas.tables import LIST_LENGTH_KEY, RECOMMENDATIONS

    if not delta.exists(lakehouse, RECOMMENDATIONS):
        return None
    commits = delta.history(lakehouse, RECOMMENDATIONS, lookback, counts=False)
    for c in delta.undone_skipped(commits):
        if LIST_LENGTH_KEY in c.metadata:
            return int(c.metadata[LIST_LENGTH_KEY])
    return None


@dataclass(frozen=True)
class Check:
    name: str
    violations: int


def _checks(k: int) -> dict[str, str]:
    return {
        "recommendations exist":
            "SELECT CASE WHEN count(*) = 0 THEN 1 ELSE 0 END FROM current_recommendations",
        "no null in a required column":
            "SELECT count(*) FROM current_recommendations WHERE user_id IS NULL OR item_id IS NULL "
            "OR rank IS NULL OR score IS NULL OR source IS NULL OR generated_at IS NULL",
        f"at most {k} rows per user":
            f"SELECT count(*) FROM (SELECT user_id FROM current_recommendations GROUP BY 1 "
            f"HAVING count(*) > {k})",
        "ranks are 1..n per user":
            "SELECT count(*) FROM (SELECT user_id, count(*) n, min(rank) lo, max(rank) hi, "
            "count(DISTINCT rank) d FROM current_recommendations GROUP BY 1) "
            "WHERE lo != 1 OR hi != n OR d != n",
        "no item twice for a user":
            "SELECT count(*) FROM (SELECT user_id, item_id FROM current_recommendations "
            "GROUP BY 1, 2 HAVING count(*) > 1)",
        "no seen item recommended":
            "SELECT count(*) FROM current_recommendations r SEMI JOIN interactions i "
            "USING (user_id, item_id)",
        "every user with interactions is scored":
            "SELECT count(*) FROM (SELECT DISTINCT user_id FROM interactions) u "
            "ANTI JOIN current_recommendations r USING (user_id)",
        # a user may get fewer than k rows only if fewer than k items with factors of the
        # served model remain unseen (a lower bound of the recommendable catalog)
        f"{k} rows unless fewer than {k} recommendable items are unseen":
            f"""
            WITH served AS (SELECT max(model_version) AS v FROM current_recommendations),
                 catalog AS (SELECT DISTINCT item_id FROM item_factors
                             WHERE model_version = (SELECT v FROM served)),
                 n_rows AS (SELECT user_id, count(*) AS n FROM current_recommendations GROUP BY 1),
                 seen AS (SELECT i.user_id, count(DISTINCT i.item_id) AS s
                          FROM interactions i SEMI JOIN catalog c USING (item_id)
                          GROUP BY 1)
            SELECT count(*) FROM n_rows LEFT JOIN seen USING (user_id)
            WHERE n < {k}
              AND (SELECT count(*) FROM catalog) - coalesce(s, 0) >= {k}""",
    }


def check_recommendations(lakehouse: str, *, k: int) -> list[Check]:
    """Run every check; a missing table counts as one violation of the first check."""
    from pipelines.storage import delta
    from schemas.tables import INTERACTIONS, ITEM_FACTORS, RECOMMENDATIONS

    if not all(delta.exists(lakehouse, t) for t in (RECOMMENDATIONS, INTERACTIONS)):
        return [Check("recommendations exist", 1)]
    out = []
    for name, query in _checks(k).items():
        if "item_factors" in query and not delta.exists(lakehouse, ITEM_FACTORS):
            continue
        _, rows = sql.query(lakehouse, query)
        out.append(Check(name, int(rows[0][0])))
    return out
