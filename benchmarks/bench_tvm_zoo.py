"""TVM: a device profiled with MetaSchedule tuning, then the validation zoo compiled with that
device's tuning records, predicted vs measured; and tuned TVM next to ONNX Runtime per model.

1. ``hwlat.profile`` a fresh local TVM device (``--tune-trials`` per kernel, one thread) on the
   kernels of the chosen zoo models (``models=``: their kernels are planned first; no prior
   sample, no adaptive rounds), printing tuning seconds per kernel. ``--calibration N`` fbnet
   networks are compiled with tuning and measured whole, and their kernels tuned and measured, to
   fit the whole-model correction (never the zoo models themselves: those validate it).
2. ``hwlat.validate`` on those models: each is compiled with the device's database (tasks the
   kernels did not cover are tuned then, and the fraction already tuned is reported), measured in
   ``--passes`` interleaved passes, and compared with the device's predictor.
3. The same models on ONNX Runtime (one thread, same protocol) for the TVM-vs-ORT table.

    python benchmarks/bench_tvm_zoo.py                      # 4 models (~100 kernels), about 40 minutes
    python benchmarks/bench_tvm_zoo.py --models resnet18-r160,squeezenet1.1-r160 --tune-trials 16
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = "squeezenet1.1-r160,resnet18-r160,mobilenetv2-w0.5-r160,shufflenetv2-w0.5-r224"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help="zoo model names (comma-separated)")
    ap.add_argument("--tune-trials", type=int, default=8)
    ap.add_argument("--budget-minutes", type=float, default=60.0)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=8,
                    help="fbnet networks measured whole (their kernels tuned too) to fit the whole-model "
                         "correction; 0 = kernel sums only")
    ap.add_argument("--lut-dir", default=None)
    ap.add_argument("--device", default=None,
                    help="re-use this already profiled device (in --lut-dir): what it measured is kept, the "
                         "kernels of --models it lacks are tuned and measured")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    import hwlat
    from hwlat.device import DeviceConfig
    from hwlat.validation import measure_models, metrics, validate, zoo_onnx

    names = [n for n in args.models.split(",") if n]
    zoo = {n: (f, p) for n, f, p in zoo_onnx(Path(tempfile.gettempdir()) / "hwlat-zoo", None, 20)}
    missing = [n for n in names if n not in zoo]
    if missing:
        raise SystemExit(f"unknown zoo models: {missing}; choose from {sorted(zoo)}")
    work = Path(tempfile.mkdtemp(prefix="hwlat-tvmzoo-"))
    models = work / "models"
    models.mkdir()
    for n in names:
        shutil.copy(zoo[n][1], models / f"{n}.onnx")
    lut_dir = Path(args.lut_dir) if args.lut_dir else work / "devices"
    device = args.device or f"bench-tvm-llvm-{args.tune_trials}t-{int(time.time())}"

    t0 = time.time()
    dev = hwlat.profile(device=device, backend="tvm", threads=1, options={"tune_trials": args.tune_trials},
                        spaces=[], models=str(models), arch_samples=args.calibration,
                        prior=0, adaptive=False, detect_fusion=False, budget_minutes=args.budget_minutes,
                        passes=args.passes, lut_dir=lut_dir, progress=True)
    prof_s = time.time() - t0
    s = dev.summary
    if s["measurements"]:
        per_kernel = prof_s / max(s["kernels_measured"], 1)
        print(f"\nprofile: {s['kernels_measured']} kernels tuned ({args.tune_trials} trials each) and measured in "
              f"{prof_s / 60:.1f} min: {per_kernel:.1f} s per kernel (tuning + {args.passes} passes)")
    else:
        print(f"\nprofile: device {device} re-used as stored ({s['kernels_measured']} kernels); nothing measured now")

    t1 = time.time()
    res = validate(device, lut_dir=lut_dir, models_dir=str(models), passes=args.passes)
    val_s = time.time() - t1
    fam = {r["name"]: zoo[r["name"]][0] for r in res["models"]}
    cfg = DeviceConfig("ort-1t", "onnxruntime", threads=1)
    ort = measure_models([(n, zoo[n][0], zoo[n][1]) for n in names], cfg, passes=args.passes)

    print(f"\nvalidation zoo compiled with the device's tuning records ({val_s / 60:.1f} min incl. compiling)")
    print(f"{'model':<30}{'family':<14}{'TVM meas':>9}{'pred':>9}{'error':>8}{'ORT':>9}{'TVM/ORT':>8}")
    for r in res["models"]:
        n = r["name"]
        o = ort.get(n, float("nan"))
        print(f"{n:<30}{fam[n]:<14}{r['measured_ms']:>9.3f}{r['predicted_ms']:>9.3f}{100 * r['error']:>7.1f}%"
              f"{o:>9.3f}{r['measured_ms'] / o:>8.2f}")
    m = metrics([r["measured_ms"] for r in res["models"]], [r["predicted_ms"] for r in res["models"]])
    print(f"\n{m['n']} models: within ±10% {100 * m['acc_10pct']:.0f}%, within ±5% {100 * m['acc_5pct']:.0f}%, "
          f"RMSPE {100 * m['rmspe']:.1f}%, Spearman {m['spearman']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "profile_s": prof_s, "summary": s, "validate": res,
                                               "ort_ms": ort, "families": fam}, indent=1, default=float))


if __name__ == "__main__":
    main()
