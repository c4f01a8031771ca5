"""Measure which op pairs a runtime really fuses: time A, B and A->B as single-kernel models.

A pair ``[chain, op]`` is fused when running A->B costs about what A alone costs:
``gain = T(A) + T(B) - T(A->B) - c`` (``c``: the fixed cost of one extra call, from a trivial
kernel) is large relative to ``min(T(A), T(B))``. The core (:func:`detect`) only needs a
``time_key(key) -> ms`` callable, so any backend can reuse it; :func:`litert_timer` is the
LiteRT one (kernel key -> hwlat.kernel_onnx graph -> .tflite -> protocol median).

    python -m hwlat.profilers.litert.fusion_probe [--precision int8] [--write]
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import numpy as np

# (chain, op, key of A, key of B, key of A->B). Shapes keep A cheap so B's cost stands out of
# the noise: a 1x1 conv from 8 channels, a batch-256 gemm, elementwise ops on 28x28x64.
_E = "i28x28x64_o28x28x64"
_CONV = "i28x28x8_o28x28x64_k1_s1_g1"
_DW = "i28x28x64_o28x28x64_k3_s1_g64"
_ADD = "i28x28x64+28x28x64_o28x28x64"
_ACTS = ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "tanh", "leakyrelu")
PAIRS = [("conv", a, f"conv_{_CONV}", f"{a}_{_E}", f"conv-{a}_{_CONV}") for a in _ACTS]
PAIRS += [("conv", a, f"conv_{_DW}", f"{a}_{_E}", f"conv-{a}_{_DW}") for a in ("relu", "relu6", "hswish")]
PAIRS += [
    ("conv", "add", f"conv_{_CONV}", f"add_{_ADD}", "conv-add_i28x28x8+28x28x64_o28x28x64_k1_s1_g1"),
    ("conv-add", "relu", "conv-add_i28x28x8+28x28x64_o28x28x64_k1_s1_g1", f"relu_{_E}",
     "conv-add-relu_i28x28x8+28x28x64_o28x28x64_k1_s1_g1"),
]
PAIRS += [(b, a, f"{b}_{_ADD}", f"{a}_{_E}", f"{b}-{a}_{_ADD}") for b in ("add", "mul") for a in ("relu", "relu6", "hswish")]
PAIRS += [("gemm", a, "gemm_i16_o256_b256", f"{a}_i256_o256_b256", f"gemm-{a}_i16_o256_b256")
          for a in ("relu", "relu6", "hswish", "sigmoid")]
OVERHEAD_KEY = "relu_i1x1x8_o1x1x8"


def detect(time_key: Callable[[str], float], pairs=PAIRS, *, passes: int = 15, threshold: float = 0.5,
           min_share: float = 0.1,
           overhead_key: str = OVERHEAD_KEY, seed: int = 0) -> list[dict]:
    """Time every model of every pair in ``passes`` short shuffled passes; one verdict per pair.

    Each key's time is its fastest pass: on a shared host contention only ever adds time, and
    many short interleaved passes give every model the same chance of a quiet moment.
    """
    keys = sorted({k for p in pairs for k in p[2:]} | {overhead_key})
    times: dict[str, list[float]] = {k: [] for k in keys}
    rng = random.Random(seed)
    for _ in range(passes):
        order = list(keys)
        rng.shuffle(order)
        for k in order:
            times[k].append(time_key(k))
    med = {k: float(np.min(v)) for k, v in times.items()}
    c = med[overhead_key]
    out = []
    for chain, op, ka, kb, kab in pairs:
        ta, tb, tab = med[ka], med[kb], med[kab]
        gain = ta + tb - tab - c
        ratio = gain / max(min(ta, tb) - c, 1e-6)
        # a gain within the noise of a much larger A->B (B >> A or A >> B) proves nothing
        out.append({"chain": chain, "op": op, "a_ms": ta, "b_ms": tb, "ab_ms": tab, "call_ms": c,
                    "ratio": ratio, "fused": ratio >= threshold and gain >= min_share * tab})
    return out


def rules_from(results: list[dict]) -> list[list[str]]:
    return sorted({(r["chain"], r["op"]) for r in results if r["fused"]})


def litert_timer(precision: str = "fp32", threads: int = 1, protocol=None) -> Callable[[str], float]:
    """``key -> median ms`` for LiteRT: build the kernel's ONNX, compile it, time it."""
    from hwlat.kernel_onnx import kernel_model
    from hwlat.profilers.litert import LiteRTSession
    from hwlat.profilers.litert.converter import onnx_to_tflite
    from hwlat.protocol import Protocol, measure_session

    protocol = protocol or Protocol(warmup_ms=1.0, trials=3, min_trial_ms=1.0, max_retries=0)
    sessions: dict[str, LiteRTSession] = {}     # kept active: each pass only times

    def time_key(key: str) -> float:
        if key not in sessions:
            sessions[key] = LiteRTSession(onnx_to_tflite(kernel_model(key), precision), threads=threads).activate()
        return measure_session(sessions[key], protocol).median_ms

    return time_key


def _compact_json(doc: dict) -> str:
    """JSON with one line per rule and per measured pair (readable in a diff)."""
    lines = ["{"]
    items = list(doc.items())
    for i, (k, v) in enumerate(items):
        end = "," if i < len(items) - 1 else ""
        if isinstance(v, dict):
            lines.append(f"  {json.dumps(k)}: {{")
            sub = list(v.items())
            for j, (k2, rows) in enumerate(sub):
                lines.append(f"    {json.dumps(k2)}: [")
                lines += [f"      {json.dumps(r)}" + ("," if n < len(rows) - 1 else "") for n, r in enumerate(rows)]
                lines.append("    ]" + ("," if j < len(sub) - 1 else ""))
            lines.append("  }" + end)
        elif isinstance(v, list):
            lines.append(f"  {json.dumps(k)}: [" + ", ".join(json.dumps(r) for r in v) + "]" + end)
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v)}{end}")
    return "\n".join(lines + ["}"]) + "\n"


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="measure LiteRT/XNNPACK fusion of op pairs")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--write", action="store_true", help="write profilers/litert/fusion_rules.json")
    a = ap.parse_args(argv)
    res = detect(litert_timer(a.precision), passes=a.passes)
    print(f"{'chain':10s} {'op':10s} {'A ms':>8s} {'B ms':>8s} {'A->B ms':>8s} {'ratio':>6s} fused")
    for r in res:
        print(f"{r['chain']:10s} {r['op']:10s} {r['a_ms']:8.4f} {r['b_ms']:8.4f} {r['ab_ms']:8.4f} {r['ratio']:6.2f} "
              f"{'yes' if r['fused'] else 'no'}")
    if a.write:
        path = Path(__file__).with_name("fusion_rules.json")
        old = json.loads(path.read_text()) if path.is_file() else {}
        from hwlat.device import host_facts
        from hwlat.profilers.litert import LiteRTBackend

        doc = {"backend": "litert", "groups": ["se", "shuffle"], **old}
        doc["source"] = (f"measured by hwlat.profilers.litert.fusion_probe (T(A)+T(B)-T(A->B) vs min(T(A),T(B)), "
                         f"{a.passes} interleaved passes, 1 thread) with ai-edge-litert {LiteRTBackend.probe().version} "
                         f"on {host_facts()['cpu']}; 'fuse' is the fp32 result, 'by_precision' has each precision")
        doc.setdefault("measured", {})[a.precision] = [
            {k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in res]
        doc.setdefault("by_precision", {})[a.precision] = [list(p) for p in rules_from(res)]
        if a.precision == "fp32":
            doc["fuse"] = [list(p) for p in rules_from(res)]
        order = ("backend", "source", "fuse", "by_precision", "groups", "measured")
        doc = {k: doc[k] for k in order if k in doc} | {k: v for k, v in doc.items() if k not in order}
        path.write_text(_compact_json(doc))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
