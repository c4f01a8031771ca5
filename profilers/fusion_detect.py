"""Fusion rules measured, not assumed (nn-Meter's test, generalised to op chains).

For a candidate ``[chain, op]`` time the chain alone (A), the op alone (B) and the chain followed
by the op (A->B) as single-kernel models. With the per-call cost ``c`` removed from each, the pair
is fused when ``T(A) + T(B) - T(A->B) > 0.5 * min(T(A), T(B))``: running them together saves most
of the smaller one. Each candidate is judged at two shapes chosen so that B is not negligible
(a depthwise and a pointwise convolution on large tensors); where B costs less than 5% of A at
both shapes the difference is below the timing noise and the backend's default rule stands.

Where the runtime itself reports what it ran (``Backend.ops_run``: ORT's profiler lists the nodes
it executed), that count decides: A->B running as many operators as A alone means B was fused.
Timing cannot see a fused activation that costs a quarter of running it alone (ORT's Clip after
a depthwise convolution: saved/min 0.25-0.28, a "not fused" verdict on a pair ORT does fuse);
the count can. The timing ratios are still measured and kept as evidence.
"""

from __future__ import annotations

import time

import numpy as np

from hwlat.fusion import FusionRules
from hwlat.kernel_onnx import kernel_model
from hwlat.kernels import Kernel
from hwlat.profilers.base import BuildInput

ACTS = ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "tanh", "leakyrelu")
CANDIDATES = ([("conv", a) for a in ACTS] + [("conv", "add")] + [("conv-add", a) for a in ("relu", "relu6", "hswish")]
              + [("gemm", a) for a in ("relu", "relu6", "sigmoid", "tanh")] + [("add", a) for a in ("relu", "relu6", "hswish")])
# (spatial, channels, kernel, depthwise)
SHAPES = ((56, 96, 3, True), (28, 128, 1, False))
NOISE = 0.05
MARGIN = 0.3        # ratios between MARGIN and 1 - MARGIN are too close to call


def _chain_kernel(chain: str, shape) -> Kernel:
    h, c, k, dw = shape
    base = chain.split("-")[0]
    if base == "conv":
        ins = [(h, h, c)] + ([(h, h, c)] if "add" in chain.split("-") else [])
        return Kernel(chain, tuple(ins), (h, h, c), (("k", k), ("s", 1), ("g", c if dw else 1)))
    if base == "gemm":
        return Kernel(chain, ((c * 4,),), (c * 16,))
    return Kernel(chain, ((h, h, c), (h, h, c)), (h, h, c))


def _op_kernel(chain: str, op: str, shape) -> Kernel:
    h, c, _, _ = shape
    if op == "add":
        return Kernel("add", ((h, h, c), (h, h, c)), (h, h, c))
    if chain.startswith("gemm"):
        return Kernel(op, ((c * 16,),), (c * 16,))
    return Kernel(op, ((h, h, c),), (h, h, c))


def detect_rules(backend, config, workdir, protocol, *, budget_s: float = 60.0, passes: int = 5) -> FusionRules:
    t0 = time.monotonic()
    kernels: dict[str, Kernel] = {}
    triples = []
    for chain, op in CANDIDATES:
        for shape in SHAPES:
            a, b = _chain_kernel(chain, shape), _op_kernel(chain, op, shape)
            ab = _chain_kernel(f"{chain}-{op}", shape)
            for k in (a, b, ab):
                kernels[k.key] = k
            triples.append((chain, op, a.key, b.key, ab.key))
    overhead = Kernel("relu", ((1, 1, 8),), (1, 1, 8))
    kernels[overhead.key] = overhead
    builds = backend.builder(config, workdir).build([BuildInput(k, kernel_model(k)) for k in kernels])
    counted = {}
    for b in builds:
        if b.artifact is not None:
            try:
                ops = backend.ops_run(b.artifact, config)
            except Exception:  # noqa: BLE001 - no structural evidence for this one: timing decides
                ops = None
            if ops is not None:
                counted[b.key] = len(ops)
    times: dict[str, list[float]] = {k: [] for k in kernels}
    rng = np.random.default_rng(0)
    for _ in range(passes):
        order = list(builds)
        rng.shuffle(order)
        runner = backend.runner(config)
        try:
            for r in runner.run(order, protocol):
                if r.measurement is not None:
                    times[r.key].append(r.measurement.median_ms - r.measurement.layout_ms)
        finally:
            runner.close()
        if time.monotonic() - t0 > budget_s:
            break
    med = {k: float(np.median(v)) for k, v in times.items() if v}
    c0 = med.get(overhead.key, 0.0)
    votes: dict[tuple, list[bool]] = {}
    evidence = {}
    structural: dict[tuple, list[bool]] = {}
    for chain, op, a, b, ab in triples:
        if a in counted and b in counted and ab in counted:
            if counted[ab] <= counted[a]:
                structural.setdefault((chain, op), []).append(True)
            elif counted[ab] >= counted[a] + counted[b]:
                structural.setdefault((chain, op), []).append(False)
        if a not in med or b not in med or ab not in med:
            continue
        ta, tb, tab = med[a] - c0, med[b] - c0, med[ab] - c0
        if min(ta, tb) <= NOISE * max(ta, tb, 1e-9):
            continue   # the smaller op is below the noise here: no verdict from this shape
        ratio = (ta + tb - tab) / min(ta, tb)
        evidence[f"{chain}+{op}@{a.split('_')[1]}"] = round(ratio, 3)
        if ratio > 1 - MARGIN or ratio < MARGIN:   # clear verdicts only; noise leaves the default
            votes.setdefault((chain, op), []).append(ratio > 0.5)
    defaults = backend.default_fusion_rules(config.precision)
    default = defaults.fuse
    decided = {p: v[0] for p, v in votes.items() if len(set(v)) == 1}
    decided.update({p: v[0] for p, v in structural.items() if len(set(v)) == 1})
    tested = {(c, o) for c, o in CANDIDATES}
    fuse = frozenset(p for p in tested if decided.get(p, p in default))
    # pairs the probes do not test (e.g. TVM's concat absorbing a residual add) keep their default
    fuse |= frozenset(p for p in default if p not in tested)
    # a chain can only grow from a fused prefix
    fuse = frozenset(p for p in fuse if "-" not in p[0] or tuple(p[0].rsplit("-", 1)) in fuse)
    return FusionRules(backend.name, fuse, defaults.groups, unfused_operands=defaults.unfused_operands,
                       source=f"measured {time.strftime('%Y-%m-%d')}: "
                              + (f"operators run by the runtime decided {len(structural)} pairs; " if structural else "")
                              + "saved/min(T_A,T_B) per candidate: "
                              + ", ".join(f"{k}={v}" for k, v in sorted(evidence.items())))
