"""Score profiled devices against a ground truth taken together with their calibration networks.

This host's memory-bound speed drifts by several percent over tens of minutes, sometimes by 20%,
while compute-bound kernels hardly move (measured: the validation zoo's mobile networks 19-23%
slower 40 minutes later, ResNets 5%). A whole-model correction fitted during a profile then
carries that profile's state. Here the zoo and the calibration networks of ``hwlat profile`` (the
same spaces, counts, seeds and ``calibration_sample``) are measured in one interleaved set, the
calibration measurements replace the stored ones in a copy of each device, the predictor is
refitted and scored, overall and per family.

    python benchmarks/bench_recalibrated.py onnxruntime ~/.hwlat/devices/my-cpu [more device dirs]
    python benchmarks/bench_recalibrated.py onnxruntime DEV --without convnet   # leave a family out
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("backend")
    ap.add_argument("devices", nargs="+", help="device folders (copied, never modified)")
    ap.add_argument("--spaces", default="ofa-mbv3", help="spaces the devices were profiled with")
    ap.add_argument("--arch-samples", type=int, default=24)
    ap.add_argument("--without", default="", help="calibration families to leave out (comma-separated)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None, help="also write the interleaved measurements (ms per network) to this JSON")
    args = ap.parse_args()

    import hwlat
    from hwlat.device import DeviceConfig
    from hwlat.ir import torch_to_onnx
    from hwlat.predictors.fit import fit_device
    from hwlat.profiling import CALIBRATION_EXTRA
    from hwlat.protocol import Measurement
    from hwlat.search import spaces
    from hwlat.store import DeviceStore
    from hwlat.validation import measure_models, metrics, zoo_onnx

    own = [s for s in args.spaces.split(",") if s]
    per_space = max(1, args.arch_samples // max(len(own), 1))
    plan = [(s, per_space) for s in own] + [(n, min(c, args.arch_samples)) for n, c in CALIBRATION_EXTRA.items()
                                            if n not in own]
    skip = {s for s in args.without.split(",") if s}
    tmp = Path(tempfile.mkdtemp(prefix="hwlat-recal-nets-"))
    cal, keys = [], {}
    for sname, count in plan:
        if sname in skip:
            continue
        sp = spaces.get(sname)
        for i, a in enumerate(sp.calibration_sample(count, seed=1000)):
            n = f"{sname}-cal-{i:03d}"
            p = tmp / f"{n}.onnx"
            torch_to_onnx(sp.build(a), sp.input_shape(a), p)
            cal.append((n, sname, p))
            keys[n] = sp.key(a)
    zoo_dir = Path(tempfile.gettempdir()) / "hwlat-zoo"
    zoo_dir.mkdir(exist_ok=True)
    zoo = zoo_onnx(zoo_dir, None, 20)
    fam = {n: f for n, f, _ in zoo}
    res = measure_models(zoo + cal, DeviceConfig("t", args.backend, threads=args.threads), passes=args.passes)
    print(f"measured {len(zoo)} zoo models and {len(cal)} calibration networks "
          f"({', '.join(sorted({f for _, f, _ in cal}))}) in {args.passes} interleaved passes")
    if args.save:
        import json

        Path(args.save).write_text(json.dumps({"zoo": {n: res[n] for n, _, _ in zoo if n in res},
                                               "calibration": {n: res[n] for n, _, _ in cal if n in res}}, indent=1))
    out_root = Path(tempfile.mkdtemp(prefix="hwlat-recal-"))
    for src in args.devices:
        dst = out_root / Path(src).name
        shutil.copytree(src, dst)
        st = DeviceStore(dst)
        st.conn.execute("DELETE FROM models")
        st.conn.commit()
        for n, f, _ in cal:
            if n in res:
                st.add_model_measurement(n, f, 0, Measurement(res[n], res[n], res[n], 1), kernels=[keys[n]])
        fit_device(st)
        st.close()
        pred = hwlat.load_predictor(dst.name, lut_dir=str(dst.parent))
        c = pred.correction
        rows = [(n, fam[n], res[n], pred.predict(zoo_dir / f"{n}.onnx")) for n, _, _ in zoo if n in res]
        m = metrics([r[2] for r in rows], [r[3] for r in rows])
        print(f"\n{src}: terms {c.terms} d={c.d_ms_per_mb:.4f} e={c.e_ms_per_mb:.4f} a={c.a:.3f} g={c.g_ms_per_mb2:.2e} "
              f"(LOO {c.rmspe_after:.3f} on {c.fitted_on})\n  ALL RMSPE {100 * m['rmspe']:.1f}%  ±5% "
              f"{100 * m['acc_5pct']:.0f}%  ±10% {100 * m['acc_10pct']:.1f}%  bias {m['bias']:.3f}")
        for f in sorted(set(fam.values())):
            sel = [r for r in rows if r[1] == f]
            mm = metrics([r[2] for r in sel], [r[3] for r in sel])
            print(f"   {f:<14}{mm['n']:>3}{100 * mm['rmspe']:>7.1f}%{100 * mm['acc_10pct']:>5.0f}%{mm['bias']:>7.3f}")
        print("  outside ±10%: " + ", ".join(f"{n} {100 * (p / y - 1):+.0f}%" for n, _, y, p in rows
                                             if abs(p / y - 1) > 0.1))


if __name__ == "__main__":
    main()
