"""Profile a fresh device in resumed stages and print validation figures after each stage.

The ground truth is measured once, before any profiling: every model of the validation zoo in
``--passes`` shuffled, interleaved passes (fresh session each), median. The device is then
profiled in stages (``--stages 2,4,6,10`` = cumulative minutes; each stage resumes the store),
and after each stage the predictor is scored against that ground truth: RMSPE, within +-5% /
+-10%, Spearman, overall and per family, so the curve shows how error falls with minutes.

With ``--final-validate`` the zoo is measured again right after the last stage by
``hwlat.validate``, whose drift probe re-measures a few of the device's kernels: on a shared host
the device itself runs a few percent faster or slower from one hour to the next, and the probe's
drift-corrected figures separate that from the predictor's own error (headline figures are raw).

    python benchmarks/bench_profile_accuracy.py --backend onnxruntime --stages 2,5,10
    python benchmarks/bench_profile_accuracy.py --backend litert --stages 10 --final-validate
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--space", default="ofa-mbv3")
    ap.add_argument("--stages", default="2,4,6,10", help="cumulative profiling minutes after which to validate")
    ap.add_argument("--passes", type=int, default=3, help="interleaved passes of the ground truth")
    ap.add_argument("--families", default=None, help="comma-separated zoo families (default: all)")
    ap.add_argument("--ofa-count", type=int, default=20)
    ap.add_argument("--lut-dir", default=None, help="where the fresh device goes (default: a temp dir)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write all figures to this JSON file")
    ap.add_argument("--truth-cache", default=None,
                    help="JSON file keeping the ground truth between runs (measured when absent or for another setup)")
    ap.add_argument("--final-validate", action="store_true",
                    help="after the last stage, also run hwlat.validate (the zoo measured again, right after the "
                         "profile, and the drift probe: how the device's speed moved since it was profiled)")
    args = ap.parse_args()

    import hwlat
    from hwlat.device import DeviceConfig
    from hwlat.profilers import get_backend
    from hwlat.validation import measure_models, metrics, zoo_onnx

    lut_dir = Path(args.lut_dir or tempfile.mkdtemp(prefix="hwlat-bench-"))
    device = args.device or f"bench-{args.backend}-{args.precision}-{args.threads}t-{int(time.time())}"
    fams = args.families.split(",") if args.families else None
    zoo_dir = Path(tempfile.gettempdir()) / "hwlat-zoo"
    zoo_dir.mkdir(exist_ok=True)
    items = zoo_onnx(zoo_dir, fams, args.ofa_count)
    cfg = DeviceConfig("truth", args.backend, threads=args.threads, precision=args.precision)
    t0 = time.time()
    setup = {"backend": args.backend, "precision": args.precision, "threads": args.threads, "passes": args.passes,
             "models": sorted(n for n, _, _ in items), "versions": get_backend(args.backend).versions()}
    cache = Path(args.truth_cache) if args.truth_cache else None
    truth = None
    if cache and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("setup") == setup:
            truth = saved["truth"]
            print(f"ground truth: {len(truth)} models from {cache}")
    if truth is None:
        truth = measure_models(items, cfg, passes=args.passes)
        print(f"ground truth: {len(truth)} models x {args.passes} interleaved passes in {time.time() - t0:.0f} s")
        if cache:
            cache.write_text(json.dumps({"setup": setup, "truth": truth}, indent=1))

    stages = [float(s) for s in args.stages.split(",")]
    done_min, report = 0.0, []
    for stage in stages:
        t1 = time.time()
        dev = hwlat.profile(device=device, backend=args.backend, threads=args.threads, precision=args.precision,
                            spaces=[args.space] if args.space else [], budget_minutes=stage - done_min,
                            lut_dir=lut_dir, progress=True)
        done_min = stage
        pred = hwlat.load_predictor(device, lut_dir=lut_dir)
        rows = [(n, f, truth[n], pred.predict(p)) for n, f, p in items if n in truth]
        overall = metrics([r[2] for r in rows], [r[3] for r in rows])
        fam = {}
        for f in sorted({r[1] for r in rows}):
            sel = [r for r in rows if r[1] == f]
            fam[f] = metrics([r[2] for r in sel], [r[3] for r in sel])
        ofa = fam.get("ofa", {})
        report.append({"minutes": stage, "wall_s": round(time.time() - t1, 1), "kernels": dev.summary["kernels_measured"],
                       "overall": overall, "families": fam, "correction": dev.summary["fit"].get("correction"),
                       "curve": dev.summary.get("curve"),
                       "models": [{"name": n, "family": f, "measured_ms": y, "predicted_ms": p} for n, f, y, p in rows]})
        print(f"\n== after {stage:g} min of profiling ({dev.summary['kernels_measured']} kernels) ==")
        print(f"{'family':<14}{'n':>3}{'RMSPE':>8}{'±5%':>6}{'±10%':>6}{'bias':>7}")
        for f, m in fam.items():
            print(f"{f:<14}{m['n']:>3}{100 * m['rmspe']:>7.1f}%{100 * m['acc_5pct']:>5.0f}%{100 * m['acc_10pct']:>5.0f}%"
                  f"{m['bias']:>7.3f}")
        print(f"{'ALL':<14}{overall['n']:>3}{100 * overall['rmspe']:>7.1f}%{100 * overall['acc_5pct']:>5.0f}%"
              f"{100 * overall['acc_10pct']:>5.0f}%{overall['bias']:>7.3f}   Spearman {overall['spearman']:.3f}"
              f"   (ofa: RMSPE {100 * ofa.get('rmspe', np.nan):.1f}%, ±10% {100 * ofa.get('acc_10pct', np.nan):.0f}%)")
    print("\ncurve (cumulative minutes -> whole zoo within ±10% / RMSPE):")
    for r in report:
        print(f"  {r['minutes']:>5g} min  {r['kernels']:>5} kernels  ±10% {100 * r['overall']['acc_10pct']:5.1f}%  "
              f"±5% {100 * r['overall']['acc_5pct']:5.1f}%  RMSPE {100 * r['overall']['rmspe']:5.1f}%")
    final = None
    if args.final_validate:
        final = hwlat.validate(device, lut_dir=lut_dir, passes=args.passes, ofa_count=args.ofa_count,
                               families=args.families.split(",") if args.families else None)
        print(f"\nhwlat validate right after the profile (zoo measured again, {args.passes} passes): "
              f"±10% {100 * final['acc_10pct']:.1f}%  ±5% {100 * final['acc_5pct']:.1f}%  RMSPE "
              f"{100 * final['rmspe']:.1f}%  bias {final['bias']:.3f}  Spearman {final['spearman']:.3f}")
        if final.get("drift"):
            d, c = final["drift"], final["drift_corrected"]
            print(f"  device speed now / when profiled {d['speed_ratio']:.3f} ({d['kernels']} kernels, quartiles "
                  f"{d['quartiles'][0]:.3f}-{d['quartiles'][1]:.3f}); drift-corrected: ±10% {100 * c['acc_10pct']:.1f}%  "
                  f"±5% {100 * c['acc_5pct']:.1f}%  RMSPE {100 * c['rmspe']:.1f}%  bias {c['bias']:.3f}")
        misses = sorted((m for m in final["models"] if abs(m["error"]) > 0.10), key=lambda m: m["error"])
        print("  outside ±10%: " + (", ".join(f"{m['name']} {100 * m['error']:+.1f}%" for m in misses) or "none"))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "truth": truth, "stages": report, "final": final},
                                              indent=1, default=float))


if __name__ == "__main__":
    main()
