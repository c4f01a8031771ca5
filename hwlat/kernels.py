"""Kernels and their canonical keys.

A kernel is the unit a backend really executes after its own fusion. Its key is a readable,
stable, parseable string::

    conv-hswish_i56x56x24_o56x56x24_k3_s1_g24
    conv-add-relu_i28x28x40+28x28x40_o28x28x40_k1_s1_g1
    se-relu-hsigmoid_i14x14x480_o14x14x480_m120
    gemm_i1280_o1000
    concat_i28x28x24+28x28x48_o28x28x72

Grammar: ``op`` then ``_``-separated fields. ``op`` is a chain of lower-case op names joined by
``-`` (the first is the base op, the rest are fused into it). A field is a lower-case prefix
then a value: ``i`` the activation inputs (``+``-separated shapes), ``o`` the output shape, any
other prefix an integer attribute. Shapes drop the batch dimension and list spatial dims then
channels (``HxWxC``; ``C`` alone for vectors). Batch other than 1 is the attribute ``b``. Keys are
compared whole, never by substring.

Attribute prefixes: ``k`` kernel size, ``s`` stride, ``g`` groups, ``d`` dilation, ``m`` hidden
channels (squeeze-excite), ``p`` padding total when it is not the "same" padding, ``b`` batch,
``n`` outputs of a split.

Where a runtime fuses injective ops (TVM), a concat, channel shuffle and split run as one kernel
``concat-shuffle-split``: inputs the concat's, output the shuffled tensor (before the split).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hwlat.errors import HwlatError

Shape = tuple[int, ...]

_ATTR_ORDER = ("k", "s", "g", "d", "m", "p", "n", "b")
_OP_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z][a-z0-9]*)*$")
_FIELD_RE = re.compile(r"^([a-z]+)([0-9x+]+)$")


@dataclass(frozen=True)
class Kernel:
    """One executed kernel: op chain, activation input shapes, output shape, integer attributes."""

    op: str
    inputs: tuple[Shape, ...]
    output: Shape
    attrs: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not _OP_RE.match(self.op):
            raise HwlatError(f"invalid kernel op name '{self.op}'")
        # attributes are stored sorted in canonical order so equal kernels compare equal
        order = {a: i for i, a in enumerate(_ATTR_ORDER)}
        attrs = tuple(sorted(((str(k), int(v)) for k, v in self.attrs), key=lambda kv: (order.get(kv[0], 99), kv[0])))
        object.__setattr__(self, "attrs", attrs)
        object.__setattr__(self, "inputs", tuple(tuple(int(d) for d in s) for s in self.inputs))
        object.__setattr__(self, "output", tuple(int(d) for d in self.output))

    # -- views ---------------------------------------------------------------------------
    @property
    def base(self) -> str:
        """The base op (``conv`` for ``conv-add-relu``)."""
        return self.op.split("-")[0]

    @property
    def fused(self) -> tuple[str, ...]:
        return tuple(self.op.split("-")[1:])

    @property
    def kind(self) -> str:
        """The regressor family: base op, dense/depthwise/grouped for convolutions."""
        if self.base == "concat" and "shuffle" in self.fused:
            return "catshuffle"
        if self.base == "conv":
            g = self.attr("g", 1)
            cin = self.inputs[0][-1]
            if g == 1:
                return "conv"
            return "dwconv" if g == cin else "gconv"
        return self.base

    def attr(self, name: str, default: int | None = None) -> int | None:
        for k, v in self.attrs:
            if k == name:
                return v
        return default

    @property
    def key(self) -> str:
        parts = [self.op, "i" + "+".join(_shape_str(s) for s in self.inputs), "o" + _shape_str(self.output)]
        parts += [f"{k}{v}" for k, v in self.attrs]
        return "_".join(parts)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.key


def _shape_str(shape: Shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "1"


def _parse_shape(text: str) -> Shape:
    return tuple(int(d) for d in text.split("x"))


def parse_key(key: str) -> Kernel:
    """Parse a canonical key back into a :class:`Kernel`; ``parse_key(k.key) == k``."""
    parts = key.strip().split("_")
    if len(parts) < 3:
        raise HwlatError(f"malformed kernel key '{key}': expected '<op>_i<shape>_o<shape>[_<attr><int>...]'")
    op, inputs, output, attrs = parts[0], None, None, []
    for tok in parts[1:]:
        m = _FIELD_RE.match(tok)
        if not m:
            raise HwlatError(f"malformed field '{tok}' in kernel key '{key}'")
        prefix, value = m.groups()
        try:
            if prefix == "i":
                inputs = tuple(_parse_shape(s) for s in value.split("+"))
            elif prefix == "o":
                output = _parse_shape(value)
            else:
                attrs.append((prefix, int(value)))
        except ValueError:
            raise HwlatError(f"malformed field '{tok}' in kernel key '{key}'") from None
    if inputs is None or output is None:
        raise HwlatError(f"kernel key '{key}' lacks its input ('i') or output ('o') field")
    return Kernel(op, inputs, output, tuple(attrs))


def same_pad_total(hin: int, hout: int, k: int, s: int, d: int = 1) -> int:
    """Total padding along one axis of the "same" convention (TensorFlow's: the extra one after)."""
    return max(0, (hout - 1) * s + d * (k - 1) + 1 - hin)


def pad_attr(hin: int, hout: int, k: int, s: int, d: int, total: int) -> int | None:
    """The ``p`` attribute for a window op padded by ``total`` along an axis: None where that is the
    "same" padding. PyTorch pads a 3x3 stride-2 convolution of an even input by 1 + 1, where "same"
    pads by 0 + 1: the same output shape, but another kernel (on TVM, another tuning task)."""
    if total == same_pad_total(hin, hout, k, s, d):
        return None
    if (hin + total - d * (k - 1) - 1) // s + 1 != hout:
        return None   # ceil-mode pooling: the output, not the padding, fixes the shape
    return int(total)


def with_resolution(k: Kernel, hmap) -> Kernel:
    """The same kernel with every spatial size mapped by ``hmap`` (a dict or function of H); a
    window op keeps the padding its model had, so ``p`` is re-derived at the new size."""
    f = hmap if callable(hmap) else hmap.__getitem__

    def m(s):
        return (f(s[0]), f(s[1]), s[2]) if len(s) == 3 else s

    ins, out = tuple(m(s) for s in k.inputs), m(k.output)
    attrs = dict(k.attrs)
    if k.base in ("conv", "maxpool", "avgpool") and len(k.inputs[0]) == 3 and len(k.output) == 3:
        ks, st, d = attrs.get("k", 1), attrs.get("s", 1), attrs.get("d", 1)
        total = attrs.pop("p", None)
        if total is None:
            total = same_pad_total(k.inputs[0][0], k.output[0], ks, st, d)
        p = pad_attr(ins[0][0], out[0], ks, st, d, total)
        if p is not None:
            attrs["p"] = p
    return Kernel(k.op, ins, out, tuple(attrs.items()))


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def flops(k: Kernel) -> float:
    """Multiply-accumulates x2 (plus elementwise work) of one run, batch included."""
    b = k.attr("b", 1)
    out = numel(k.output)
    base = k.base
    if base == "conv":
        cin = k.inputs[0][-1]
        g = k.attr("g", 1)
        ks = k.attr("k", 1)
        f = 2.0 * out * (cin // max(g, 1)) * ks * k.attr("kw", ks)
        return b * (f + out * len(k.fused))
    if base == "convt":
        # every input pixel scatters a k x k x (cout / g) patch per input channel of its group
        cout, g, ks = k.output[-1], k.attr("g", 1), k.attr("k", 1)
        return b * (2.0 * numel(k.inputs[0]) * (cout // max(g, 1)) * ks * k.attr("kw", ks) + out * len(k.fused))
    if base == "gemm":
        return b * (2.0 * numel(k.inputs[0]) * k.output[-1] + out * len(k.fused))
    if base == "matmul" and len(k.inputs) >= 2:
        # (M, K) @ (K, N), or per head: (heads, M, K) is keyed (M, K, heads) like a CHW tensor
        n_out = k.output[1] if len(k.output) == 3 else k.output[-1]
        return b * (2.0 * numel(k.inputs[0]) * n_out + out * len(k.fused))
    if base == "se":
        c = k.inputs[0][-1]
        m = k.attr("m", 1)
        return b * (2 * numel(k.inputs[0]) + 4.0 * c * m + 2 * out)
    if base in ("pool", "maxpool", "avgpool"):
        ks = k.attr("k", 1)
        return b * float(out * ks * ks)
    return b * float(sum(numel(s) for s in k.inputs) + out)


def param_count(k: Kernel) -> int:
    base = k.base
    if base == "conv":
        cin, cout = k.inputs[0][-1], k.output[-1]
        g, ks = k.attr("g", 1), k.attr("k", 1)
        return cout * (cin // max(g, 1)) * ks * k.attr("kw", ks) + cout
    if base == "convt":
        cin, cout = k.inputs[0][-1], k.output[-1]
        g, ks = k.attr("g", 1), k.attr("k", 1)
        return cin * (cout // max(g, 1)) * ks * k.attr("kw", ks) + cout
    if base == "gemm":
        return numel(k.inputs[0]) * k.output[-1] + k.output[-1]
    if base == "se":
        c, m = k.inputs[0][-1], k.attr("m", 1)
        return 2 * c * m + c + m
    return 0


def bytes_moved(k: Kernel, dtype_bytes: int = 4) -> float:
    """Activation inputs + output + weights, in bytes: the memory traffic of one run."""
    b = k.attr("b", 1)
    act = sum(numel(s) for s in k.inputs) + numel(k.output)
    return float(dtype_bytes * (b * act + param_count(k)))
