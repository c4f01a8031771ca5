"""``convnet``: plain, residual and bottleneck CNNs of the ResNet/VGG design space.

Input ``r`` x ``r`` (r in 128, 160, 192, 224). Stem conv3x3/s2 to ``w`` channels (BN, ReLU) and a
3x3/s2 max-pool; four stages of ``w * 2**i`` channels, the first at stride 1, the others at
stride 2, each of ``d[i]`` blocks (1-3) of one kind ``b[i]``:

* ``plain``: conv3x3-BN-ReLU (VGG);
* ``basic``: two conv3x3 with a residual add and ReLU (ResNet-18/34); a 1x1/s2 projection where
  the shape changes;
* ``bottleneck``: 1x1 to half the channels, 3x3, 1x1 back, residual add and ReLU.

Global average pool, linear to 1000. ``w`` is 16-96, so the weights span 0.3 to ~150 MB and the
activations 2 to ~60 MB independently of each other: next to the mobile spaces (weights 5-30 MB),
these networks are what separates the weight and activation terms of a device's whole-model
correction (``hwlat profile`` calibrates on a few of them). They are also a space to search.

Integer row (10 columns): resolution index, width index, four depths, four block kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hwlat.errors import HwlatError

from .base import Space, as_int, int_list, register, remember_rows, rows_of

RESOLUTIONS = (128, 160, 192, 224)
WIDTHS = (16, 32, 48, 64, 96)
DEPTHS = (1, 2, 3)
KINDS = ("plain", "basic", "bottleneck")
N_STAGES, NUM_CLASSES = 4, 1000
_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}


@dataclass(frozen=True)
class ConvNetArch:
    r: int
    w: int
    d: tuple[int, ...]
    b: tuple[str, ...]


def _stage_blocks(i: int, r: int, w: int, depth: int, kind: str):
    """(kind, in channels, out channels, stride, input size) of the blocks of stage ``i``: a
    stage's input depends on the resolution and width only (every stage has a block)."""
    h = -(-(-(-r // 2)) // 2)            # after the stride-2 stem and the stride-2 max-pool
    for _ in range(max(i - 1, 0)):
        h = -(-h // 2)
    cin, cout = (w if i == 0 else w * 2 ** (i - 1)), w * 2 ** i
    for j in range(depth):
        s = 2 if (i > 0 and j == 0) else 1
        yield kind, cin, cout, s, h
        h, cin = -(-h // s), cout


def block_plan(a: ConvNetArch):
    """(kind, in channels, out channels, stride, input size) of every block, in order."""
    for i in range(N_STAGES):
        yield from _stage_blocks(i, a.r, a.w, a.d[i], a.b[i])


def _block_macs(kind: str, cin: int, cout: int, stride: int, h_in: int) -> float:
    h = -(-h_in // stride)
    if kind == "plain":
        return h * h * 9 * cin * cout
    proj = h * h * cin * cout if (stride != 1 or cin != cout) else 0
    if kind == "basic":
        return h * h * 9 * (cin * cout + cout * cout) + proj
    mid = cout // 2
    return h_in * h_in * cin * mid + h * h * (9 * mid * mid + mid * cout) + proj


def macs(a: ConvNetArch) -> float:
    h = -(-a.r // 2)
    last = a.w * 2 ** (N_STAGES - 1)
    return h * h * 27 * a.w + sum(_block_macs(*blk) for blk in block_plan(a)) + last * NUM_CLASSES


_STAGE_MACS: np.ndarray | None = None


def _stage_macs() -> np.ndarray:
    """MACs of stage i for (resolution, width, depth, kind) indices: the stages add up (one table
    lookup per stage in :meth:`ConvNetSpace.encode_matrix`)."""
    global _STAGE_MACS
    if _STAGE_MACS is None:
        t = np.zeros((N_STAGES, len(RESOLUTIONS), len(WIDTHS), len(DEPTHS), len(KINDS)))
        for ri, r in enumerate(RESOLUTIONS):
            for wi, w in enumerate(WIDTHS):
                for di, d in enumerate(DEPTHS):
                    for ki, k in enumerate(KINDS):
                        for i in range(N_STAGES):
                            t[i, ri, wi, di, ki] = sum(_block_macs(*blk) for blk in _stage_blocks(i, r, w, d, k))
        _STAGE_MACS = t
    return _STAGE_MACS


def _fixed_macs(r_idx: np.ndarray, w_idx: np.ndarray) -> np.ndarray:
    r, w = np.asarray(RESOLUTIONS, float)[r_idx], np.asarray(WIDTHS, float)[w_idx]
    h = np.ceil(r / 2)
    return h * h * 27 * w + w * 2 ** (N_STAGES - 1) * NUM_CLASSES


@register("convnet")
class ConvNetSpace(Space):
    name = "convnet"
    arch_type = ConvNetArch

    def choices(self) -> dict:
        return {"r": list(RESOLUTIONS), "w": list(WIDTHS), "d": list(DEPTHS), "b": list(KINDS),
                "stages": N_STAGES, "stage_channels": "w * 2**i", "first_stride": [1, 2, 2, 2]}

    def parse(self, spec: Any) -> ConvNetArch:
        if isinstance(spec, ConvNetArch):
            spec = {"r": spec.r, "w": spec.w, "d": spec.d, "b": spec.b}
        elif isinstance(spec, str):
            # key form: "r160_w64_d2.2.2.2_b-basic.basic.plain.bottleneck"
            try:
                parts = dict(p.split("-", 1) if p.startswith("b-") else (p[0], p[1:]) for p in spec.split("_"))
                spec = {"r": parts["r"], "w": parts["w"], "d": parts["d"].split("."), "b": parts["b"].split(".")}
            except (KeyError, ValueError):
                raise HwlatError(f"convnet: cannot parse {spec!r}; expected a key like "
                                 "'r160_w64_d2.2.2.2_b-basic.basic.basic.basic' or a dict with r, w, d, b") from None
        if not isinstance(spec, dict):
            raise HwlatError(f"convnet: expected a dict with fields r, w, d, b (or a key string), got {type(spec).__name__}")
        missing = [f for f in ("r", "w", "d", "b") if f not in spec]
        if missing:
            raise HwlatError(f"convnet: missing field(s) {missing}")
        try:
            r, w = as_int(spec["r"]), as_int(spec["w"])
        except (TypeError, ValueError):
            raise HwlatError(f"convnet: fields 'r' and 'w' must be integers, got {spec['r']!r}, {spec['w']!r}") from None
        if r not in RESOLUTIONS:
            raise HwlatError(f"convnet: field 'r': {r} not in {RESOLUTIONS}")
        if w not in WIDTHS:
            raise HwlatError(f"convnet: field 'w': {w} not in {WIDTHS}")
        d = int_list(spec["d"], "d", N_STAGES)
        if any(x not in DEPTHS for x in d):
            raise HwlatError(f"convnet: field 'd': depths must be in {DEPTHS}, got {d}")
        b = spec["b"].replace(",", " ").split() if isinstance(spec["b"], str) else list(spec["b"])
        if len(b) != N_STAGES or any(k not in _KIND_INDEX for k in b):
            raise HwlatError(f"convnet: field 'b': expected {N_STAGES} block kinds from {KINDS}, got {b}")
        return ConvNetArch(r, w, d, tuple(str(k) for k in b))

    def key(self, arch: ConvNetArch) -> str:
        a = self.parse(arch)
        return f"r{a.r}_w{a.w}_d{'.'.join(map(str, a.d))}_b-{'.'.join(a.b)}"

    # -- integer rows -------------------------------------------------------------------------
    def gene_choices(self) -> list[np.ndarray]:
        return ([np.arange(len(RESOLUTIONS)), np.arange(len(WIDTHS))] + [np.arange(len(DEPTHS))] * N_STAGES
                + [np.arange(len(KINDS))] * N_STAGES)

    def to_matrix(self, archs: Sequence[ConvNetArch]) -> np.ndarray:
        return rows_of(archs, lambda a: [RESOLUTIONS.index(a.r), WIDTHS.index(a.w)]
                       + [DEPTHS.index(x) for x in a.d] + [_KIND_INDEX[k] for k in a.b], 2 + 2 * N_STAGES)

    def from_matrix(self, m: np.ndarray) -> list[ConvNetArch]:
        m = np.asarray(m)
        archs = [ConvNetArch(RESOLUTIONS[row[0]], WIDTHS[row[1]], tuple(DEPTHS[x] for x in row[2:2 + N_STAGES]),
                             tuple(KINDS[x] for x in row[2 + N_STAGES:])) for row in m.tolist()]
        return remember_rows(archs, m)

    def calibration_sample(self, n: int, seed: Any = 0) -> list:
        """Widths and resolutions in turn (a Latin-square order), depths and kinds at random: the
        networks spread over weights and activations rather than clustering at the middle."""
        m = self.sample_matrix(n, seed)
        i = np.arange(n)
        m[:, 1] = i % len(WIDTHS)
        m[:, 0] = (i * 3 + i // len(WIDTHS)) % len(RESOLUTIONS)
        return self.from_matrix(m)

    # -- features -----------------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        return (["r", "w"] + [f"d{i}" for i in range(N_STAGES)]
                + [f"b{i}_{k}" for i in range(N_STAGES) for k in KINDS] + ["gmacs"])

    def encode_matrix(self, m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.int64)
        n = len(m)
        out = np.zeros((n, 2 + N_STAGES + N_STAGES * len(KINDS) + 1), np.float32)
        out[:, 0] = np.asarray(RESOLUTIONS, np.float32)[m[:, 0]]
        out[:, 1] = np.asarray(WIDTHS, np.float32)[m[:, 1]]
        out[:, 2:2 + N_STAGES] = np.asarray(DEPTHS, np.float32)[m[:, 2:2 + N_STAGES]]
        one_hot = np.take(np.eye(len(KINDS), dtype=np.float32), m[:, 2 + N_STAGES:], axis=0)
        out[:, 2 + N_STAGES:-1] = one_hot.reshape(n, N_STAGES * len(KINDS))
        table, st = _stage_macs(), np.arange(N_STAGES)
        stages = table[st, m[:, [0]], m[:, [1]], m[:, 2:2 + N_STAGES], m[:, 2 + N_STAGES:]].sum(axis=1)
        out[:, -1] = (stages + _fixed_macs(m[:, 0], m[:, 1])) / 1e9
        return out

    # -- models -------------------------------------------------------------------------------
    def input_shape(self, arch: ConvNetArch) -> tuple[int, int, int, int]:
        r = self.parse(arch).r
        return (1, 3, r, r)

    def build(self, arch: ConvNetArch):
        from torch import nn

        from .blocks import Classifier, ConvBNAct, ResidualBlock, finish

        a = self.parse(arch)
        layers: list[nn.Module] = [ConvBNAct(3, a.w, 3, 2, act="relu"), nn.MaxPool2d(3, 2, 1)]
        for kind, cin, cout, s, _ in block_plan(a):
            layers.append(ConvBNAct(cin, cout, 3, s, act="relu") if kind == "plain"
                          else ResidualBlock(cin, cout, s, bottleneck=kind == "bottleneck"))
        layers.append(Classifier(a.w * 2 ** (N_STAGES - 1), NUM_CLASSES))
        return finish(nn.Sequential(*layers))
