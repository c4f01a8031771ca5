"""``fbnet``: the FBNet space (Wu et al., CVPR 2019), as benchmarked by HW-NAS-Bench and HELP.

Input 224. Stem conv3x3/s2 16 ch (BN, ReLU); 22 searchable layers in stages of (channels, layers,
first stride) = (16,1,1) (24,4,2) (32,4,2) (64,4,2) (112,4,1) (184,4,2) (352,1,1); conv1x1 to 1984
(BN, ReLU), global average pool, linear to 1000.

Each layer picks one of 9 ops. ``kK_eE[_g2]`` is FBNet's inverted-residual block: 1x1 (group g)
conv expanding by E, ReLU, [channel shuffle when g=2], KxK depthwise conv, ReLU, 1x1 (group g)
projection; BN after each conv; residual when stride is 1 and channels are unchanged.
``skip`` is the identity when the layer keeps its shape; where it cannot (the first layer of a
stage changes channels or stride) it is a 1x1 conv-BN-ReLU with the layer's stride, which is what
FBNet's reference implementation builds for a "skip" there.

Integer row (22 columns): the op index of each layer in :data:`OPS` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hwlat.errors import HwlatError

from .base import Space, register, remember_rows, rows_of

OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
STAGES = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1))
STEM, HEAD, NUM_CLASSES, RESOLUTION = 16, 1984, 1000, 224
_OP_INDEX = {op: i for i, op in enumerate(OPS)}


def layer_plan() -> list[tuple[int, int, int]]:
    """(in channels, out channels, stride) of the 22 searchable layers."""
    plan, cin = [], STEM
    for c, n, s in STAGES:
        for i in range(n):
            plan.append((cin, c, s if i == 0 else 1))
            cin = c
    return plan


N_LAYERS = len(layer_plan())


def op_params(op: str) -> tuple[int, int, int] | None:
    """(kernel, expand, groups) of an MBConv op; None for skip."""
    if op == "skip":
        return None
    parts = op.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), int(parts[2][1:]) if len(parts) > 2 else 1


@dataclass(frozen=True)
class FBNetArch:
    ops: tuple[str, ...]


def _layer_table() -> np.ndarray:
    """MACs of each (layer, op) at 224, for the global features."""
    h = RESOLUTION // 2
    table = np.zeros((N_LAYERS, len(OPS)))
    for li, (cin, cout, s) in enumerate(layer_plan()):
        ho = -(-h // s)
        for j, op in enumerate(OPS):
            p = op_params(op)
            if p is None:
                table[li, j] = 0 if (cin == cout and s == 1) else ho * ho * cin * cout
                continue
            k, e, g = p
            mid = cin * e
            table[li, j] = h * h * cin * mid / g + ho * ho * (mid * k * k + mid * cout / g)
        h = ho
    return table


_MACS = _layer_table()
_FIXED_MACS = (RESOLUTION // 2) ** 2 * 27 * STEM + 7 * 7 * STAGES[-1][0] * HEAD + HEAD * NUM_CLASSES


@register("fbnet")
class FBNetSpace(Space):
    name = "fbnet"
    arch_type = FBNetArch

    def choices(self) -> dict:
        return {"ops": list(OPS), "layers": N_LAYERS,
                "stages": [{"channels": c, "layers": n, "stride": s} for c, n, s in STAGES],
                "resolution": RESOLUTION}

    def parse(self, spec: Any) -> FBNetArch:
        if isinstance(spec, FBNetArch):
            ops = spec.ops
        elif isinstance(spec, str):
            ops = tuple(spec.replace(",", " ").split())
        elif isinstance(spec, (list, tuple)):
            ops = tuple(spec)
        else:
            raise HwlatError(f"fbnet: expected a list of {N_LAYERS} op names or a space-separated string, "
                             f"got {type(spec).__name__}")
        if len(ops) != N_LAYERS:
            raise HwlatError(f"fbnet: field 'ops': expected {N_LAYERS} layer ops, got {len(ops)}")
        for i, op in enumerate(ops):
            if op not in _OP_INDEX:
                raise HwlatError(f"fbnet: field 'ops': layer {i} op {op!r} not in {', '.join(OPS)}")
        return FBNetArch(tuple(str(op) for op in ops))

    def key(self, arch: FBNetArch) -> str:
        """The 22 op names separated by spaces (the form of the published latency tables)."""
        return " ".join(self.parse(arch).ops)

    # -- integer rows -------------------------------------------------------------------------
    def gene_choices(self) -> list[np.ndarray]:
        return [np.arange(len(OPS))] * N_LAYERS

    def to_matrix(self, archs: Sequence[FBNetArch]) -> np.ndarray:
        return rows_of(archs, lambda a: [_OP_INDEX[o] for o in a.ops], N_LAYERS)

    def from_matrix(self, m: np.ndarray) -> list[FBNetArch]:
        m = np.asarray(m)
        return remember_rows([FBNetArch(tuple(OPS[i] for i in row)) for row in m.tolist()], m)

    # -- features -----------------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        return [f"l{i}_{op}" for i in range(N_LAYERS) for op in OPS] + ["n_skip", "gmacs"]

    def encode_matrix(self, m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.int64)
        n = len(m)
        out = np.zeros((n, N_LAYERS * len(OPS) + 2), np.float32)
        one_hot = np.take(np.eye(len(OPS), dtype=np.float32), m, axis=0)
        out[:, :N_LAYERS * len(OPS)] = one_hot.reshape(n, N_LAYERS * len(OPS))
        out[:, -2] = (m == _OP_INDEX["skip"]).sum(axis=1)
        out[:, -1] = (_MACS[np.arange(N_LAYERS)[None, :], m].sum(axis=1) + _FIXED_MACS) / 1e9
        return out

    # -- models -------------------------------------------------------------------------------
    def input_shape(self, arch: FBNetArch) -> tuple[int, int, int, int]:
        return (1, 3, RESOLUTION, RESOLUTION)

    def build(self, arch: FBNetArch):
        from torch import nn

        from .blocks import Classifier, ConvBNAct, MBConv, finish

        a = self.parse(arch)
        layers: list[nn.Module] = [ConvBNAct(3, STEM, 3, 2, act="relu")]
        for op, (cin, cout, s) in zip(a.ops, layer_plan()):
            p = op_params(op)
            if p is None:
                layers.append(nn.Identity() if cin == cout and s == 1 else ConvBNAct(cin, cout, 1, s, act="relu"))
            else:
                k, e, g = p
                layers.append(MBConv(cin, cout, k, s, cin * e, act="relu", groups=g))
        layers += [ConvBNAct(STAGES[-1][0], HEAD, 1, act="relu"), Classifier(HEAD, NUM_CLASSES)]
        return finish(nn.Sequential(*layers))
