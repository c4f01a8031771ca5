"""Prediction speed: predict_many over OFA architectures, and single ONNX models cold and warm.

    python benchmarks/bench_predict_speed.py --device my-cpu [--lut-dir DIR] [--n 100000]

With no profiled device given, a small one is profiled first (a few minutes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--lut-dir", default=None)
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()

    import hwlat
    from hwlat import zoo
    from hwlat.search import spaces

    if args.device is None:
        args.lut_dir = tempfile.mkdtemp(prefix="hwlat-speed-")
        args.device = "speed-dev"
        hwlat.profile(device=args.device, backend="onnxruntime", spaces=["ofa-mbv3"], budget_minutes=3,
                      lut_dir=args.lut_dir, progress=True)
    p = hwlat.load_predictor(args.device, lut_dir=args.lut_dir)
    space = spaces.get("ofa-mbv3")
    t = time.perf_counter()
    p.predict_many(space.sample(10, seed=1))
    print(f"first predict_many (builds the per-block tables): {time.perf_counter() - t:.2f} s")
    archs = space.sample(args.n, seed=0)
    t = time.perf_counter()
    lat = p.predict_many(archs)
    dt = time.perf_counter() - t
    print(f"predict_many: {args.n} OFA architectures (objects) in {dt:.3f} s = {args.n / dt:,.0f} archs/s "
          f"(latency {lat.min():.2f}..{lat.max():.2f} ms)")
    m = space.to_matrix(archs)
    t = time.perf_counter()
    p.predict_many(m, space=space)
    dt = time.perf_counter() - t
    print(f"predict_many: {args.n} OFA architectures (int matrix) in {dt:.3f} s = {args.n / dt:,.0f} archs/s")

    folder = Path(tempfile.gettempdir()) / "hwlat-zoo"
    folder.mkdir(exist_ok=True)
    for name in ("mobilenetv3-large-w1.0-r224", "resnet18-r224"):
        path = folder / f"{name}.onnx"
        if not path.is_file():
            zoo.export_onnx(zoo.get(name), path)
        t = time.perf_counter()
        p.predict(path)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(20):
            p.predict(path)
        warm = (time.perf_counter() - t) / 20
        print(f"predict({name}.onnx): cold {cold * 1e3:.1f} ms, warm {warm * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
