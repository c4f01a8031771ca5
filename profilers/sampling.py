"""Which kernels to measure, most informative first.

- ``space_kernels``: every kernel the architectures of a space can contain (covering networks
  exported once and re-shaped to each resolution), ordered so resolutions are covered coarse to
  fine (224, 128, 176, 152, 200, ...): a short budget still spans the space.
- ``prior_kernels``: a broad random sample of every kernel type over shapes real networks use, so
  the regressors can answer for kernels outside any profiled space.
- ``dir_kernels``: the kernels of the ONNX models in a folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwlat.errors import HwlatError
from hwlat.fusion import FusionRules
from hwlat.kernels import Kernel, pad_attr


def bisection_order(values: list) -> list:
    """Ends first, then midpoints, recursively: a coarse-to-fine cover of a sorted list."""
    values = sorted(values)
    out, seen = [], set()
    if not values:
        return out
    intervals = [(0, len(values) - 1)]
    for i in (len(values) - 1, 0):
        out.append(values[i])
        seen.add(i)
    while intervals:
        nxt = []
        for lo, hi in intervals:
            if hi - lo < 2:
                continue
            mid = (lo + hi) // 2
            if mid not in seen:
                out.append(values[mid])
                seen.add(mid)
            nxt += [(lo, mid), (mid, hi)]
        intervals = nxt
    out += [v for i, v in enumerate(values) if i not in seen]
    return out


def space_kernels(space, rules: FusionRules, seed: int = 0) -> list[str]:
    """Every kernel the architectures of a space can contain, resolutions coarse to fine."""
    from hwlat.predictors.space_tables import space_kernel_keys

    return space_kernel_keys(space, rules, seed)


def dir_kernels(folder, rules: FusionRules) -> list[str]:
    from hwlat.ir import model_kernels

    folder = Path(folder)
    files = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    if not files:
        raise HwlatError(f"--models {folder}: no .onnx files found there")
    out, seen = [], set()
    for f in files:
        for k in model_kernels(f, rules).keys:
            if k not in seen:
                seen.add(k)
                out.append(k)
    return out


# ---------------------------------------------------------------------------------------------
# broad prior sample
# ---------------------------------------------------------------------------------------------
def _chains(rules: FusionRules, base: str, allowed_ops: tuple) -> list[str]:
    """Every op chain starting at ``base`` the rules allow (depth <= 3)."""
    out, frontier = [base], [base]
    for _ in range(3):
        nxt = []
        for c in frontier:
            for op in allowed_ops:
                if rules.absorbs(c, op):
                    nxt.append(f"{c}-{op}")
        out += nxt
        frontier = nxt
    return out


_ACTS = ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "tanh", "leakyrelu")
_SPATIAL = np.array([4, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160])


_TINY_CHANNELS = (4, 6, 12)


def _ch(rng, lo, hi) -> int:
    """Channel counts as networks use them: mostly multiples of 16 or 8, some odd (ShuffleNet's
    58/116/232, Ghost modules): vector-width alignment changes the kernel a runtime picks.

    Where ``lo`` allows it, 5% are the tiny counts of narrow networks' first stages (GhostNet-0.5's
    4- and 6-channel Ghost halves at 112x112): below one vector of channels a runtime pays per
    pixel, not per element. With no such shape in the prior, LiteRT's regressors priced a 4-channel
    112x112 depthwise conv and concat at 0.3-0.4x their measured time (GhostNet-0.5 -15%)."""
    if lo <= 8 and rng.random() < 0.05:
        return int(rng.choice(_TINY_CHANNELS))
    c = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    u = rng.random()
    if u < 0.5:
        c = max(16, int(round(c / 16)) * 16)
    elif u < 0.85:
        c = max(8, int(round(c / 8)) * 8)
    elif u < 0.93:
        c = max(2, int(round(c / 2)) * 2)
    return max(1, c)


def _hw(rng, hi=112) -> int:
    cands = _SPATIAL[_SPATIAL <= hi]
    return int(rng.choice(cands))


def _out(h, k, s):
    return (h - 1) // s + 1


# The stems CNNs start with: (kernel, stride, padding, output channels). 3x3/2 padded 1 (MobileNets,
# EfficientNet, GhostNet, MnasNet, ShuffleNet; channels scaled by the width multiplier), 7x7/2 padded
# 3 to 64 (ResNet, DenseNet), 7x7/2 unpadded to 96 (SqueezeNet-1.0, AlexNet-like), 3x3/2 unpadded
# to 64 (SqueezeNet-1.1), 3x3/1 to 64 (VGG). LiteRT int8 runs a 3-channel convolution far from
# how it runs the rest (a 7x7/2 stem at 224: 2.1 ms of ResNet-18's 4.7 ms), and a random
# stem sample of ~50 left the regressors 20-35% off on the stems of zoo networks (SqueezeNet-1.0's
# predicted 2.7 ms against 4.0 alone: the network 19-22% low). Measured as a grid, the common
# stems are LUT entries and the regressors interpolate between them.
COMMON_STEMS = ((3, 2, "torch", (8, 16, 24, 32, 48)), (7, 2, "torch", (64,)), (7, 2, "valid", (96,)),
                (3, 2, "valid", (64,)), (3, 1, "torch", (64,)))
STEM_RESOLUTIONS = (128, 160, 192, 224, 256)


def common_stems(rules: FusionRules) -> list[str]:
    """The grid of :data:`COMMON_STEMS` x :data:`STEM_RESOLUTIONS`, with ReLU fused where the
    runtime fuses it (a ReLU6 and an unfused variant of the 16- and 32-channel 3x3/2 stems)."""
    relu = "conv-relu" if rules.absorbs("conv", "relu") else "conv"
    out = []
    for h in STEM_RESOLUTIONS:
        for ks, s, pad, couts in COMMON_STEMS:
            if pad == "valid":
                ho, attrs = (h - ks) // s + 1, ()
            else:
                ho = _out(h, ks, s)
                attrs = _torch_pad_attrs(h, ho, ks, s)
            for c in couts:
                chains = [relu]
                if ks == 3 and s == 2 and c in (16, 32):
                    chains += ["conv"] + (["conv-relu6"] if rules.absorbs("conv", "relu6") else [])
                for chain in dict.fromkeys(chains):
                    out.append(Kernel(chain, ((h, h, 3),), (ho, ho, c), (("k", ks), ("s", s), ("g", 1)) + attrs).key)
    return out


def prior_kernels(rules: FusionRules, n: int = 1500, seed: int = 0, max_mflops: float = 800.0) -> list[str]:
    """A broad sample over kernel types and shapes; deterministic for a seed. The common stems
    (:func:`common_stems`) are spread through the first quarter of a prior large enough for them."""
    from hwlat.kernels import flops

    rng = np.random.default_rng(seed + 7919)
    # a prior too small to hold them (tests' 60-150 kernels) stays a random sample of every type
    stems = common_stems(rules) if n >= 8 * len(COMMON_STEMS) * len(STEM_RESOLUTIONS) else []
    conv_chains = _chains(rules, "conv", _ACTS + ("add",))
    gemm_chains = _chains(rules, "gemm", _ACTS)
    add_chains = _chains(rules, "add", _ACTS)
    kinds = ["conv"] * 30 + ["stem"] * 4 + ["dwconv"] * 22 + ["bn"] * 1 + ["gconv"] * 5 + ["gemm"] * 5 + ["se"] * 8 + \
            ["pool"] * 5 + ["gap"] * 4 + ["add"] * 5 + ["act"] * 6 + ["concat"] * 6 + ["split"] * 2 + ["shuffle"] * 2 + \
            ["slice"] * 1 + ["reshape"] * 1 + ["const"] * 1
    if "catshuffle" in rules.groups:
        # runtimes that fuse injective chains run concat + shuffle (+ split) as one kernel
        kinds = [("catshuffle" if k == "shuffle" else k) for k in kinds]
    concat_add = rules.absorbs("concat", "add")
    out, seen = [], set(stems)
    tries = 0
    while len(out) < n - len(stems) and tries < 50 * n:
        tries += 1
        kind = kinds[rng.integers(len(kinds))]
        k = _make(kind, rng, conv_chains, gemm_chains, add_chains, concat_add)
        if k is None or k.key in seen or flops(k) > max_mflops * 1e6:
            continue
        seen.add(k.key)
        out.append(k.key)
    # one common stem every few sampled kernels, from the start: a short profile measures them too
    step = max(1, n // (4 * max(len(stems), 1)))
    for i, key in enumerate(stems):
        out.insert(i * (step + 1), key)
    return out


def _torch_pad_attrs(h: int, ho: int, ks: int, s: int) -> tuple:
    """PyTorch's padding of a window op, ``k // 2`` on both sides, as the key's ``p`` attribute:
    empty where that is the "same" padding."""
    p = pad_attr(h, ho, ks, s, 1, 2 * (ks // 2))
    return () if p is None else (("p", p),)


def _torch_pad(rng, h: int, ho: int, ks: int, s: int) -> tuple:
    """Most models are exported from PyTorch, which pads a window op by ``k // 2`` on both sides:
    where that is not the "same" padding (stride 2 on an even input), 70% of the sample gets it."""
    pad = _torch_pad_attrs(h, ho, ks, s)
    return pad if pad and rng.random() < 0.7 else ()


def _make(kind, rng, conv_chains, gemm_chains, add_chains, concat_add: bool = False) -> Kernel | None:
    if kind == "stem":
        # the first convolution of every CNN: 3 input channels at full resolution. Runtimes treat
        # it specially (measured on LiteRT int8: a 7x7/2 stem at 224 ran 1.7x what the regressors
        # extrapolated from the rest of the conv sample), so it gets its own slice of the prior.
        ks = int(rng.choice([3, 5, 7], p=[0.6, 0.15, 0.25]))
        s = int(rng.choice([1, 2], p=[0.3, 0.7]))
        h = int(rng.choice([64, 96, 112, 128, 160, 192, 224, 256]))
        # 96: the AlexNet/SqueezeNet-1.0 stem (LiteRT int8: its 7x7/2 stem at 224 ran 3.8 ms, 1.8x
        # what the regressors made of a sample that stopped at 64 channels)
        cout = int(rng.choice([8, 16, 24, 32, 48, 64, 96]))
        chain = conv_chains[rng.integers(len(conv_chains))]
        if "add" in chain.split("-"):
            chain = "conv"
        if rng.random() < 0.2:
            # unpadded ("valid"), as SqueezeNet's and Inception's stems are
            ho, pad = (h - ks) // s + 1, ()
        else:
            ho = _out(h, ks, s)
            pad = _torch_pad(rng, h, ho, ks, s)
        return Kernel(chain, ((h, h, 3),), (ho, ho, cout), (("k", ks), ("s", s), ("g", 1)) + pad)
    if kind in ("conv", "dwconv", "gconv"):
        ks = int(rng.choice([1, 3, 5, 7], p=[0.45, 0.4, 0.09, 0.06] if kind == "conv" else [0.0, 0.5, 0.3, 0.2]))
        s = int(rng.choice([1, 2], p=[0.8, 0.2]))
        h = _hw(rng, 160 if ks > 1 else 112)
        # wide tensors live at low resolution in real networks: cap channels by spatial size
        cmax = int(np.clip(2 ** 16 / h, 64, 2048))
        if kind == "conv":
            cin = _ch(rng, 8, cmax) if rng.random() > 0.05 else 3
            if rng.random() < 0.7:   # networks scale channels by small ratios between layers
                # and a network with odd channel counts keeps them from layer to layer (ShuffleNet's
                # 24->58->58, DenseNet-BC's 210->105): rounded to 8 only from an aligned input.
                # Rounding always left convolutions with both counts unaligned at 0.4% of the
                # sample; ORT runs them on its NCHW path, and its regressors priced
                # ShuffleNet-1.0's 58->58 and DenseNet's 210->105 1x1 convs 1.6-1.8x their
                # measured time (the zoo's two worst over-predictions on the AMD host)
                q = 8 if cin % 8 == 0 else 1
                cout = max(q, int(round(cin * float(rng.choice([0.25, 0.5, 1, 1, 1, 2, 4, 6])) / q)) * q)
            else:
                cout = _ch(rng, 8, cmax)
            g = 1
        elif kind == "dwconv":
            cin = _ch(rng, 8, max(64, 2 * cmax))
            cout, g = cin, cin
        else:
            g = int(rng.choice([2, 3, 4, 8]))
            cin = g * max(1, _ch(rng, 8, 768) // g)
            cout = g * max(1, _ch(rng, 8, 768) // g)
        chain = conv_chains[rng.integers(len(conv_chains))]
        ho = _out(h, ks, s)
        inputs = [(h, h, cin)]
        if "add" in chain.split("-"):
            inputs.append((ho, ho, cout))
        return Kernel(chain, tuple(inputs), (ho, ho, cout), (("k", ks), ("s", s), ("g", g)) + _torch_pad(rng, h, ho, ks, s))
    if kind == "gemm":
        return Kernel(gemm_chains[rng.integers(len(gemm_chains))], ((_ch(rng, 16, 4096),),), (_ch(rng, 10, 4096),))
    h = _hw(rng, 112)
    c = _ch(rng, 8, 1024)
    if kind == "se":
        acts = [("relu", "hsigmoid"), ("silu", "sigmoid"), ("relu", "sigmoid")][rng.integers(3)]
        m = max(8, int(round(c / 4 / 8)) * 8)
        return Kernel("se-" + "-".join(acts), ((h, h, c),), (h, h, c), (("m", m),))
    if kind == "pool":
        ks, s = int(rng.choice([2, 3])), int(rng.choice([1, 2], p=[0.3, 0.7]))
        ho = _out(h, ks, s)
        return Kernel(str(rng.choice(["maxpool", "avgpool"])), ((h, h, c),), (ho, ho, c),
                      (("k", ks), ("s", s)) + _torch_pad(rng, h, ho, ks, s))
    if kind == "gap":
        return Kernel("gap", ((h, h, c),), (1, 1, c))
    if kind == "bn":
        return Kernel("bn", ((h, h, c),), (h, h, c))
    if kind == "add":
        return Kernel(add_chains[rng.integers(len(add_chains))], ((h, h, c), (h, h, c)), (h, h, c))
    if kind == "act":
        return Kernel(str(rng.choice(_ACTS)), ((h, h, c),), (h, h, c))
    if kind == "concat":
        n = int(rng.choice([2, 2, 3, 4]))
        if rng.random() < 0.5:
            # networks mostly concat equal tensors (Ghost halves, Inception/Fire branches); a narrow
            # network's are tiny at high resolution: measured on LiteRT int8, a 112x112 concat of two
            # 4-channel halves costs 0.069 ms, 6x what the regressors made of wider concats
            if rng.random() < 0.3:
                c0, h = int(rng.choice(_TINY_CHANNELS)), int(rng.choice([28, 56, 112]))
            else:
                c0 = _ch(rng, 8, 512)
            cs = [c0] * n
        else:
            cs = [_ch(rng, 8, 512) for _ in range(n)]
        if concat_add and rng.random() < 0.3:   # a concat feeding a residual add (GhostNet), fused
            return Kernel("concat-add", tuple((h, h, ci) for ci in cs) + ((h, h, sum(cs)),), (h, h, sum(cs)))
        return Kernel("concat", tuple((h, h, ci) for ci in cs), (h, h, sum(cs)))
    if kind == "catshuffle":
        c2 = max(8, c // 4 * 2)
        if rng.random() < 0.6:   # a ShuffleNet stride-1 unit: both halves equal, the next unit splits
            return Kernel("concat-shuffle-split", ((h, h, c2), (h, h, c2)), (h, h, 2 * c2), (("g", 2), ("n", 2)))
        return Kernel("concat-shuffle", ((h, h, c2), (h, h, c2)), (h, h, 2 * c2), (("g", 2),))
    if kind == "split":
        c2 = c // 2 * 2
        return Kernel("split", ((h, h, c2),), (h, h, c2 // 2), (("n", 2),))
    if kind == "shuffle":
        g = int(rng.choice([2, 4]))
        c2 = max(g, c // g * g)
        return Kernel("shuffle", ((h, h, c2),), (h, h, c2), (("g", g),))
    if kind == "slice":
        c2 = c // 2 * 2
        return Kernel("slice", ((h, h, c2),), (h, h, c2 // 2))
    if kind == "reshape":
        return Kernel("reshape", ((1, 1, c),), (c,))
    if kind == "const":
        return Kernel(str(rng.choice(["addc", "mulc"])), ((h, h, c),), (h, h, c))
    return None


# The largest kernel the adaptive rounds may add. Real networks keep every tensor under ~4M
# elements (VGG's 224x224x64 is 3.2M; MobileNetV2's widest, 112x112x96, is 1.2M) and their
# kernels under the prior's FLOP cap. Varied without it, the worst-predicted kernels walked to
# shapes no network has (an avgpool over 160x160x552, a 7x7 grouped conv at 160x160: 10-30 ms
# each, measured on a 10-minute ONNX Runtime profile), spending the budget where no model lives.
MAX_TENSOR_ELEMENTS = 4_000_000
MAX_NEIGHBOUR_MFLOPS = 800.0
MAX_ODD_CHANNEL_ELEMENTS = 2 ** 18


def realistic(k: Kernel) -> bool:
    """Whether a kernel lies within the envelope of shapes real networks use (see above). Odd
    channel counts beyond 16 live only in small tensors (DenseNet-BC's 105 and 189 channels at
    14x14 and 7x7; ShuffleNet's 58/116/232 and Ghost modules' halves are even): at large sizes the
    prior's odd ones (255, 607) run the runtimes' slow unblocked paths, are the regressors' worst
    predictions, and drew 44% of the adaptive rounds' measuring time to shapes like a 7x7
    depthwise conv over 80x80x607 (39.7 ms; measured on a 10-minute ONNX Runtime profile)."""
    from hwlat.kernels import flops, numel

    tensors = tuple(k.inputs) + (k.output,)
    biggest = max(numel(s) for s in tensors)
    odd = any(s and s[-1] > 16 and s[-1] % 2 for s in tensors)
    return (flops(k) <= MAX_NEIGHBOUR_MFLOPS * 1e6 and biggest <= MAX_TENSOR_ELEMENTS
            and not (odd and biggest > MAX_ODD_CHANNEL_ELEMENTS))


def neighbours(key: str, seed: int = 0) -> list[str]:
    """Kernels near ``key``: channels, spatial size and kernel size varied one at a time, within
    the envelope of real networks (``realistic``)."""
    from hwlat.kernels import parse_key

    k = parse_key(key)
    if k.base == "concat":
        return []   # the varied shapes below assume one input shape and its output
    rng = np.random.default_rng(seed + hash(key) % 10007)
    out = []
    x = k.inputs[0]
    if len(x) != 3 or len(k.output) != 3:
        return out
    h, w, cin = x
    ho, wo, cout = k.output
    g = k.attr("g", 1)
    attrs = dict(k.attrs)

    def mk(h2, cin2, cout2, attrs2):
        s = attrs2.get("s", 1)
        kk = attrs2.get("k", 1)
        if k.base in ("conv", "maxpool", "avgpool"):
            ho2 = _out(h2, kk, s) if ho == _out(h, kk, s) else max(1, (h2 - kk) // s + 1)
        elif k.base == "gap":
            ho2 = 1
        else:
            ho2 = h2
        ins = [(h2, h2, cin2)] + [(ho2, ho2, cout2 if k.base == "conv" else cin2)] * (len(k.inputs) - 1)
        if "p" in attrs2:
            p2 = pad_attr(h2, ho2, attrs2.get("k", 1), s, attrs2.get("d", 1), attrs2.pop("p"))
            if p2 is not None:
                attrs2["p"] = p2
        try:
            k2 = Kernel(k.op, tuple(ins), (ho2, ho2, cout2), tuple(attrs2.items()))
        except Exception:  # noqa: BLE001
            return None
        return k2.key if realistic(k2) else None

    same_c = cin == cout
    for f in (0.75, 1.25):
        c2 = max(8, int(round(cin * f / 8)) * 8)
        a2 = dict(attrs)
        if g == cin and g > 1:
            a2["g"] = c2
        elif g > 1:
            continue
        out.append(mk(h, c2, c2 if same_c or g == cin else cout, a2))
    if k.base == "conv" and g == 1:
        c2 = max(8, int(round(cout * float(rng.choice([0.75, 1.25])) / 8)) * 8)
        out.append(mk(h, cin, c2, dict(attrs)))
    hs = sorted(set(_SPATIAL.tolist()) | {h})
    i = hs.index(h)
    for j in (i - 1, i + 1):
        if 0 <= j < len(hs):
            out.append(mk(hs[j], cin, cout, dict(attrs)))
    if "k" in attrs and k.base == "conv" and attrs["k"] > 1:
        for kk in (3, 5, 7):
            if kk != attrs["k"]:
                a2 = dict(attrs)
                a2["k"] = kk
                out.append(mk(h, cin, cout, a2))
                break
    return list(dict.fromkeys(o for o in out if o and o != key))
