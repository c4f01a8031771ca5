"""Fit a device's predictor from its store: LUT export, kernel regressors, whole-model correction."""

from __future__ import annotations

import json
import time

import numpy as np

from hwlat.predictors.kernel_model import KernelRegressors
from hwlat.predictors.latency import PREDICTOR_DIR, Correction, LatencyPredictor, fit_correction


def arch_net_and_count(pred: LatencyPredictor, space, archs) -> tuple[np.ndarray, np.ndarray]:
    """Sum of net kernel latency and kernel count of each architecture, before correction."""
    from hwlat.predictors.space_tables import OFATable

    saved = pred.correction
    pred.correction = Correction(overhead_ms=saved.overhead_ms)
    try:
        if space.name == "ofa-mbv3":
            t = OFATable(space, pred)
            m = space.to_matrix([space.parse(a) for a in archs])
            pred.correction = Correction(overhead_ms=saved.overhead_ms, a=1.0, b_ms=0.0)
            net = t.predict(m)
            pred.correction = Correction(overhead_ms=saved.overhead_ms, a=0.0, b_ms=1.0)
            cnt = t.predict(m)
            return net, cnt
        net, cnt = [], []
        for a in archs:
            a = space.parse(a)
            mk = pred.kernels_of(space.build(a), space.input_shape(a))
            raw, _, _ = pred.kernel_latencies(mk.keys)
            net.append(float(pred.correction.net(raw).sum()))
            cnt.append(len(mk.keys))
        return np.array(net), np.array(cnt, float)
    finally:
        pred.correction = saved


def fit_device(store) -> dict:
    from hwlat.search import spaces

    t0 = time.perf_counter()
    lut_path = store.export_lut()
    lut = store.lut()
    manifest = store.manifest()
    if lut.empty:
        return {"error": "no kernels measured"}
    regs = KernelRegressors().update(list(lut["key"]), lut["latency_ms"].to_numpy())
    overhead = float(manifest.get("call_overhead_ms", 0.0))
    pred = LatencyPredictor(store.path.name, manifest, dict(zip(lut["key"], lut["latency_ms"])), regs,
                            Correction(overhead_ms=overhead), store.path)
    corr = Correction(overhead_ms=overhead)
    models = store.model_lut()
    if not models.empty:
        nets, cnts, ys = [], [], []
        for family, grp in models.groupby("family"):
            try:
                sp = spaces.get(family)
            except Exception:  # noqa: BLE001 - models of no known space: not used for the correction
                continue
            archs = [json.loads(k)[0] for k in grp["kernels"]]
            n, c = arch_net_and_count(pred, sp, archs)
            nets += list(n)
            cnts += list(c)
            ys += list(grp["latency_ms"])
        if ys:
            corr = fit_correction(np.array(nets), np.array(cnts), np.array(ys), overhead)
    pdir = store.path / PREDICTOR_DIR
    kmeta = regs.save(pdir)
    import onnxruntime
    import xgboost

    meta = {"kernels": kmeta, "correction": corr.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"xgboost": xgboost.__version__, "onnxruntime": onnxruntime.__version__},
            "lut_rows": int(len(lut))}
    tmp = pdir / "predictor.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(pdir / "predictor.json")
    return {"lut": str(lut_path), "kernels": int(len(lut)), "correction": corr.to_dict(),
            "fit_seconds": round(time.perf_counter() - t0, 2)}
