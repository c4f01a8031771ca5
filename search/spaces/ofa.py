"""``ofa-mbv3``: the once-for-all MobileNetV3-Large space (Cai et al., ICLR 2020).

Stem conv3x3/s2 (16 ch, h-swish), a fixed first block (dw3x3 + pw, ReLU, no expansion, residual),
then 5 units of 2-4 MBConv blocks with (out channels, stride, activation, SE) =
(24,2,relu,-) (40,2,relu,SE) (80,2,hswish,-) (112,1,hswish,SE) (160,2,hswish,SE); each block
picks a kernel size {3,5,7} and an expand ratio {3,4,6}; then 1x1 to 960 (h-swish), global pool,
1x1 960->1280 (h-swish, no BN), linear to 1000. Resolution 128..224 step 4; width multiplier
1.0 or 1.2 scales every channel count with ``make_divisible(c * w, 8)``.

Block ``i`` of unit ``u`` is block ``4*u + i``; a unit of depth ``d`` runs its first ``d`` blocks,
and canonical architectures store 0 for the kernel and expand of the blocks it skips.

Integer row (47 columns): ks[20], e[20], d[5], r, round(10*w).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from hwlat.errors import HwlatError

from .base import Space, as_int, int_list, make_divisible, register, remember_rows, rows_of

KS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
RESOLUTIONS = tuple(range(128, 225, 4))
WIDTHS = (1.0, 1.2)
N_UNITS, MAX_DEPTH = 5, 4
N_BLOCKS = N_UNITS * MAX_DEPTH
# (base out channels, stride, activation, squeeze-excite) of the five searchable units
UNITS = ((24, 2, "relu", False), (40, 2, "relu", True), (80, 2, "hswish", False),
         (112, 1, "hswish", True), (160, 2, "hswish", True))
STEM, FIRST, FINAL_EXPAND, LAST = 16, 16, 960, 1280
NUM_CLASSES = 1000
PREFIX = "ofa-mbv3"
N_COLS = 2 * N_BLOCKS + N_UNITS + 2
_D0, _R, _W = 2 * N_BLOCKS, 2 * N_BLOCKS + N_UNITS, 2 * N_BLOCKS + N_UNITS + 1


@dataclass(frozen=True)
class OFAArch:
    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int
    w: float = 1.0


def _channels(w: float) -> dict:
    return {
        "stem": make_divisible(STEM * w), "first": make_divisible(FIRST * w),
        "units": [make_divisible(c * w) for c, *_ in UNITS],
        "final": make_divisible(FINAL_EXPAND * w), "last": make_divisible(LAST * w),
    }


def _one_hot_table(values: Sequence[int]) -> np.ndarray:
    t = np.zeros((max(values) + 1, len(values)), np.float32)
    for j, v in enumerate(values):
        t[v, j] = 1.0
    return t


_ONE_HOT_KS, _ONE_HOT_E, _ONE_HOT_D = _one_hot_table(KS), _one_hot_table(EXPANDS), _one_hot_table(DEPTHS)


def _active_mask(d: np.ndarray) -> np.ndarray:
    """(n, 5) depths -> (n, 20) bool: which blocks run."""
    return (np.arange(MAX_DEPTH)[None, None, :] < d[:, :, None]).reshape(len(d), N_BLOCKS)


@register(PREFIX)
class OFAMobileNetV3Space(Space):
    """OFA MobileNetV3-Large. ``widths`` are the multipliers ``sample`` draws from (parse accepts both)."""

    name = PREFIX
    arch_type = OFAArch

    def __init__(self, widths: Sequence[float] = (1.0,)):
        widths = tuple(float(w) for w in widths)
        bad = [w for w in widths if w not in WIDTHS]
        if bad or not widths:
            raise HwlatError(f"ofa-mbv3: width multipliers must be among {WIDTHS}, got {widths}")
        self.widths = widths

    # -- identity ---------------------------------------------------------------------------
    def choices(self) -> dict:
        return {"ks": list(KS), "e": list(EXPANDS), "d": list(DEPTHS), "r": list(RESOLUTIONS),
                "w": list(self.widths), "units": N_UNITS, "blocks_per_unit": MAX_DEPTH,
                "unit_out_channels": [u[0] for u in UNITS], "unit_strides": [u[1] for u in UNITS],
                "unit_act": [u[2] for u in UNITS], "unit_se": [u[3] for u in UNITS]}

    def parse(self, spec: Any) -> OFAArch:
        if isinstance(spec, OFAArch):
            spec = {"ks": spec.ks, "e": spec.e, "d": spec.d, "r": spec.r, "w": spec.w}
        elif isinstance(spec, str):
            text = spec.strip()
            if text.startswith("{"):
                try:
                    spec = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise HwlatError(f"ofa-mbv3: cannot read architecture JSON: {exc}") from None
            else:
                spec = self._parse_key(text)
        if not hasattr(spec, "keys") or not hasattr(spec, "__getitem__"):
            raise HwlatError(f"ofa-mbv3: expected a dict with ks/e/d/r (and optional w), a key string "
                             f"'{PREFIX}:...' or an OFAArch, got {type(spec).__name__}")
        missing = [f for f in ("ks", "e", "d", "r") if f not in spec.keys()]
        if missing:
            raise HwlatError(f"ofa-mbv3: missing field(s) {', '.join(missing)}")
        ks = int_list(spec["ks"], "ks", N_BLOCKS)
        e = int_list(spec["e"], "e", N_BLOCKS)
        d = int_list(spec["d"], "d", N_UNITS)
        try:
            r = as_int(spec["r"])
        except (TypeError, ValueError):
            raise HwlatError(f"field 'r': expected an integer resolution, got {spec['r']!r}") from None
        w = spec["w"] if "w" in spec.keys() else 1.0
        try:
            w = round(float(w), 3)
        except (TypeError, ValueError):
            raise HwlatError(f"field 'w': expected a width multiplier, got {w!r}") from None
        for u, du in enumerate(d):
            if du not in DEPTHS:
                raise HwlatError(f"field 'd': unit {u} depth {du} not in {DEPTHS}")
        if r not in RESOLUTIONS:
            raise HwlatError(f"field 'r': resolution {r} not in 128..224 step 4")
        if w not in WIDTHS:
            raise HwlatError(f"field 'w': width multiplier {w} not in {WIDTHS}")
        ks_c, e_c = [0] * N_BLOCKS, [0] * N_BLOCKS
        for u, du in enumerate(d):
            for i in range(du):
                b = MAX_DEPTH * u + i
                if ks[b] not in KS:
                    raise HwlatError(f"field 'ks': block {b} kernel size {ks[b]} not in {KS}")
                if e[b] not in EXPANDS:
                    raise HwlatError(f"field 'e': block {b} expand ratio {e[b]} not in {EXPANDS}")
                ks_c[b], e_c[b] = ks[b], e[b]
        return OFAArch(tuple(ks_c), tuple(e_c), d, r, w)

    def _parse_key(self, text: str) -> dict:
        parts = text.split(":")
        if parts[0] != PREFIX:
            raise HwlatError(f"ofa-mbv3: a key starts with '{PREFIX}:', got {text[:40]!r}")
        out: dict[str, Any] = {}
        for p in parts[1:]:
            for f in ("ks", "e", "d", "r", "w"):   # 'ks' before the one-letter prefixes
                if p.startswith(f):
                    out[f] = p[len(f):]
                    break
            else:
                raise HwlatError(f"ofa-mbv3: unknown key part {p!r} in {text[:60]!r}")
        return out

    def key(self, arch: OFAArch) -> str:
        arch = self.parse(arch)
        j = lambda xs: ",".join(str(x) for x in xs)  # noqa: E731
        return f"{PREFIX}:r{arch.r}:w{arch.w:.1f}:d{j(arch.d)}:ks{j(arch.ks)}:e{j(arch.e)}"

    # -- integer rows -----------------------------------------------------------------------
    def gene_choices(self) -> list[np.ndarray]:
        return ([np.array(KS)] * N_BLOCKS + [np.array(EXPANDS)] * N_BLOCKS + [np.array(DEPTHS)] * N_UNITS
                + [np.array(RESOLUTIONS), np.array([round(10 * w) for w in self.widths])])

    def repair_matrix(self, m: np.ndarray, rng) -> np.ndarray:
        """Draw kernel/expand for blocks that became active, zero the skipped ones."""
        m = np.array(m, dtype=np.int16, copy=True)
        active = _active_mask(m[:, _D0:_R])
        for lo, vals in ((0, KS), (N_BLOCKS, EXPANDS)):
            part = m[:, lo:lo + N_BLOCKS]
            need = active & (part == 0)
            if need.any():
                part[need] = np.asarray(rng.choice(vals, int(need.sum())), dtype=np.int16)
            part[~active] = 0
        return m

    def to_matrix(self, archs: Sequence[OFAArch]) -> np.ndarray:
        m = rows_of(archs, lambda a: (*a.ks, *a.e, *a.d, a.r, round(10 * a.w)), N_COLS)
        # an OFAArch built by hand may carry values in skipped blocks: rows are always canonical
        skipped = ~_active_mask(m[:, _D0:_R])
        m[:, :N_BLOCKS][skipped] = 0
        m[:, N_BLOCKS:_D0][skipped] = 0
        return m

    def from_matrix(self, m: np.ndarray) -> list[OFAArch]:
        m = np.asarray(m)
        archs = [OFAArch(tuple(row[:N_BLOCKS]), tuple(row[N_BLOCKS:_D0]), tuple(row[_D0:_R]), row[_R],
                         row[_W] / 10) for row in m.tolist()]
        return remember_rows(archs, m)

    # -- features ---------------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        names = [f"ks{b}_{k}" for b in range(N_BLOCKS) for k in KS]
        names += [f"e{b}_{e}" for b in range(N_BLOCKS) for e in EXPANDS]
        names += [f"d{u}_{d}" for u in range(N_UNITS) for d in DEPTHS]
        return names + ["r_norm", "r_sq", "w", "n_blocks", "gmacs"]

    def encode_matrix(self, m: np.ndarray) -> np.ndarray:
        m = np.asarray(m)
        n = len(m)
        ks, e, d = m[:, :N_BLOCKS], m[:, N_BLOCKS:_D0], m[:, _D0:_R]
        r = m[:, _R].astype(np.float32)
        out = np.empty((n, 6 * N_BLOCKS + 3 * N_UNITS + 5), np.float32)
        # one-hot by table lookup (value -> row of the table): faster than comparisons
        out[:, :3 * N_BLOCKS] = np.take(_ONE_HOT_KS, ks, axis=0).reshape(n, 3 * N_BLOCKS)
        out[:, 3 * N_BLOCKS:6 * N_BLOCKS] = np.take(_ONE_HOT_E, e, axis=0).reshape(n, 3 * N_BLOCKS)
        c = 6 * N_BLOCKS + 3 * N_UNITS
        out[:, 6 * N_BLOCKS:c] = np.take(_ONE_HOT_D, d, axis=0).reshape(n, 3 * N_UNITS)
        out[:, c] = (r - RESOLUTIONS[0]) / (RESOLUTIONS[-1] - RESOLUTIONS[0])
        out[:, c + 1] = (r / 224.0) ** 2
        out[:, c + 2] = m[:, _W] / 10.0
        out[:, c + 3] = d.sum(axis=1)
        out[:, c + 4] = self.macs_matrix(m) / 1e9
        return out

    def macs_matrix(self, m: np.ndarray) -> np.ndarray:
        """Multiply-accumulates of each row (float64): one table gather, no per-row Python."""
        m = np.asarray(m)
        blocks, fixed = _macs_tables()
        wi = np.searchsorted(np.array([round(10 * w) for w in WIDTHS]), m[:, _W])
        ri = (m[:, _R].astype(np.int64) - RESOLUTIONS[0]) // 4
        per_block = blocks[wi[:, None], ri[:, None], np.arange(N_BLOCKS)[None, :], m[:, :N_BLOCKS],
                           m[:, N_BLOCKS:_D0]]
        return per_block.sum(axis=1) + fixed[wi, ri]

    # -- models -----------------------------------------------------------------------------
    def input_shape(self, arch: OFAArch) -> tuple[int, int, int, int]:
        r = self.parse(arch).r
        return (1, 3, r, r)

    def build(self, arch: OFAArch):
        from torch import nn

        from .blocks import ConvBNAct, MBConv, MobileHead, finish

        a = self.parse(arch)
        ch = _channels(a.w)
        layers = [ConvBNAct(3, ch["stem"], 3, 2, act="hswish"),
                  MBConv(ch["stem"], ch["first"], 3, 1, ch["stem"], act="relu", expand=False)]
        cin = ch["first"]
        for u, (_, stride, act, se) in enumerate(UNITS):
            cout = ch["units"][u]
            for i in range(a.d[u]):
                b = MAX_DEPTH * u + i
                mid = make_divisible(round(cin * a.e[b]), 8)
                layers.append(MBConv(cin, cout, a.ks[b], stride if i == 0 else 1, mid, act=act,
                                     se_mid=make_divisible(mid // 4, 8) if se else 0,
                                     se_act="relu", se_gate="hsigmoid"))
                cin = cout
        layers.append(ConvBNAct(cin, ch["final"], 1, 1, act="hswish"))
        model = nn.Sequential(nn.Sequential(*layers), MobileHead(ch["final"], ch["last"], NUM_CLASSES, "hswish"))
        return finish(model)


@lru_cache(maxsize=1)
def _macs_tables() -> tuple[np.ndarray, np.ndarray]:
    """MACs of block b with kernel k and expand e at width w and resolution r:
    ``blocks[wi, ri, b, k, e]`` (0 where k or e is 0, i.e. a skipped block); stem, first block
    and head: ``fixed[wi, ri]``."""
    blocks = np.zeros((len(WIDTHS), len(RESOLUTIONS), N_BLOCKS, max(KS) + 1, max(EXPANDS) + 1))
    fixed = np.zeros((len(WIDTHS), len(RESOLUTIONS)))
    for wi, w in enumerate(WIDTHS):
        ch = _channels(w)
        for ri, r in enumerate(RESOLUTIONS):
            h = -(-r // 2)                       # after the stride-2 stem
            fixed[wi, ri] = h * h * 3 * 9 * ch["stem"] + h * h * ch["stem"] * (9 + ch["first"])
            cin = ch["first"]
            for u, (_, stride, _act, se) in enumerate(UNITS):
                cout = ch["units"][u]
                h_out = -(-h // stride)
                for i in range(MAX_DEPTH):
                    c_in, h_in = (cin, h) if i == 0 else (cout, h_out)
                    for e in EXPANDS:
                        mid = make_divisible(round(c_in * e), 8)
                        se_macs = 2 * mid * make_divisible(mid // 4, 8) if se else 0
                        for k in KS:
                            blocks[wi, ri, MAX_DEPTH * u + i, k, e] = (
                                h_in * h_in * c_in * mid + h_out * h_out * mid * (k * k + cout) + se_macs)
                h, cin = h_out, cout
            fixed[wi, ri] += h * h * cin * ch["final"] + ch["final"] * ch["last"] + ch["last"] * NUM_CLASSES
    return blocks, fixed
