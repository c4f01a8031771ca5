"""Per-kernel-kind regressors: a physics baseline plus XGBoost on its residual, never pickled.

The baseline is a least-squares line in log space over log FLOPs, log bytes moved and log
parameters (per kind): it extrapolates the way hardware does (time grows with work), where trees
alone are flat outside their data and badly wrong for a large convolution they never saw. The
trees (XGBoost JSON) model what the line misses: alignment, kernel size, layout effects.

Outside the measured range the line can still promise a throughput the device never reached
(a VGG convolution predicted at 1.4x the fastest convolution the device ran). Every prediction is
therefore held above a roofline read off the device's own measurements: FLOPs over the kind's
peak measured FLOP rate and bytes over its peak measured bandwidth (a high quantile, not the
maximum: a fast outlier does not set the roof).

Integer kernels run in channel tiles. Measured alone in LiteRT int8 (XNNPACK): a 3x3 depthwise
conv at 56x56 takes 0.038 ms at 4 channels, 0.036 at 8, 0.034 at 16 and 0.060 at 32, and a 1x1
conv from 8 channels costs the same to 4 outputs as to 16. A regressor on true FLOPs priced
GhostNet-0.5's 4-channel 112x112 depthwise convs at 0.4x their measured time. On such a device
(:func:`channel_tile`) the line and the trees of every kind also carry log FLOPs and log output
elements with channels rounded up to the tile. Measured by refitting stored fresh 10-minute
profiles against the 56-model zoo measured with each: LiteRT int8 91.1 -> 96.4%, 89.3 -> 94.6%
and 78.6 -> 85.7% within 10%; 5-fold out-of-fold kernel error (log, time-weighted) 11.6 -> 10.1%
and 16.3 -> 14.0% on two int8 LUTs. On float32 devices (LiteRT fp32, ONNX Runtime) every tile
width tried (4, 8, 16) made the zoo worse on 5 of 6 stores, so they keep the three-term line.

Cost-model verbs as in TVM MetaSchedule: ``update`` (fit on measured kernels), ``predict``,
``save``, ``load``. Kinds with too few measurements are served by a global model trained on all
kernels (kind is a feature), so a kernel type the device never measured still gets a learned
estimate, and the caller is told which model answered.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hwlat.kernels import bytes_moved, flops, numel, parse_key
from hwlat.predictors.features import FEATURE_NAMES, feature_matrix

MIN_PER_KIND = 25
GLOBAL = "_global"
ROOF_QUANTILE = 0.98   # of measured FLOP/ms and byte/ms per kind: the roofline's peaks

_PARAMS = {
    "objective": "reg:squarederror", "eta": 0.08, "max_depth": 6, "min_child_weight": 1.0,
    "subsample": 0.9, "colsample_bytree": 0.9, "lambda": 1.0, "nthread": 1, "verbosity": 0,
}


_BASE_COLS = [FEATURE_NAMES.index(c) for c in ("log_flops", "log_bytes", "log_params")]
INT8_TILE = 16


def channel_tile(manifest: dict) -> int:
    """Channels an integer kernel of the device processes at once (0: the device's kernels are
    priced on true FLOPs). LiteRT int8 devices: 16 (XNNPACK's qs8 tiles), unless the manifest's
    device options say otherwise (``{"channel_tile": N}``). Measured on LiteRT only: other backends'
    int8 kernels keep true FLOPs unless the option sets a tile."""
    dev = manifest.get("device", {}) if manifest else {}
    opt = (dev.get("options") or {}).get("channel_tile")
    if opt is not None:
        return int(opt)
    return INT8_TILE if dev.get("precision") == "int8" and dev.get("backend") == "litert" else 0


TILED_NAMES = ("log_flops_tiled", "log_out_elems_tiled")


def _tiled(kernels, tile: int) -> np.ndarray:
    """log2 FLOPs and log2 output elements with channels rounded up to ``tile`` (input channels
    too for a dense convolution or matmul): the work a tiled kernel really does."""
    def up(c: int) -> int:
        return -(-int(c) // tile) * tile

    out = np.empty((len(kernels), 2))
    for i, k in enumerate(kernels):
        x, o = k.inputs[0] if k.inputs else (1,), k.output or (1,)
        cin, cout = x[-1], o[-1]
        vin = up(cin) / max(cin, 1) if k.attr("g", 1) == 1 else 1.0
        vout = up(cout) / max(cout, 1)
        out[i] = (np.log2(max(flops(k) * vin * vout, 1.0)), np.log2(max(numel(o) * vout, 1.0)))
    return out


def _inputs(ks, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(what the trees see, what the line sees) of parsed kernels: the features, and log2
    FLOPs/bytes/params; both with the tiled terms on a tiled device."""
    x = feature_matrix(ks)
    line = x[:, _BASE_COLS].astype(np.float64)
    if not tile:
        return x, line
    t = _tiled(ks, tile)
    return np.concatenate([x, t.astype(np.float32)], axis=1), np.concatenate([line, t], axis=1)


def _base_design(line: np.ndarray) -> np.ndarray:
    return np.concatenate([line, np.ones((len(line), 1))], axis=1)


def fit_baseline(line: np.ndarray, y: np.ndarray) -> list[float]:
    """Ridge-regularised line in log space over the line's inputs (log2 FLOPs/bytes/params, and
    the tiled FLOPs and output elements on a tiled device)."""
    a = _base_design(line)
    reg = 1e-3 * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    coef = np.linalg.solve(a.T @ a + reg * len(y), a.T @ y)
    return [float(c) for c in coef]


def baseline(line: np.ndarray, coef) -> np.ndarray:
    return _base_design(line) @ np.asarray(coef)


def _work(kernels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kind, FLOPs, bytes moved) per kernel (parsed, or its key)."""
    ks = [parse_key(k) if isinstance(k, str) else k for k in kernels]
    return (np.array([k.kind for k in ks]), np.array([flops(k) for k in ks], float),
            np.array([bytes_moved(k) for k in ks], float))


def fit_roofline(kernels, latency_ms: np.ndarray) -> dict[str, list[float]]:
    """Peak FLOP/ms and byte/ms per kind (and over all kernels, ``_global``) measured on the device."""
    kinds, fl, by = _work(kernels)
    y = np.maximum(np.asarray(latency_ms, float), 1e-6)
    roof = {}
    for kind in sorted(set(kinds)) + [GLOBAL]:
        sel = np.ones(len(y), bool) if kind == GLOBAL else kinds == kind
        if sel.sum() >= MIN_PER_KIND:
            roof[str(kind)] = [float(np.quantile(fl[sel] / y[sel], ROOF_QUANTILE)),
                               float(np.quantile(by[sel] / y[sel], ROOF_QUANTILE))]
    return roof


def roofline_floor(kernels, roof: dict) -> np.ndarray:
    """The least latency (ms) the device's measured peaks allow each kernel (0 without a roofline)."""
    if not roof or GLOBAL not in roof:
        return np.zeros(len(kernels))
    kinds, fl, by = _work(kernels)
    peaks = np.array([roof.get(k, roof[GLOBAL]) for k in kinds], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(np.where(peaks[:, 0] > 0, fl / peaks[:, 0], 0.0),
                          np.where(peaks[:, 1] > 0, by / peaks[:, 1], 0.0))


def _train(x: np.ndarray, y: np.ndarray, rounds: int):
    import xgboost as xgb

    names = list(FEATURE_NAMES) + (list(TILED_NAMES) if x.shape[1] > len(FEATURE_NAMES) else [])
    d = xgb.DMatrix(x, label=y, feature_names=names)
    return xgb.train(_PARAMS, d, num_boost_round=rounds)


class KernelRegressors:
    """One booster per kernel kind plus a global fallback; targets are log(latency_ms)."""

    def __init__(self, channel_tile: int = 0):
        self.channel_tile = int(channel_tile)
        self.boosters: dict = {}
        self.base: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        self.roof: dict[str, list[float]] = {}

    def update(self, keys: list[str], latency_ms: np.ndarray) -> "KernelRegressors":
        ks = [parse_key(k) for k in keys]     # once: features, kinds and the roofline all need them
        y = np.log(np.maximum(np.asarray(latency_ms, dtype=np.float64), 1e-5))
        x, line = _inputs(ks, self.channel_tile)
        kinds = np.array([k.kind for k in ks])
        self.boosters, self.base, self.counts = {}, {}, {}
        self.roof = fit_roofline(ks, latency_ms)
        rounds = int(np.clip(60 + len(keys) // 8, 150, 500))
        self.base[GLOBAL] = fit_baseline(line, y)
        self.boosters[GLOBAL] = _train(x, y - baseline(line, self.base[GLOBAL]), rounds)
        self.counts[GLOBAL] = len(keys)
        for kind in sorted(set(kinds)):
            sel = kinds == kind
            n = int(sel.sum())
            self.counts[kind] = n
            if n >= MIN_PER_KIND:
                self.base[kind] = fit_baseline(line[sel], y[sel])
                resid = y[sel] - baseline(line[sel], self.base[kind])
                self.boosters[kind] = _train(x[sel], resid, int(np.clip(60 + n // 4, 100, 400)))
        return self

    def predict(self, keys: list[str]) -> tuple[np.ndarray, list[str]]:
        """Latency in ms and, per key, which model answered (kind name or '_global')."""
        keys = list(keys)
        if not keys:
            return np.zeros(0), []
        if GLOBAL not in self.boosters:
            raise RuntimeError("kernel regressors used before update() or load()")
        ks = [parse_key(k) for k in keys]
        x, line = _inputs(ks, self.channel_tile)
        kinds = np.array([k.kind for k in ks])
        out = np.empty(len(keys))
        used = [GLOBAL] * len(keys)
        todo = np.ones(len(keys), bool)
        for kind, booster in self.boosters.items():
            if kind == GLOBAL:
                continue
            sel = kinds == kind
            if sel.any():
                out[sel] = booster.inplace_predict(x[sel]) + baseline(line[sel], self.base[kind])
                todo &= ~sel
                for i in np.flatnonzero(sel):
                    used[i] = kind
        if todo.any():
            out[todo] = self.boosters[GLOBAL].inplace_predict(x[todo]) + baseline(line[todo], self.base[GLOBAL])
        return np.maximum(np.exp(out), roofline_floor(ks, self.roof)), used

    def save(self, folder: Path) -> dict:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for kind, booster in self.boosters.items():
            f = folder / f"kernel_{kind.strip('_')}.json"
            booster.save_model(str(f))
            files[kind] = f.name
        return {"files": files, "baseline": self.base, "counts": self.counts, "features": list(FEATURE_NAMES),
                "roofline": self.roof, "roofline_quantile": ROOF_QUANTILE, "channel_tile": self.channel_tile,
                "target": "log(latency_ms) = baseline(log2 flops, log2 bytes, log2 params[, log2 tiled flops, "
                          "log2 tiled output elements]) + trees, "
                          "held above flops/peak_flops and bytes/peak_bytes of the kind"}

    @classmethod
    def load(cls, folder: Path, meta: dict) -> "KernelRegressors":
        import xgboost as xgb

        self = cls(int(meta.get("channel_tile", 0)))     # 0 in predictors fitted before tiles
        if meta.get("features") != list(FEATURE_NAMES):
            raise ValueError("kernel regressors were fitted with other features; re-fit them (hwlat profile resumes "
                             "and re-fits without measuring again)")
        for kind, fname in meta["files"].items():
            b = xgb.Booster()
            b.load_model(str(Path(folder) / fname))
            b.set_param({"nthread": 1})
            self.boosters[kind] = b
        self.base = {k: list(v) for k, v in meta["baseline"].items()}
        self.counts = dict(meta.get("counts", {}))
        self.roof = {k: list(v) for k, v in meta.get("roofline", {}).items()}   # none in older predictors
        return self


def write_meta(folder: Path, meta: dict) -> None:
    (Path(folder) / "kernels.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
