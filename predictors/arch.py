"""Architecture-level latency predictor: search-space architecture -> milliseconds on one device.

Every fit first mixes *bases* (log-ms columns) by non-negative least squares, alternatives being
chosen only on clearly better leave-one-out error (:mod:`hwlat.predictors.fewshot`):

* physical proxies of the architecture: MACs, activation traffic, kernel count;
* with ``reference`` (a DataFrame indexed by ``space.key(arch)``, one column per device): each
  reference device, represented by its own predictor trained on ``reference``, for every arch,
  even the ones it measured: the model is the device's denoised latency, which mixes better than
  the raw (noisy, sometimes whole-millisecond) table and covers archs outside its index;
* with ``lut_predictor``: the kernel-LUT prediction of the device.

With a handful of measurements (< ``FEW_SHOT_MAX``: a new device, ~10 archs) the mix is the
predictor. With more, it is the base (XGBoost ``base_margin``) of gradient-boosted trees that
learn the correction from the space's encoding, the physical cost features per block and stage
(:mod:`hwlat.predictors.arch_features`) and the reference/LUT bases. The trees are depth 2
(latency is close to a sum of per-block costs, so pairwise interactions suffice and generalise),
fitted in log space with an absolute-error loss: measured tables carry upward spikes (a busy
host, a slow spell) and the median is what a user should be told.

Saved as a folder: ``manifest.json`` (features, mix, versions) plus XGBoost JSON boosters.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from hwlat.errors import HwlatError
from hwlat.predictors.arch_features import PROXY_NAMES, physical_features, physical_names
from hwlat.predictors.fewshot import apply_mix, fit_mix

FORMAT = "hwlat-arch-latency-predictor"
SCHEMA_VERSION = 1
FEW_SHOT_MAX = 20            # below this many samples no trees are fitted, only the mix
MIN_SAMPLES = 3
MIN_REFERENCE_ROWS = 10
DEFAULT_PARAMS = {"max_depth": 2, "eta": 0.15, "subsample": 0.8, "colsample_bytree": 0.7,
                  "min_child_weight": 2.0, "objective": "reg:absoluteerror", "seed": 0}
DEFAULT_ROUNDS = 400
PREDICT_CHUNK = 32768
SMALL_FIT_CELLS = 4_000_000
REFERENCE_ROWS = 4000        # rows of ``reference`` each reference model trains on (random subset)

# reference models are pure functions of (space, column data, params): memoised so that fitting
# many few-shot predictors against one reference table trains each reference device once
_REF_CACHE: dict[str, Any] = {}
_REF_CACHE_MAX = 64


def _xgb():
    import xgboost

    return xgboost


class ArchLatencyPredictor:
    """Latency of search-space architectures on one device; see the module docstring."""

    def __init__(self, space, reference=None, *, lut_predictor=None, params: dict | None = None,
                 n_rounds: int = DEFAULT_ROUNDS, reference_rows: int = REFERENCE_ROWS):
        from hwlat.search import spaces

        self.space = spaces.get(space) if isinstance(space, str) else space
        if not hasattr(self.space, "to_matrix"):
            raise HwlatError(f"ArchLatencyPredictor: expected a search space or its name, got {type(space).__name__}")
        self.lut_predictor = lut_predictor
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.n_rounds = int(n_rounds)
        self.reference_rows = int(reference_rows)
        self.reference = self._check_reference(reference) if reference is not None else None
        self.ref_models: list = []            # one booster per reference device
        self.ref_names: list[str] = []
        self.mix: dict | None = None
        self.booster = None
        self.info: dict = {}

    # -- inputs -------------------------------------------------------------------------------
    def _rows(self, archs) -> np.ndarray:
        """Architectures (objects, keys, native specs, or an int matrix) -> integer rows."""
        sp = self.space
        if isinstance(archs, np.ndarray) and archs.ndim == 2 and np.issubdtype(archs.dtype, np.integer):
            width = len(sp.gene_choices())
            if archs.shape[1] != width:
                raise HwlatError(f"{sp.name}: an architecture matrix has {width} columns, got {archs.shape[1]}")
            return archs
        if isinstance(archs, (str, dict)) or type(archs) is getattr(sp, "arch_type", None):
            archs = [archs]
        try:
            archs = list(archs)
        except TypeError:
            raise HwlatError(f"{sp.name}: expected a list of architectures, got {type(archs).__name__}") from None
        return sp.to_matrix(sp._parsed(archs))

    def _check_reference(self, ref):
        import pandas as pd

        if not isinstance(ref, pd.DataFrame):
            raise HwlatError("reference: expected a pandas DataFrame indexed by space.key(arch), one column per "
                             f"device, got {type(ref).__name__}")
        if ref.shape[1] == 0 or len(ref) < MIN_REFERENCE_ROWS:
            raise HwlatError(f"reference: needs at least one device column and {MIN_REFERENCE_ROWS} architectures, "
                             f"got {ref.shape[1]} columns x {len(ref)} rows")
        bad = [c for c in ref.columns if not pd.api.types.is_numeric_dtype(ref[c])]
        if bad:
            raise HwlatError(f"reference: column(s) {bad} are not numeric latencies in ms")
        vals = ref.to_numpy(np.float64)
        if (vals[np.isfinite(vals)] <= 0).any():
            raise HwlatError("reference: latencies must be positive milliseconds (use NaN for not measured)")
        short = [str(c) for c in ref.columns if ref[c].notna().sum() < MIN_REFERENCE_ROWS]
        if short:
            raise HwlatError(f"reference: device column(s) {short} have fewer than {MIN_REFERENCE_ROWS} measurements")
        return ref

    @staticmethod
    def _targets(latency_ms, n: int) -> np.ndarray:
        try:
            y = np.asarray(latency_ms, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise HwlatError("latency_ms: expected numbers (milliseconds)") from None
        if len(y) != n:
            raise HwlatError(f"latency_ms: {len(y)} values for {n} architectures")
        bad = np.flatnonzero(~np.isfinite(y) | (y <= 0))
        if len(bad):
            raise HwlatError(f"latency_ms: value #{bad[0]} ({y[bad[0]]}) is not a positive finite number of ms")
        return y

    # -- features and bases -------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        names = list(self.space.feature_names()) + physical_names(self.space)
        return names + [f"base:{b}" for b in self._base_names() if not b.startswith("proxy:")]

    def _base_names(self) -> list[str]:
        names = [f"ref:{c}" for c in self.ref_names]
        if self.lut_predictor is not None:
            names.append("lut")
        if physical_names(self.space):
            names += [f"proxy:{p}" for p in PROXY_NAMES]
        return names

    def _space_features(self, m: np.ndarray) -> np.ndarray:
        enc = self.space.encode_matrix(m)
        phys = physical_features(self.space, m)
        X = np.empty((len(m), enc.shape[1] + phys.shape[1]), np.float32)
        X[:, :enc.shape[1]] = enc
        X[:, enc.shape[1]:] = phys
        return X

    def _bases(self, m: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(n, p) log-ms bases in :meth:`_base_names` order, and the proxies in linear units (or None)."""
        cols = [b.inplace_predict(X) for b in self.ref_models]
        if self.lut_predictor is not None:
            lut = np.asarray(self.lut_predictor.predict_many(self.space.from_matrix(m)), dtype=np.float64)
            if lut.shape != (len(m),) or not np.all(np.isfinite(lut) & (lut > 0)):
                raise HwlatError("lut_predictor.predict_many returned missing or non-positive latencies")
            cols.append(np.log(lut))
        px = self._proxies_of(X)
        if px is not None:
            cols += list(np.log(px).T)
        Z = np.column_stack(cols).astype(np.float64) if cols else np.zeros((len(m), 0))
        return Z, px

    def _proxies_of(self, X: np.ndarray) -> np.ndarray | None:
        """The physical proxies (MACs, traffic, kernels), read off the feature matrix: computed once."""
        names = physical_names(self.space)
        if not names:
            return None
        off = X.shape[1] - len(names)              # X is [space encoding | physical features]
        cols = [off + names.index(f"total_{p}") for p in PROXY_NAMES]
        return np.maximum(X[:, cols].astype(np.float64), 1e-9)

    def _design(self, X: np.ndarray, Z: np.ndarray) -> np.ndarray:
        k = sum(1 for b in self._base_names() if not b.startswith("proxy:"))
        return np.hstack([X, Z[:, :k].astype(np.float32)]) if k else X

    # -- reference devices --------------------------------------------------------------------
    def _fit_reference(self) -> None:
        ref = self.reference
        keys = [str(k) for k in ref.index]
        m = self._rows(keys)
        X = self._space_features(m)
        self.ref_models, self.ref_names = [], []
        for col in ref.columns:
            y = ref[col].to_numpy(np.float64)
            ok = np.flatnonzero(np.isfinite(y))
            if len(ok) > self.reference_rows:
                ok = np.sort(np.random.default_rng(0).choice(ok, self.reference_rows, replace=False))
            digest = hashlib.sha1()
            digest.update(json.dumps([self.space.name, self.params, self.n_rounds, str(col)]).encode())
            digest.update(np.ascontiguousarray(m[ok]).tobytes())
            digest.update(y[ok].tobytes())
            key = digest.hexdigest()
            booster = _REF_CACHE.get(key)
            if booster is None:
                booster = self._train(X[ok], np.log(y[ok]), None, len(ok))
                if len(_REF_CACHE) >= _REF_CACHE_MAX:
                    _REF_CACHE.pop(next(iter(_REF_CACHE)))
                _REF_CACHE[key] = booster
            self.ref_models.append(booster)
            self.ref_names.append(str(col))

    # -- fitting ------------------------------------------------------------------------------
    def _rounds(self, n: int) -> int:
        # fewer samples, fewer rounds: a small table is fitted by the first trees and then memorised
        return int(min(self.n_rounds, max(100, 3 * n)))

    def _train(self, X: np.ndarray, y: np.ndarray, base: np.ndarray | None, n: int):
        xgb = _xgb()
        margin = base if base is not None else np.full(len(y), np.median(y))
        d = xgb.DMatrix(X, label=y, base_margin=margin)
        params = dict(self.params)
        if X.size < SMALL_FIT_CELLS:
            # a small table fits fastest on one thread: more only adds contention (measured 3-20x)
            params.setdefault("nthread", 1)
        booster = xgb.train(params, d, num_boost_round=self._rounds(n))
        if "nthread" not in self.params:
            booster.set_param({"nthread": os.cpu_count() or 1})    # predictions use every core
        return booster

    def fit(self, archs, latency_ms) -> "ArchLatencyPredictor":
        """Learn the device from measured architectures (>= 3; ~10 are enough with a reference)."""
        m = self._rows(archs)
        y = np.log(self._targets(latency_ms, len(m)))
        if len(m) < MIN_SAMPLES:
            raise HwlatError(f"fit: needs at least {MIN_SAMPLES} measured architectures, got {len(m)}")
        if self.reference is not None and not self.ref_models:
            self._fit_reference()
        X = self._space_features(m)
        Z, px = self._bases(m, X)
        self.mix, self.booster = None, None
        if Z.shape[1]:
            self.mix = fit_mix(Z, y, self._base_names(), px, [f"proxy:{p}" for p in PROXY_NAMES])
        if len(m) >= FEW_SHOT_MAX or self.mix is None:
            base = apply_mix(self.mix, Z, px) if self.mix is not None else None
            self.booster = self._train(self._design(X, Z), y, base, len(m))
            self._median = float(np.median(y))
        self.info = {"n_train": int(len(m)), "mode": self._mode(),
                     "mix": None if self.mix is None else self.mix["choice"],
                     "mix_loo_rmse_log": None if self.mix is None else round(self.mix["loo_rmse"], 5)}
        return self

    def _mode(self) -> str:
        if self.booster is None:
            return "mix"
        return "trees+mix" if self.mix is not None else "trees"

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, archs) -> np.ndarray:
        """Predicted latency in ms of each architecture (numpy array, vectorised)."""
        if self.mix is None and self.booster is None:
            raise HwlatError("ArchLatencyPredictor: call fit() (or load()) before predict()")
        m = self._rows(archs)
        out = np.empty(len(m))
        # in chunks: the feature block of a chunk stays in cache between encoding and the trees
        for lo in range(0, len(m), PREDICT_CHUNK):
            out[lo:lo + PREDICT_CHUNK] = self._predict_rows(m[lo:lo + PREDICT_CHUNK])
        return out

    def _predict_rows(self, m: np.ndarray) -> np.ndarray:
        X = self._space_features(m)
        Z, px = self._bases(m, X) if (self.mix is not None or self.ref_models or self.lut_predictor) else (None, None)
        log_ms = apply_mix(self.mix, Z, px) if self.mix is not None else None
        if self.booster is not None:
            margin = log_ms if log_ms is not None else np.full(len(m), self._median)
            design = self._design(X, Z) if Z is not None else X
            log_ms = self.booster.inplace_predict(design, base_margin=margin).astype(np.float64)
        return np.exp(log_ms)

    def predict_many(self, archs) -> np.ndarray:
        return self.predict(archs)

    # -- persistence --------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the predictor to folder ``path``: manifest.json + XGBoost JSON boosters."""
        import pandas as pd
        import xgboost

        import hwlat

        if self.mix is None and self.booster is None:
            raise HwlatError("ArchLatencyPredictor.save: nothing fitted yet")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        files = {}
        if self.booster is not None:
            self.booster.save_model(path / "model.json")
            files["model"] = "model.json"
        ref_files = []
        for i, b in enumerate(self.ref_models):
            name = f"reference_{i:02d}.json"
            b.save_model(path / name)
            ref_files.append(name)
        manifest = {
            "format": FORMAT, "schema_version": SCHEMA_VERSION,
            "space": self.space.name, "space_options": {"widths": list(getattr(self.space, "widths", []))},
            "feature_names": self.feature_names(), "base_names": self._base_names(),
            "mix": self.mix, "files": files, "reference": {"devices": self.ref_names, "files": ref_files},
            "uses_lut_predictor": self.lut_predictor is not None,
            "median_log_ms": getattr(self, "_median", None),
            "params": self.params, "n_rounds": self.n_rounds, "info": self.info,
            "versions": {"hwlat": hwlat.__version__, "xgboost": xgboost.__version__, "numpy": np.__version__,
                         "pandas": pd.__version__, "python": platform.python_version()},
        }
        (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return path

    @classmethod
    def load(cls, path, space=None, *, lut_predictor=None) -> "ArchLatencyPredictor":
        from hwlat.search import spaces

        path = Path(path)
        mf = path / "manifest.json" if path.is_dir() else path
        try:
            manifest = json.loads(mf.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HwlatError(f"cannot read arch predictor manifest {mf}: {exc}") from None
        if manifest.get("format") != FORMAT:
            raise HwlatError(f"{mf} is not an hwlat arch-latency predictor (format {manifest.get('format')!r})")
        if manifest["schema_version"] > SCHEMA_VERSION:
            raise HwlatError(f"{mf}: schema {manifest['schema_version']} is newer than this hwlat; upgrade hwlat")
        if space is None:
            opts = {k: tuple(v) for k, v in manifest.get("space_options", {}).items() if v}
            space = spaces.get(manifest["space"], **opts)
        elif isinstance(space, str):
            space = spaces.get(space)
        if space.name != manifest["space"]:
            raise HwlatError(f"{mf}: fitted for space '{manifest['space']}', not '{space.name}'")
        if manifest["uses_lut_predictor"] and lut_predictor is None:
            raise HwlatError(f"{mf}: this predictor was fitted with a lut_predictor; pass lut_predictor= to load()")
        xgb = _xgb()
        q = cls(space, lut_predictor=lut_predictor, params=manifest["params"], n_rounds=manifest["n_rounds"])
        folder = mf.parent
        for name in manifest["reference"]["files"]:
            b = xgb.Booster()
            b.load_model(folder / name)
            q.ref_models.append(b)
        q.ref_names = list(manifest["reference"]["devices"])
        if q.feature_names() != manifest["feature_names"]:
            raise HwlatError(f"{mf}: the features of space '{space.name}' changed since this predictor was saved; "
                             "refit it")
        q.mix = manifest["mix"]
        if manifest["files"].get("model"):
            q.booster = xgb.Booster()
            q.booster.load_model(folder / manifest["files"]["model"])
            q._median = manifest["median_log_ms"]
        q.info = manifest.get("info", {})
        return q
