"""Where a model's prediction goes wrong: each of its kernels measured alone against the prediction.

For each named zoo model, every kernel hwlat detects in it is built and measured alone on the
device's backend with the profile's protocol (``--passes`` shuffled passes, reduced as the LUT
reduces its passes), and compared with the raw per-kernel prediction (LUT or regressor, before
the whole-model correction and without layout conversions). Per model it prints the sum of each,
the ratio per kernel type and the kernels that miss most. A ratio near 1 with the model still
mispredicted points at the in-network effects (the correction); a ratio off 1 points at the
regressors (shapes the prior does not reach).

    python benchmarks/bench_kernels_alone.py --device my-litert --lut-dir D --models ghostnet-w0.5-r224,resnet18-r224

Backends that rebuild kernels cheaply only (ONNX Runtime, LiteRT): TVM would tune each kernel.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", required=True)
    ap.add_argument("--lut-dir", default=None)
    ap.add_argument("--models", required=True, help="comma-separated zoo model names")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--worst", type=int, default=5, help="kernels listed per model")
    args = ap.parse_args()

    import hwlat
    from hwlat.device import DeviceConfig
    from hwlat.validation import kernels_alone, zoo_onnx
    from hwlat.predictors.latency import network_layout_ms

    pred = hwlat.load_predictor(args.device, lut_dir=args.lut_dir)
    config = DeviceConfig.from_dict(pred.manifest["device"])
    if config.backend not in ("onnxruntime", "litert"):
        raise SystemExit(f"bench_kernels_alone: backend {config.backend} rebuilds kernels at a tuning cost; "
                         "use an onnxruntime or litert device")
    names = args.models.split(",")
    tmp = Path(tempfile.mkdtemp())
    items = [it for it in zoo_onnx(tmp) if it[0] in names]
    missing = set(names) - {it[0] for it in items}
    if missing:
        raise SystemExit(f"bench_kernels_alone: not in the validation zoo: {', '.join(sorted(missing))}")
    rng = np.random.default_rng(0)
    for name, family, path in items:
        mk = pred.kernels_of(str(path))
        keys = mk.keys
        raw, sources, _ = pred.kernel_latencies(keys)
        if pred.layout_per_element > 0:
            raw = raw - np.array([network_layout_ms(k, pred.layout_per_element, pred.layout_block) for k in keys])
        times = kernels_alone(pred, config, keys, args.passes, rng)
        alone = np.array([times.get(k, np.nan) for k in keys])
        ok = ~np.isnan(alone)
        print(f"\n{name} ({family}): {len(keys)} kernels, {sum(s == 'lut' for s in sources)} from the LUT; "
              f"predicted sum {raw[ok].sum():.3f} ms, alone sum {alone[ok].sum():.3f} ms, "
              f"ratio {raw[ok].sum() / alone[ok].sum():.3f}" + (f" ({(~ok).sum()} failed to build)" if (~ok).any() else ""))
        by = collections.defaultdict(lambda: [0.0, 0.0, 0])
        for k, r, a, o in zip(keys, raw, alone, ok):
            if not o:
                continue
            b = by[k.split("_")[0]]
            b[0] += r
            b[1] += a
            b[2] += 1
        for base, (r, a, n) in sorted(by.items(), key=lambda x: -x[1][1]):
            print(f"  {base:24s} n={n:3d}  predicted {r:7.3f}  alone {a:7.3f}  ratio {r / a if a > 0 else float('nan'):.2f}")
        worst = sorted({k: (r, a) for k, r, a, o in zip(keys, raw, alone, ok) if o}.items(),
                       key=lambda x: -abs(x[1][0] - x[1][1]))[:args.worst]
        for k, (r, a) in worst:
            print(f"    {k:52s} predicted {r:.4f}  alone {a:.4f}  ({r / a:.2f}x)")


if __name__ == "__main__":
    main()
