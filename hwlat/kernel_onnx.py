"""Kernel key -> a real single-kernel ONNX model (NCHW, float32, random weights).

Every backend builds its kernel artifacts from these graphs (ONNX Runtime runs them directly;
LiteRT and TVM compile them), so one kernel means the same computation on every runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwlat.errors import HwlatError
from hwlat.ir import REDUCE_OPS, RESIZE_MODES, UNARY_OPS
from hwlat.kernels import Kernel, pad_attr, parse_key, same_pad_total

OPSET = 17


def _nchw(shape: tuple, batch: int) -> list[int]:
    if len(shape) == 3:
        h, w, c = shape
        return [batch, c, h, w]
    return [batch, *shape]


class _G:
    """Tiny graph builder."""

    def __init__(self, seed: int):
        self.nodes, self.inits, self.n = [], [], 0
        self.rng = np.random.default_rng(seed)

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}{self.n}"

    def const(self, arr, p="w") -> str:
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def weight(self, shape, fan_in) -> str:
        return self.const((self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32))

    def node(self, op, inputs, **attrs) -> str:
        out = self.name("t")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def act(self, kind: str, x: str) -> str:
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "relu6":
            return self.node("Clip", [x, self.const(np.float32(0), "lo"), self.const(np.float32(6), "hi")])
        if kind == "clip":
            return self.node("Clip", [x, self.const(np.float32(-1), "lo"), self.const(np.float32(1), "hi")])
        if kind == "hswish":
            return self.node("HardSwish", [x])
        if kind == "hsigmoid":
            return self.node("HardSigmoid", [x], alpha=1 / 6, beta=0.5)
        if kind == "sigmoid":
            return self.node("Sigmoid", [x])
        if kind == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        if kind == "tanh":
            return self.node("Tanh", [x])
        if kind == "leakyrelu":
            return self.node("LeakyRelu", [x], alpha=0.1)
        raise HwlatError(f"no ONNX builder for activation '{kind}'")

    def conv(self, x, cin, cout, k, s, g, pads, d=1, kw=None) -> str:
        kw = kw or k
        w = self.weight((cout, cin // g, k, kw), cin // g * k * kw)
        b = self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "b")
        return self.node("Conv", [x, w, b], kernel_shape=[k, kw], strides=[s, s], group=g, pads=pads,
                         dilations=[d, d])


def _pads(hin, win, hout, wout, k, s, d=1, kw=None, p=None) -> list[int]:
    """ONNX pads: the model's total ``p`` when the key has one (split evenly, PyTorch's way), else
    the "same" padding."""
    kw = kw or k
    ph = same_pad_total(hin, hout, k, s, d) if p is None else p
    # the width takes the same total where that gives the key's output width
    pw = pad_attr(win, wout, kw, s, d, p) if p is not None else None
    pw = same_pad_total(win, wout, kw, s, d) if pw is None else pw
    return [ph // 2, pw // 2, ph - ph // 2, pw - pw // 2]


def _shuffle(G, x: str, nchw, groups: int) -> str:
    """Channel shuffle as exported from PyTorch: reshape to groups, swap, reshape back."""
    n, c, h, w = nchw
    t = G.node("Reshape", [x, G.const(np.array([n, groups, c // groups, h, w], np.int64), "shape")])
    t = G.node("Transpose", [t], perm=[0, 2, 1, 3, 4])
    return G.node("Reshape", [t, G.const(np.array([n, c, h, w], np.int64), "shape")])


def _split(G, x: str, channels: int, n: int) -> list[str]:
    """``n`` equal channel splits (ONNX Split with its sizes as an input); their output names."""
    sizes = G.const(np.array([channels // n] * n, np.int64), "split")
    outs = [G.name("t") for _ in range(n)]
    G.nodes.append(helper.make_node("Split", [x, sizes], outs, axis=1, name=G.name("Split")))
    return outs


_UNARY = {t.lower(): t for t in UNARY_OPS}
_REDUCE = {t.lower(): t for t in REDUCE_OPS}


def _reduced_axes(in_nchw: list, out_nchw: list) -> tuple[list[int], int]:
    """The axes a reduction from ``in_nchw`` to ``out_nchw`` removed, and whether it kept them."""
    if len(out_nchw) == len(in_nchw):
        return [i for i, (a, o) in enumerate(zip(in_nchw, out_nchw)) if a != o and o == 1] or [1], 1
    axes, j = [], 0
    for i, a in enumerate(in_nchw):
        if j < len(out_nchw) and out_nchw[j] == a and len(in_nchw) - i > len(out_nchw) - j - 1:
            j += 1
        else:
            axes.append(i)
    return axes, 0


def kernel_model(kernel: Kernel | str, seed: int = 0) -> onnx.ModelProto:
    """A single-kernel ONNX model for a kernel or key."""
    k = parse_key(kernel) if isinstance(kernel, str) else kernel
    b = k.attr("b", 1)
    G = _G(seed)
    in_names = [f"x{i}" for i in range(len(k.inputs))]
    in_shapes = [_nchw(s, b) for s in k.inputs]
    x = in_names[0]
    parts = k.op.split("-")
    base, rest = parts[0], parts[1:]
    out_nchw = _nchw(k.output, b)

    if base == "conv":
        (hin, win, cin), (hout, wout, cout) = k.inputs[0], k.output
        ks, s, g, d, kw = k.attr("k", 1), k.attr("s", 1), k.attr("g", 1), k.attr("d", 1), k.attr("kw")
        y = G.conv(x, cin, cout, ks, s, g, _pads(hin, win, hout, wout, ks, s, d, kw, k.attr("p")), d, kw)
        extra = iter(in_names[1:])
        for r in rest:
            y = G.node("Add", [y, next(extra)]) if r == "add" else G.act(r, y)
    elif base == "gemm":
        cin, cout = k.inputs[0][-1], k.output[-1]
        y = G.node("Gemm", [x, G.weight((cout, cin), cin), G.const(np.zeros(cout, np.float32), "b")], transB=1)
        for r in rest:
            y = G.act(r, y)
    elif base == "matmul":
        y = G.node("MatMul", [x, in_names[1]])
        for r in rest:
            y = G.act(r, y)
    elif base in ("add", "mul"):
        y = G.node("Add" if base == "add" else "Mul", [x, in_names[1]])
        for r in rest:
            y = G.act(r, y)
    elif base in ("addc", "mulc"):
        c = in_shapes[0][1]
        cst = G.const((G.rng.standard_normal((1, c) + (1,) * (len(in_shapes[0]) - 2))).astype(np.float32), "c")
        y = G.node("Add" if base == "addc" else "Mul", [x, cst])
        for r in rest:
            y = G.act(r, y)
    elif base in ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "tanh", "leakyrelu", "clip"):
        y = G.act(base, x)
        for r in rest:
            y = G.act(r, y)
    elif base == "se":
        c, m = k.inputs[0][-1], k.attr("m", 1)
        acts = rest or ["relu", "hsigmoid"]
        p = G.node("GlobalAveragePool", [x])
        h = G.act(acts[0], G.conv(p, c, m, 1, 1, 1, [0, 0, 0, 0]))
        gt = G.conv(h, m, c, 1, 1, 1, [0, 0, 0, 0])
        gt = G.act(acts[1] if len(acts) > 1 else "hsigmoid", gt)
        y = G.node("Mul", [x, gt])
    elif base == "bn":
        c = in_shapes[0][1]
        vals = [G.const((G.rng.random(c) + 0.5).astype(np.float32), n) for n in ("scale", "bias", "mean", "var")]
        y = G.node("BatchNormalization", [x, *vals], epsilon=1e-5)
        for r in rest:
            y = G.act(r, y)
    elif base == "gap":
        y = G.node("GlobalAveragePool", [x])
    elif base == "gmp":
        y = G.node("GlobalMaxPool", [x])
    elif base in ("maxpool", "avgpool"):
        (hin, win, _), (hout, wout, _) = k.inputs[0], k.output
        ks, s = k.attr("k", 1), k.attr("s", 1)
        y = G.node("MaxPool" if base == "maxpool" else "AveragePool", [x], kernel_shape=[ks, ks],
                   strides=[s, s], pads=_pads(hin, win, hout, wout, ks, s, p=k.attr("p")))
    elif base == "concat":
        n_add = rest.count("add")
        y = G.node("Concat", in_names[:len(in_names) - n_add], axis=1)
        extra = iter(in_names[len(in_names) - n_add:])
        for r in rest:
            if r == "add":
                y = G.node("Add", [y, next(extra)])
            elif r == "shuffle":
                y = _shuffle(G, y, out_nchw, k.attr("g", 2))
            elif r == "split":
                n = k.attr("n", 2)
                y, *extra_outputs = _split(G, y, out_nchw[1], n)
                out_nchw = (out_nchw[0], out_nchw[1] // n, *out_nchw[2:])
            else:
                y = G.act(r, y)
    elif base == "split":
        y, *extra_outputs = _split(G, x, in_shapes[0][1], k.attr("n", 2))
    elif base == "slice":
        axis = next((i for i, (a, o) in enumerate(zip(in_shapes[0], out_nchw)) if a != o), 1)
        y = G.node("Slice", [x, G.const(np.array([0], np.int64), "st"),
                             G.const(np.array([out_nchw[axis]], np.int64), "en"),
                             G.const(np.array([axis], np.int64), "ax")])
    elif base == "reshape":
        # a view. A batched token reshape's key cannot give both sides their true batch: where the
        # sizes disagree it is flattened, which costs what any reshape of that input costs
        if int(np.prod(out_nchw)) != int(np.prod(in_shapes[0])):
            out_nchw = [int(np.prod(in_shapes[0]))]
        y = G.node("Reshape", [x, G.const(np.array(out_nchw, np.int64), "shape")])
    elif base == "transpose":
        perm = [0, 1, 3, 2] if len(in_shapes[0]) == 4 else list(range(len(in_shapes[0])))[::-1]
        y = G.node("Transpose", [x], perm=perm)
    elif base == "shuffle":
        y = _shuffle(G, x, in_shapes[0], k.attr("g", 2))
    elif base == "pad":
        diff = [o - i for i, o in zip(in_shapes[0], out_nchw)]
        pads = [0, 0, diff[2] // 2, diff[3] // 2, 0, 0, diff[2] - diff[2] // 2, diff[3] - diff[3] // 2]
        y = G.node("Pad", [x, G.const(np.array(pads, np.int64), "pads")])
    elif base == "softmax":
        y = G.node("Softmax", [x], axis=-1)
    elif base in _UNARY:
        y = G.node(_UNARY[base], [x])
    elif base == "pow":
        y = G.node("Pow", [x, G.const(np.array(3.0, np.float32), "exp")])
    elif base in ("max", "min"):
        y = G.node(base.capitalize(), [x, in_names[1]])
    elif base == "prelu":
        c = in_shapes[0][1]
        slope = (0.25 * np.ones((c,) + (1,) * (len(in_shapes[0]) - 2))).astype(np.float32)
        y = G.node("PRelu", [x, G.const(slope, "slope")])
    elif base in _REDUCE:
        axes, keep = _reduced_axes(in_shapes[0], out_nchw)
        if base == "reducesum":     # at opset 17 only ReduceSum takes its axes as an input
            y = G.node("ReduceSum", [x, G.const(np.array(axes, np.int64), "axes")], keepdims=keep)
        else:
            y = G.node(_REDUCE[base], [x], axes=axes, keepdims=keep)
    elif base == "instnorm":
        c = in_shapes[0][1]
        y = G.node("InstanceNormalization", [x, G.const(np.ones(c, np.float32), "scale"),
                                             G.const(np.zeros(c, np.float32), "bias")], epsilon=1e-5)
    elif base == "layernorm":
        c = in_shapes[0][-1]
        y = G.node("LayerNormalization", [x, G.const(np.ones(c, np.float32), "scale"),
                                          G.const(np.zeros(c, np.float32), "bias")], axis=-1, epsilon=1e-5)
    elif base == "convt":
        (hin, win, cin), (hout, wout, cout) = k.inputs[0], k.output
        ks, st, g = k.attr("k", 1), k.attr("s", 1), k.attr("g", 1)
        kw = k.attr("kw", ks)
        w = G.weight((cin, cout // g, ks, kw), cin * ks * kw // g)
        # output_shape fixes the output size; the runtime derives the padding from it
        y = G.node("ConvTranspose", [x, w, G.const(np.zeros(cout, np.float32), "b")], kernel_shape=[ks, kw],
                   strides=[st, st], group=g, output_shape=[hout, wout])
        for r in rest:
            y = G.act(r, y)
    elif base in ("depthtospace", "spacetodepth"):
        kw = {"mode": ("DCR", "CRD")[k.attr("r", 0)]} if base == "depthtospace" else {}
        y = G.node("DepthToSpace" if base == "depthtospace" else "SpaceToDepth", [x], blocksize=k.attr("s", 2), **kw)
    elif base == "resize":
        mode = RESIZE_MODES[k.attr("r", 1)]
        y = G.node("Resize", [x, "", "", G.const(np.array(out_nchw, np.int64), "sizes")], mode=mode,
                   **({"coordinate_transformation_mode": "pytorch_half_pixel"} if mode != "nearest" else {}))
    else:
        raise HwlatError(f"no ONNX builder for kernel op '{k.op}' (key {k.key})")

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(in_names, in_shapes)]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_nchw)]
    if "split" in parts:
        outputs += [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_nchw) for o in extra_outputs]
    graph = helper.make_graph(G.nodes, k.key[:200], inputs, outputs, G.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hwlat")
    model.ir_version = 8
    return model


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds
