"""EASE as an MLflow pyfunc: what the registry holds for an EASE model version.

Imported only when an EASE model is logged or loaded (it imports mlflow, ~1.5 s). The model
carries its item vectors (:mod:`pipelines.model.ease`) as an ``.npz`` artifact; ``predict``
takes a frame with a column ``items`` (each row a list of ``item_idx`` a user touched) and
returns each row's top ``k`` unseen ``item_idx`` -- the same scores lakerec serves.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class EaseRecommender(mlflow.pyfunc.PythonModel):
    """Top-``k`` unseen items for item histories, by EASE's scores."""

    def __init__(self, k: int = 10):
        self.k = k

    def load_context(self, context):
        with np.load(context.artifacts["factors"]) as f:
            self.item_idx, self.y = f["item_idx"], f["y"]

    def predict(self, context, model_input, params=None):
        from pipelines.model import ease

        pos = {int(i): j for j, i in enumerate(self.item_idx)}
        out = []
        for items in model_input["items"]:
            rows = np.array([pos[int(i)] for i in items if int(i) in pos], np.int64)
            if rows.size == 0:
                out.append([])
                continue
            _, z = ease.fold_in(self.y, np.zeros(rows.size, np.int64), rows, 1)
            s = (self.y @ z[0]).astype(np.float64)
            s[rows] = -np.inf
            top = np.argsort(-s, kind="stable")[: self.k]
            out.append([int(self.item_idx[j]) for j in top if np.isfinite(s[j])])
        return out
