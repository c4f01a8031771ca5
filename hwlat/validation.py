"""Validation: measure held-out models on the device's backend and compare with its predictor.

The ground truth is robust: each model is measured in ``passes`` shuffled, interleaved passes
(fresh session each time) and the median taken, as MEASUREMENT.md asks. Figures: RMSPE, share
within +-5% and +-10%, Spearman, per family and overall.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from hwlat.errors import HwlatError
from hwlat.protocol import MODEL_PROTOCOL, Protocol


def metrics(measured, predicted) -> dict:
    from scipy.stats import spearmanr

    y, p = np.asarray(measured, float), np.asarray(predicted, float)
    if len(y) == 0:
        return {"n": 0}
    err = (p - y) / y
    out = {"n": int(len(y)), "rmspe": float(np.sqrt(np.mean(err ** 2))),
           "acc_5pct": float(np.mean(np.abs(err) <= 0.05)), "acc_10pct": float(np.mean(np.abs(err) <= 0.10)),
           "bias": float(np.median(p / y))}
    out["spearman"] = float(spearmanr(y, p).statistic) if len(y) > 2 else float("nan")
    return out


def zoo_onnx(folder: Path, families=None, ofa_count: int = 20, seed: int = 0) -> list[tuple[str, str, Path]]:
    """(name, family, path) of the validation zoo exported to ``folder`` (re-used when present)."""
    from hwlat import zoo

    out = []
    for m in zoo.models(families=families, seed=seed, ofa_count=ofa_count):
        path = Path(folder) / f"{m.name}.onnx"
        if not path.is_file():
            zoo.export_onnx(m, path)
        out.append((m.name, m.family, path))
    return out


def measure_models(items, config, passes: int = 3, protocol: Protocol | None = None, seed: int = 0,
                   progress=None, max_passes: int | None = None, agree: float = 0.1) -> dict[str, float]:
    """Median over interleaved passes of each model's latency (ms): ``passes`` passes, then more
    passes (up to ``max_passes``) for the models whose passes still disagree by more than ``agree``."""
    max_passes = max_passes or passes + 2
    from hwlat.ir import load_onnx
    from hwlat.profilers import get_backend
    from hwlat.profilers.base import BuildInput

    protocol = protocol or MODEL_PROTOCOL
    be = get_backend(config.backend)
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {n: [] for n, _, _ in items}
    with tempfile.TemporaryDirectory() as tmp:
        builder = be.builder(config, Path(tmp))
        builds = {}
        for name, _, path in items:
            proto = load_onnx(path, canonical=False)
            proto.graph.name = name
            builds[name] = builder.build([BuildInput(name, proto, kind="model")])[0]
        for p in range(max_passes):
            if p < passes:
                order = list(builds)
            else:
                order = [n for n, v in times.items() if len(v) and (max(v) - min(v)) / np.median(v) > agree]
                if not order:
                    break
            rng.shuffle(order)
            runner = be.runner(config)
            try:
                for name in order:
                    for r in runner.run([builds[name]], protocol):
                        if r.measurement is not None:
                            times[name].append(r.measurement.median_ms)
                        elif progress:
                            progress(f"{name}: {r.error}")
                    if progress:
                        progress(None)
            finally:
                runner.close()
    return {n: float(np.median(v)) for n, v in times.items() if v}


DRIFT_KERNELS = 32          # kernels re-measured by the drift probe
DRIFT_RANGE_MS = (0.02, 5.0)  # kernels outside it are timer-bound or too slow to re-measure


def kernels_alone(pred, config, keys, passes: int, rng) -> dict[str, float]:
    """Each kernel key built alone on ``config``'s backend and measured with the device's profile
    protocol in ``passes`` shuffled passes: key -> ms, the passes reduced as the LUT reduces them
    (``Backend.pass_estimate``), layout conversions excluded (as the LUT stores them); a kernel
    that fails to build or to run has no entry."""
    from hwlat.kernel_onnx import kernel_model
    from hwlat.profilers import get_backend
    from hwlat.profilers.base import BuildInput

    be = get_backend(config.backend)
    proto = Protocol.from_dict(pred.manifest["protocol"]) if pred.manifest.get("protocol") else Protocol()
    keys = sorted(set(keys))
    with tempfile.TemporaryDirectory() as tmp:
        builds = [b for b in be.builder(config, Path(tmp)).build([BuildInput(k, kernel_model(k)) for k in keys])
                  if not b.error]
        times: dict[str, list[float]] = {b.key: [] for b in builds}
        runner = be.runner(config)
        try:
            for _ in range(passes):
                for r in runner.run([builds[i] for i in rng.permutation(len(builds))], proto):
                    if r.measurement is not None:
                        times[r.key].append(r.measurement.median_ms - (r.measurement.layout_ms or 0.0))
        finally:
            runner.close()
    reduce = np.min if be.pass_estimate == "min" else np.median
    return {k: float(reduce(v)) for k, v in times.items() if v}


def drift_probe(pred, config, n: int = DRIFT_KERNELS, passes: int = 3, seed: int = 0) -> dict | None:
    """How fast the device runs now against when it was profiled.

    ``n`` of the device's measured kernels (0.02-5 ms, a fixed random choice) are rebuilt and
    measured again with the profile's protocol in ``passes`` shuffled passes, each reduced as the
    LUT reduces its passes (``Backend.pass_estimate``); ``speed_ratio`` is the median of now / LUT
    over them (below 1: the device runs faster now). Shared hosts drift: on this project's 2-core
    VM the same kernels and networks ran 7% faster one morning than the evening they were profiled
    (151 LiteRT kernels re-measured: median 0.934, quartiles 0.90-0.96; 42 calibration networks:
    0.925), which no predictor can know. ``None`` where the backend cannot rebuild kernels cheaply
    (TVM, TensorRT) or the device has fewer than 8 kernels in range."""
    from hwlat.profilers import get_backend

    be = get_backend(config.backend)
    if not getattr(be, "drift_probe", False):
        return None
    lo, hi = DRIFT_RANGE_MS
    keys = sorted(k for k, v in pred.lut.items() if lo <= v <= hi)
    if len(keys) < 8:
        return None
    rng = np.random.default_rng(seed)
    keys = [keys[i] for i in sorted(rng.choice(len(keys), size=min(n, len(keys)), replace=False))]
    now = kernels_alone(pred, config, keys, passes, rng)
    ratios = np.array([v / pred.lut[k] for k, v in now.items() if pred.lut[k] > 0])
    if len(ratios) < 8:
        return None
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"speed_ratio": float(np.median(ratios)), "kernels": int(len(ratios)), "quartiles": [float(q1), float(q3)]}


def validate(device: str, *, lut_dir=None, models_dir=None, families=None, passes: int = 3, plot=None,
             ofa_count: int = 20, cache_dir=None, progress=None, drift: bool = True) -> dict:
    """Measure held-out models on ``device``'s backend; compare with its predictor.

    With ``drift``, a few of the device's kernels are measured again right after the models
    (``drift_probe``): the result's ``drift`` says how fast the device runs now against its
    profile, and ``drift_corrected`` scores the predictions scaled by that ratio, which separates
    a device that changed since it was profiled from a predictor that is wrong. The headline
    figures are never corrected."""
    from hwlat.api import load_predictor

    pred = load_predictor(device, lut_dir=lut_dir)
    from hwlat.device import DeviceConfig

    config = DeviceConfig.from_dict(pred.manifest["device"])
    if pred.device_dir is not None:
        # backends that keep per-device state (TVM tuning records) build models with it
        config.options = {**config.options, "device_dir": str(pred.device_dir)}
    if models_dir:
        files = sorted(Path(models_dir).glob("*.onnx"))
        if not files:
            raise HwlatError(f"--models {models_dir}: no .onnx files found there")
        items = [(f.stem, "models", f) for f in files]
    else:
        folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "hwlat-zoo"
        folder.mkdir(parents=True, exist_ok=True)
        items = zoo_onnx(folder, families, ofa_count)
    predicted = {name: pred.predict(path) for name, _, path in items}
    measured = measure_models(items, config, passes=passes, progress=progress)
    rows = [{"name": n, "family": f, "measured_ms": measured[n], "predicted_ms": predicted[n],
             "error": (predicted[n] - measured[n]) / measured[n]} for n, f, _ in items if n in measured]
    overall = metrics([r["measured_ms"] for r in rows], [r["predicted_ms"] for r in rows])
    fams = {}
    for fam in sorted({r["family"] for r in rows}):
        sel = [r for r in rows if r["family"] == fam]
        fams[fam] = metrics([r["measured_ms"] for r in sel], [r["predicted_ms"] for r in sel])
    result = {"device": device, "n_models": overall.get("n", 0), "rmspe": overall.get("rmspe"),
              "acc_5pct": overall.get("acc_5pct"), "acc_10pct": overall.get("acc_10pct"),
              "spearman": overall.get("spearman"), "bias": overall.get("bias"), "passes": passes,
              "families": fams, "models": rows}
    if drift:
        d = drift_probe(pred, config)
        if d is not None:
            result["drift"] = d
            corr = metrics([r["measured_ms"] for r in rows], [r["predicted_ms"] * d["speed_ratio"] for r in rows])
            result["drift_corrected"] = {k: corr.get(k) for k in ("rmspe", "acc_5pct", "acc_10pct", "bias")}
    if plot:
        plot_validation(rows, plot, device, overall)
        result["plot"] = str(plot)
    return result


def plot_validation(rows, out, device, overall) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
    fams = sorted({r["family"] for r in rows})
    cmap = plt.get_cmap("tab20")
    for i, fam in enumerate(fams):
        sel = [r for r in rows if r["family"] == fam]
        ax.scatter([r["measured_ms"] for r in sel], [r["predicted_ms"] for r in sel], s=22, label=fam,
                   color=cmap(i % 20))
    lo = min(min(r["measured_ms"], r["predicted_ms"]) for r in rows) * 0.8
    hi = max(max(r["measured_ms"], r["predicted_ms"]) for r in rows) * 1.2
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=1)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="grey", alpha=0.2, label="±10%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms, median of interleaved passes)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{device}: RMSPE {overall['rmspe'] * 100:.1f}%, ±10% {overall['acc_10pct'] * 100:.0f}%, "
                 f"±5% {overall['acc_5pct'] * 100:.0f}%", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    tmp = Path(str(out) + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
