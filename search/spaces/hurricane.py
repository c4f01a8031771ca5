"""``hurricane``: the layer-wise operator space of HURRICANE (Zhang et al., CVPR-W 2020).

A MobileNetV3-like skeleton at 224: stem conv3x3/s2 16 ch (h-swish); 20 searchable layers in
stages of (channels, layers, first stride) = (16,1,1) (24,4,2) (40,4,2) (80,4,2) (112,4,1)
(160,3,2); conv1x1 to 960 (h-swish), global pool, 1x1 960->1280 (h-swish), linear to 1000.

Every layer picks one operator from a pool. MBConv ops are named ``k{3,5,7}_e{3,6}_{relu,hswish}``
plus ``_se`` for a squeeze-excite block (reduce to make_divisible(mid/4, 8), ReLU, h-sigmoid gate);
the first layer has no expansion (``k{3,5,7}_e1_...``). ``skip`` (identity) is a candidate of
every layer that keeps its shape. HURRICANE's first stage picks, per layer, the few operators a
given device runs well; :meth:`HurricaneSpace.restrict` makes that hardware-specific space.

Integer row (20 columns): the index of each layer's op in :func:`pool` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hwlat.errors import HwlatError

from .base import Space, make_divisible, register, remember_rows, rows_of

STAGES = ((16, 1, 1), (24, 4, 2), (40, 4, 2), (80, 4, 2), (112, 4, 1), (160, 3, 2))
STEM, FINAL_EXPAND, LAST, NUM_CLASSES, RESOLUTION = 16, 960, 1280, 1000, 224
KS, EXPANDS, ACTS = (3, 5, 7), (3, 6), ("relu", "hswish")


def _mbconv_names(expands: Sequence[int]) -> list[str]:
    return [f"k{k}_e{e}_{act}{se}" for e in expands for k in KS for act in ACTS for se in ("", "_se")]


_POOL = tuple(_mbconv_names((1,)) + _mbconv_names(EXPANDS) + ["skip"])
_OP_INDEX = {op: i for i, op in enumerate(_POOL)}


def pool() -> list[str]:
    """Every operator name of the space."""
    return list(_POOL)


def op_params(op: str) -> dict | None:
    """{'k', 'e', 'act', 'se'} of an MBConv op name; None for skip."""
    if op == "skip":
        return None
    parts = op.split("_")
    return {"k": int(parts[0][1:]), "e": int(parts[1][1:]), "act": parts[2], "se": len(parts) > 3}


def layer_plan() -> list[tuple[int, int, int]]:
    """(in channels, out channels, stride) of the 20 searchable layers."""
    plan, cin = [], STEM
    for c, n, s in STAGES:
        for i in range(n):
            plan.append((cin, c, s if i == 0 else 1))
            cin = c
    return plan


N_LAYERS = len(layer_plan())


def full_candidates() -> list[list[str]]:
    """The unrestricted per-layer candidate lists."""
    out = []
    for i, (cin, cout, s) in enumerate(layer_plan()):
        ops = _mbconv_names((1,) if i == 0 else EXPANDS)
        if cin == cout and s == 1:
            ops.append("skip")
        out.append(ops)
    return out


@dataclass(frozen=True)
class HurricaneArch:
    ops: tuple[str, ...]


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Per pool op: factor features [k3,k5,k7,e1,e3,e6,hswish,se,skip]; per (layer, op): MACs."""
    feats = np.zeros((len(_POOL), 9), np.float32)
    macs = np.zeros((N_LAYERS, len(_POOL)))
    for j, op in enumerate(_POOL):
        p = op_params(op)
        if p is None:
            feats[j, 8] = 1
            continue
        feats[j, KS.index(p["k"])] = 1
        feats[j, 3 + (1, 3, 6).index(p["e"])] = 1
        feats[j, 6], feats[j, 7] = p["act"] == "hswish", p["se"]
    h = RESOLUTION // 2
    for li, (cin, cout, s) in enumerate(layer_plan()):
        ho = -(-h // s)
        for j, op in enumerate(_POOL):
            p = op_params(op)
            if p is None:
                continue
            mid = _mid(cin, p["e"])
            expand = h * h * cin * mid if p["e"] != 1 else 0
            se = 2 * mid * make_divisible(mid // 4, 8) if p["se"] else 0
            macs[li, j] = expand + ho * ho * mid * (p["k"] ** 2 + cout) + se
        h = ho
    return feats, macs


def _mid(cin: int, e: int) -> int:
    return cin if e == 1 else make_divisible(cin * e, 8)


_FEATS, _MACS = _tables()
_FIXED_MACS = ((RESOLUTION // 2) ** 2 * 27 * STEM + 7 * 7 * STAGES[-1][0] * FINAL_EXPAND
               + FINAL_EXPAND * LAST + LAST * NUM_CLASSES)


@register("hurricane")
class HurricaneSpace(Space):
    """HURRICANE's space; ``candidates`` (20 lists of op names) restricts it per layer."""

    name = "hurricane"
    arch_type = HurricaneArch

    def __init__(self, candidates: Sequence[Sequence[str]] | None = None):
        full = full_candidates()
        if candidates is None:
            candidates = full
        if len(candidates) != N_LAYERS:
            raise HwlatError(f"hurricane: candidates must list {N_LAYERS} layers, got {len(candidates)}")
        cands = []
        for i, (layer, allowed) in enumerate(zip(candidates, full)):
            layer = [str(op) for op in layer]
            bad = [op for op in layer if op not in allowed]
            if bad or not layer:
                raise HwlatError(f"hurricane: layer {i} candidates {bad or '[]'} invalid; layer {i} allows "
                                 f"{', '.join(allowed)}")
            cands.append(tuple(dict.fromkeys(layer)))
        self.candidates: tuple[tuple[str, ...], ...] = tuple(cands)
        self.restricted = self.candidates != tuple(tuple(c) for c in full)
        self._choices = [np.array([_OP_INDEX[op] for op in layer]) for layer in self.candidates]

    def restrict(self, candidates: Sequence[Sequence[str]]) -> "HurricaneSpace":
        """The hardware-specific space: only these ops per layer (each must be allowed there)."""
        return HurricaneSpace(candidates)

    pool = staticmethod(pool)

    def choices(self) -> dict:
        return {"pool": list(_POOL), "layers": N_LAYERS, "candidates": [list(c) for c in self.candidates],
                "restricted": self.restricted, "resolution": RESOLUTION,
                "stages": [{"channels": c, "layers": n, "stride": s} for c, n, s in STAGES]}

    def parse(self, spec: Any) -> HurricaneArch:
        if isinstance(spec, HurricaneArch):
            ops = spec.ops
        elif isinstance(spec, str):
            ops = tuple(spec.replace(",", " ").split())
        elif isinstance(spec, (list, tuple)):
            ops = tuple(spec)
        else:
            raise HwlatError(f"hurricane: expected a list of {N_LAYERS} op names or a space-separated string, "
                             f"got {type(spec).__name__}")
        if len(ops) != N_LAYERS:
            raise HwlatError(f"hurricane: field 'ops': expected {N_LAYERS} layer ops, got {len(ops)}")
        for i, op in enumerate(ops):
            if op not in self.candidates[i]:
                why = "a candidate of this restricted space" if op in _OP_INDEX and self.restricted else "allowed"
                raise HwlatError(f"hurricane: field 'ops': layer {i} op {op!r} is not {why}; choose from "
                                 f"{', '.join(self.candidates[i])}")
        return HurricaneArch(tuple(str(op) for op in ops))

    def key(self, arch: HurricaneArch) -> str:
        return " ".join(self.parse(arch).ops)

    # -- integer rows -------------------------------------------------------------------------
    def gene_choices(self) -> list[np.ndarray]:
        return list(self._choices)

    def to_matrix(self, archs: Sequence[HurricaneArch]) -> np.ndarray:
        return rows_of(archs, lambda a: [_OP_INDEX[o] for o in a.ops], N_LAYERS)

    def from_matrix(self, m: np.ndarray) -> list[HurricaneArch]:
        m = np.asarray(m)
        return remember_rows([HurricaneArch(tuple(_POOL[i] for i in row)) for row in m.tolist()], m)

    # -- features -----------------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        f = ["k3", "k5", "k7", "e1", "e3", "e6", "hswish", "se", "skip"]
        return [f"l{i}_{x}" for i in range(N_LAYERS) for x in f] + ["gmacs"]

    def encode_matrix(self, m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.int64)
        n = len(m)
        out = np.empty((n, N_LAYERS * _FEATS.shape[1] + 1), np.float32)
        out[:, :-1] = np.take(_FEATS, m, axis=0).reshape(n, N_LAYERS * _FEATS.shape[1])
        out[:, -1] = (_MACS[np.arange(N_LAYERS)[None, :], m].sum(axis=1) + _FIXED_MACS) / 1e9
        return out

    # -- models -------------------------------------------------------------------------------
    def input_shape(self, arch: HurricaneArch) -> tuple[int, int, int, int]:
        return (1, 3, RESOLUTION, RESOLUTION)

    def build(self, arch: HurricaneArch):
        from torch import nn

        from .blocks import ConvBNAct, MBConv, MobileHead, finish

        a = self.parse(arch)
        layers: list[nn.Module] = [ConvBNAct(3, STEM, 3, 2, act="hswish")]
        for op, (cin, cout, s) in zip(a.ops, layer_plan()):
            p = op_params(op)
            if p is None:
                layers.append(nn.Identity())
                continue
            mid = _mid(cin, p["e"])
            layers.append(MBConv(cin, cout, p["k"], s, mid, act=p["act"],
                                 se_mid=make_divisible(mid // 4, 8) if p["se"] else 0,
                                 se_act="relu", se_gate="hsigmoid", expand=p["e"] != 1))
        layers.append(ConvBNAct(STAGES[-1][0], FINAL_EXPAND, 1, act="hswish"))
        model = nn.Sequential(nn.Sequential(*layers), MobileHead(FINAL_EXPAND, LAST, NUM_CLASSES, "hswish"))
        return finish(model)
