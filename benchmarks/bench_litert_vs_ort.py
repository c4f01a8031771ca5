"""Per-kernel latency on LiteRT (XNNPACK) vs ONNX Runtime for the same kernels, one thread.

Each kernel is one hwlat.kernel_onnx graph: ONNX Runtime runs it as it is, LiteRT runs it compiled
to .tflite (fp32, and int8 for reference). Sessions stay loaded; every kernel is timed in
``--passes`` shuffled, interleaved passes with the shared protocol and the median pass is
reported, so slow spells of the host hit both runtimes alike.

    python benchmarks/bench_litert_vs_ort.py [--passes 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np

KERNELS = [
    ("conv 1x1", "conv_i56x56x24_o56x56x144_k1_s1_g1"),
    ("conv 1x1", "conv_i14x14x160_o14x14x960_k1_s1_g1"),
    ("conv 1x1 + hswish", "conv-hswish_i28x28x40_o28x28x240_k1_s1_g1"),
    ("conv 3x3 s2 (stem)", "conv_i224x224x3_o112x112x16_k3_s2_g1"),
    ("conv 3x3", "conv_i28x28x64_o28x28x64_k3_s1_g1"),
    ("conv 3x3 + relu", "conv-relu_i56x56x64_o56x56x64_k3_s1_g1"),
    ("dw 3x3", "conv_i56x56x144_o56x56x144_k3_s1_g144"),
    ("dw 3x3 s2", "conv_i112x112x96_o56x56x96_k3_s2_g96"),
    ("dw 5x5", "conv_i28x28x240_o28x28x240_k5_s1_g240"),
    ("dw 5x5 s2", "conv_i28x28x144_o14x14x144_k5_s2_g144"),
    ("dw 7x7", "conv_i14x14x480_o14x14x480_k7_s1_g480"),
    ("dw 7x7", "conv_i28x28x120_o28x28x120_k7_s1_g120"),
    ("se", "se-relu-hsigmoid_i28x28x120_o28x28x120_m32"),
    ("se", "se-relu-hsigmoid_i14x14x672_o14x14x672_m168"),
    ("add", "add_i28x28x40+28x28x40_o28x28x40"),
    ("add + relu", "add-relu_i56x56x64+56x56x64_o56x56x64"),
    ("hswish", "hswish_i56x56x72_o56x56x72"),
    ("gemm", "gemm_i1280_o1000"),
    ("gemm", "gemm_i512_o512"),
    ("max pool 3x3 s2", "maxpool_i112x112x64_o56x56x64_k3_s2"),
    ("avg pool 3x3 s1", "avgpool_i28x28x64_o28x28x64_k3_s1"),
    ("global avg pool", "gap_i7x7x960_o1x1x960"),
]


def _sessions(key: str, precisions: list[str]):
    from hwlat.device import DeviceConfig
    from hwlat.kernel_onnx import kernel_model
    from hwlat.profilers import get_backend
    from hwlat.profilers.litert import LiteRTSession
    from hwlat.profilers.litert.converter import onnx_to_tflite

    model = kernel_model(key)
    ort = get_backend("onnxruntime")
    dev = DeviceConfig(name="bench-ort", backend="onnxruntime", threads=1)
    art = ort.builder(dev, None).build([_build_input(key, model)])[0].artifact
    out = {"onnxruntime": ort.session(art, dev).activate()}
    for p in precisions:
        out[f"litert-{p}"] = LiteRTSession(onnx_to_tflite(model, p), threads=1).activate()
    return out


def _build_input(key, model):
    from hwlat.profilers.base import BuildInput

    return BuildInput(key, model)


def run(passes: int, precisions: list[str], seed: int = 0) -> list[dict]:
    from hwlat.protocol import Protocol, measure_session

    proto = Protocol(warmup_ms=5.0, trials=5, min_trial_ms=2.0, max_retries=1)
    sessions = {key: _sessions(key, precisions) for _, key in KERNELS}
    times: dict[tuple[str, str], list[float]] = {}
    jobs = [(key, rt) for key, s in sessions.items() for rt in s]
    rng = random.Random(seed)
    for _ in range(passes):
        rng.shuffle(jobs)
        for key, rt in jobs:
            times.setdefault((key, rt), []).append(measure_session(sessions[key][rt], proto).median_ms)
    rows = []
    for label, key in KERNELS:
        row = {"kernel": label, "key": key}
        for rt in sessions[key]:
            row[rt] = float(np.median(times[(key, rt)]))
        row["litert_over_ort"] = row["litert-fp32"] / row["onnxruntime"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--no-int8", action="store_true", help="time LiteRT fp32 only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    precisions = ["fp32"] if a.no_int8 else ["fp32", "int8"]
    t0 = time.time()
    rows = run(a.passes, precisions)
    if a.json:
        json.dump({"rows": rows, "passes": a.passes, "threads": 1, "seconds": time.time() - t0}, sys.stdout, indent=1)
        print()
        return 0
    from hwlat.device import host_facts
    from hwlat.profilers.litert import LiteRTBackend

    print(f"1 thread, median of {a.passes} interleaved passes; {host_facts()['cpu']}; "
          f"ai-edge-litert {LiteRTBackend.probe().version}")
    head = f"{'kernel':20s} {'key':46s} {'ORT ms':>8s} {'LiteRT ms':>9s} {'LiteRT/ORT':>10s}"
    head += f" {'int8 ms':>8s}" if "int8" in precisions else ""
    print(head)
    for r in rows:
        line = (f"{r['kernel']:20s} {r['key']:46s} {r['onnxruntime']:8.4f} {r['litert-fp32']:9.4f} "
                f"{r['litert_over_ort']:10.2f}")
        line += f" {r['litert-int8']:8.4f}" if "int8" in precisions else ""
        print(line)
    ratios = np.array([r["litert_over_ort"] for r in rows])
    print(f"LiteRT/ORT: geometric mean {np.exp(np.mean(np.log(ratios))):.2f}, range {ratios.min():.2f}-{ratios.max():.2f} "
          f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
