"""TVM on this CPU: what MetaSchedule tuning costs and buys, and tuned TVM vs ONNX Runtime.

1. Kernels: each kernel tuned from scratch at each trial budget; tuning wall time, untuned and
   tuned latency, ONNX Runtime latency of the same single-kernel graph.
2. Models: each model compiled untuned, then with every TIR task tuned (``--model-trials`` per
   task, one database per model); latency next to ONNX Runtime.

All timings: one thread, the shared protocol, ``--passes`` interleaved passes, median.

    python benchmarks/bench_tvm.py                          # a few minutes
    python benchmarks/bench_tvm.py --trials 8,32,128 --kernels all \\
        --models resnet18-r160,squeezenet1.1-r160,mobilenetv2-w0.5-r160 --model-trials 64   # hours
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KERNELS = {
    "conv 3x3": "conv-relu_i28x28x64_o28x28x64_k3_s1_g1",
    "dw 3x3": "conv-relu_i56x56x144_o56x56x144_k3_s1_g144",
    "conv 1x1": "conv_i14x14x160_o14x14x960_k1_s1_g1",
    "gemm": "gemm_i1280_o1000",
    "dw 5x5 s2": "conv_i28x28x144_o14x14x144_k5_s2_g144",
    "se": "se-relu-hsigmoid_i14x14x672_o14x14x672_m168",
}
DEFAULT_KERNELS = ["conv 3x3", "conv 1x1"]


def _protocol():
    from hwlat.protocol import Protocol

    return Protocol(warmup_ms=20.0, trials=7, min_trial_ms=5.0, max_retries=1)


def _time(sessions: dict, passes: int) -> dict[str, float]:
    """Median over interleaved passes of each (activated) session's median latency."""
    from hwlat.protocol import measure_session

    vals: dict[str, list[float]] = {k: [] for k in sessions}
    names = list(sessions)
    for _ in range(passes):
        random.shuffle(names)
        for n in names:
            vals[n].append(measure_session(sessions[n], _protocol()).median_ms)
    return {k: float(np.median(v)) for k, v in vals.items()}


def _ort_session(model):
    from hwlat.profilers.onnxruntime.runner import OrtSession

    return OrtSession(model.SerializeToString(), threads=1).activate()


def _tvm_session(path):
    from hwlat.profilers.tvm.runner import TVMSession

    return TVMSession(path, threads=1).activate()


def bench_kernels(names: list[str], budgets: list[int], passes: int, work: Path, show: bool = True) -> list[dict]:
    from hwlat.device import DeviceConfig
    from hwlat.kernel_onnx import kernel_model
    from hwlat.profilers import get_backend
    from hwlat.profilers.base import BuildInput

    be = get_backend("tvm")
    rows = []
    for name in names:
        key = KERNELS[name]
        model = kernel_model(key)
        sessions, row = {"ort": _ort_session(model)}, {"kernel": name, "key": key, "tune_s": {}}
        for trials in [0, *budgets]:
            dev = DeviceConfig(name="bench-tvm", backend="tvm",
                               options={"tune_trials": trials, "tuning_dir": str(work / f"db-{name}-{trials}")})
            t0 = time.monotonic()
            b = be.builder(dev, work).build([BuildInput(key, model)])[0]
            if b.error:
                print(f"{key} ({trials} trials): {b.error}", file=sys.stderr)
                continue
            if trials:
                row["tune_s"][trials] = time.monotonic() - t0
            sessions[f"tvm{trials}"] = _tvm_session(b.artifact)
        times = _time(sessions, passes)
        row.update({"ort_ms": times.pop("ort"), "tvm_ms": {int(k[3:]): v for k, v in times.items()}})
        for s in sessions.values():
            s.deactivate()
        rows.append(row)
        if show:
            _print_kernel(row, budgets)
    return rows


def bench_models(names: list[str], trials: int, passes: int, work: Path, show: bool = True) -> list[dict]:
    from hwlat import zoo
    from hwlat.device import DeviceConfig
    from hwlat.ir import load_onnx
    from hwlat.profilers import get_backend

    be = get_backend("tvm")
    rows = []
    for name in names:
        path = work / f"{name}.onnx"
        zoo.export_onnx(zoo.get(name), path)
        model = load_onnx(path, canonical=False)
        model.graph.name = name
        sessions, row = {"ort": _ort_session(model)}, {"model": name}
        for t in (0, trials):
            dev = DeviceConfig(name="bench-tvm", backend="tvm",
                               options={"tune_trials": t, "tuning_dir": str(work / f"db-{name}")})
            t0 = time.monotonic()
            lib = be.compile(model, work / f"{name}-{t}", dev)
            meta = json.loads(Path(str(lib) + ".json").read_text())
            if t:
                row.update(tune_s=time.monotonic() - t0, tasks=meta["tuning"]["tasks"],
                           tuned_tasks=meta["tuning"]["tuned_tasks"])
            sessions[f"tvm{t}"] = _tvm_session(lib)
        times = _time(sessions, passes)
        row.update(ort_ms=times["ort"], untuned_ms=times["tvm0"], tuned_ms=times[f"tvm{trials}"], trials=trials)
        for s in sessions.values():
            s.deactivate()
        rows.append(row)
        if not show:
            continue
        print(f"{name:28s} tasks {row['tasks']:3d} (tuned {row['tuned_tasks']:3d})  tuning {row['tune_s'] / 60:6.1f} min"
              f"  untuned {row['untuned_ms']:9.2f} ms  tuned {row['tuned_ms']:8.2f} ms  ORT {row['ort_ms']:7.2f} ms"
              f"  tuned/ORT {row['tuned_ms'] / row['ort_ms']:5.2f}x", flush=True)
    return rows


def _print_kernel(row: dict, budgets: list[int]) -> None:
    tv = row["tvm_ms"]
    cells = "  ".join(f"{b:4d}: {row['tune_s'].get(b, float('nan')) / 60:5.2f} min {tv.get(b, float('nan')):8.3f} ms"
                      for b in budgets)
    print(f"{row['kernel']:10s} untuned {tv.get(0, float('nan')):8.3f} ms  {cells}  ORT {row['ort_ms']:7.3f} ms",
          flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default=",".join(DEFAULT_KERNELS),
                    help=f"comma-separated names or 'all' ({', '.join(KERNELS)})")
    ap.add_argument("--trials", default="8,32", help="trial budgets per kernel (comma-separated)")
    ap.add_argument("--models", default="resnet18-r160", help="zoo model names (comma-separated, '' for none)")
    ap.add_argument("--model-trials", type=int, default=8, help="trials per TIR task of each model")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    args = ap.parse_args(argv)
    import os

    os.environ.setdefault("TVM_NUM_THREADS", "1")
    kernels = list(KERNELS) if args.kernels == "all" else [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        print(f"unknown kernel(s) {unknown}: choose from {list(KERNELS)}", file=sys.stderr)
        return 2
    budgets = [int(x) for x in args.trials.split(",") if x.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out = {}
    with tempfile.TemporaryDirectory(prefix="hwlat-bench-tvm-") as tmp:
        work = Path(tmp)
        if kernels and not args.json:
            print(f"== kernels: tuning time and latency (1 thread), budgets {budgets} ==")
        out["kernels"] = bench_kernels(kernels, budgets, args.passes, work, not args.json) if kernels else []
        if models and not args.json:
            print(f"== models: every task tuned with {args.model_trials} trials, vs ONNX Runtime ==")
        out["models"] = bench_models(models, args.model_trials, args.passes, work, not args.json) if models else []
    if args.json:
        print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
