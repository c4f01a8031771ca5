"""Per-kernel-kind XGBoost regressors (log latency), saved as XGBoost JSON, never pickled.

Cost-model verbs as in TVM MetaSchedule: ``update`` (fit on measured kernels), ``predict``,
``save``, ``load``. Kinds with too few measurements are served by a global model trained on all
kernels (kind is a feature), so a kernel type the device never measured still gets a learned
estimate, and the caller is told which model answered.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hwlat.kernels import parse_key
from hwlat.predictors.features import FEATURE_NAMES, feature_matrix

MIN_PER_KIND = 25
GLOBAL = "_global"

_PARAMS = {
    "objective": "reg:squarederror", "eta": 0.08, "max_depth": 6, "min_child_weight": 1.0,
    "subsample": 0.9, "colsample_bytree": 0.9, "lambda": 1.0, "nthread": 1, "verbosity": 0,
}


def _train(x: np.ndarray, y: np.ndarray, rounds: int):
    import xgboost as xgb

    d = xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES))
    return xgb.train(_PARAMS, d, num_boost_round=rounds)


class KernelRegressors:
    """One booster per kernel kind plus a global fallback; targets are log(latency_ms)."""

    def __init__(self):
        self.boosters: dict = {}
        self.counts: dict[str, int] = {}

    def update(self, keys: list[str], latency_ms: np.ndarray) -> "KernelRegressors":
        keys = list(keys)
        y = np.log(np.maximum(np.asarray(latency_ms, dtype=np.float64), 1e-5))
        x = feature_matrix(keys)
        kinds = np.array([parse_key(k).kind for k in keys])
        self.boosters, self.counts = {}, {}
        rounds = int(np.clip(60 + len(keys) // 8, 150, 500))
        self.boosters[GLOBAL] = _train(x, y, rounds)
        self.counts[GLOBAL] = len(keys)
        for kind in sorted(set(kinds)):
            sel = kinds == kind
            n = int(sel.sum())
            self.counts[kind] = n
            if n >= MIN_PER_KIND:
                self.boosters[kind] = _train(x[sel], y[sel], int(np.clip(60 + n // 4, 100, 400)))
        return self

    def predict(self, keys: list[str]) -> tuple[np.ndarray, list[str]]:
        """Latency in ms and, per key, which model answered (kind name or '_global')."""
        import xgboost as xgb

        keys = list(keys)
        if not keys:
            return np.zeros(0), []
        if GLOBAL not in self.boosters:
            raise RuntimeError("kernel regressors used before update() or load()")
        x = feature_matrix(keys)
        kinds = np.array([parse_key(k).kind for k in keys])
        out = np.empty(len(keys))
        used = [GLOBAL] * len(keys)
        todo = np.ones(len(keys), bool)
        for kind, booster in self.boosters.items():
            if kind == GLOBAL:
                continue
            sel = kinds == kind
            if sel.any():
                out[sel] = booster.predict(xgb.DMatrix(x[sel], feature_names=list(FEATURE_NAMES)))
                todo &= ~sel
                for i in np.flatnonzero(sel):
                    used[i] = kind
        if todo.any():
            out[todo] = self.boosters[GLOBAL].predict(xgb.DMatrix(x[todo], feature_names=list(FEATURE_NAMES)))
        return np.exp(out), used

    def save(self, folder: Path) -> dict:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for kind, booster in self.boosters.items():
            f = folder / f"kernel_{kind.strip('_')}.json"
            booster.save_model(str(f))
            files[kind] = f.name
        return {"files": files, "counts": self.counts, "features": list(FEATURE_NAMES), "target": "log(latency_ms)"}

    @classmethod
    def load(cls, folder: Path, meta: dict) -> "KernelRegressors":
        import xgboost as xgb

        self = cls()
        if meta.get("features") != list(FEATURE_NAMES):
            raise ValueError("kernel regressors were fitted with other features; re-fit them (hwlat profile resumes "
                             "and re-fits without measuring again)")
        for kind, fname in meta["files"].items():
            b = xgb.Booster()
            b.load_model(str(Path(folder) / fname))
            b.set_param({"nthread": 1})
            self.boosters[kind] = b
        self.counts = dict(meta.get("counts", {}))
        return self


def write_meta(folder: Path, meta: dict) -> None:
    (Path(folder) / "kernels.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
