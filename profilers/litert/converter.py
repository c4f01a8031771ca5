"""ONNX (NCHW) -> .tflite (NHWC) compiler for whole models and single kernels.

The model is first canonicalised by ONNX Runtime's basic optimizations (BatchNorm folded into
Conv, shape computations constant-folded) and shape-inferred; then each node maps to the TFLite
builtins the official converter would emit for the same network written in TensorFlow:
Conv -> CONV_2D / DEPTHWISE_CONV_2D with RELU/RELU6 fused, Gemm -> FULLY_CONNECTED,
GlobalAveragePool -> MEAN(keep_dims), HardSigmoid -> ADD(+3, RELU6) * 1/6, torch-style
asymmetric padding -> PAD + VALID. An op outside that set raises UnsupportedOpError.

int8 models are produced from the float graph by the official post-training quantizer
(:mod:`.quantize`). Input/output layouts are stored in the model's metadata (``hwlat_io``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from hwlat.errors import BadModelError, UnsupportedOpError
from hwlat.profilers.litert import layout as L
from hwlat.profilers.litert.converter_ops import OpsMixin, _attr
from hwlat.profilers.litert.layout import Val
from hwlat.profilers.litert.tflite_writer import FUSED_ACT, METADATA_NAME, PAD_SAME, PAD_VALID, TFLiteGraph

_BACKEND = "litert"


class _Compiler(OpsMixin):
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.g = TFLiteGraph(g.name or "main")
        self.shapes: dict[str, tuple] = {}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.vals: dict[str, Val] = {}
        self.users: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        self.done: set[int] = set()

    # -- helpers ----------------------------------------------------------------------------
    def shape(self, name: str) -> tuple:
        if name in self.consts:
            return tuple(self.consts[name].shape)
        if name not in self.shapes:
            raise BadModelError(f"no static shape for tensor '{name}' after shape inference; export the "
                                f"model with static input shapes")
        return self.shapes[name]

    def const(self, name: str, node) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedOpError(f"{node.op_type} with a non-constant '{name}'", node.name, _BACKEND)
        return self.consts[name]

    def new(self, onnx_name: str, perm, shape=None) -> int:
        shape = shape if shape is not None else self.shape(onnx_name)
        return self.g.tensor(L.permute_shape(shape, perm), np.float32, onnx_name)

    def val(self, name: str, node) -> Val:
        if name in self.vals:
            return self.vals[name]
        if name in self.consts:
            arr = self.consts[name].astype(np.float32)
            v = Val(self.g.const(arr, name), L.identity(arr.ndim))
            self.vals[name] = v
            return v
        raise BadModelError(f"tensor '{name}' used by node '{node.name}' is never produced")

    def to_layout(self, v: Val, perm, onnx_shape, name="tr") -> Val:
        perm = tuple(perm)
        if v.perm == perm:
            return v
        t = self.g.tensor(L.permute_shape(onnx_shape, perm), np.float32, name + "_tr")
        self.g.op("TRANSPOSE", [v.t, self.g.const(np.array(L.transpose_between(v.perm, perm), np.int32))], [t])
        return Val(t, perm, nonneg=v.nonneg)

    def fuse_act(self, node):
        """The RELU/RELU6 the official converter would fold into ``node``'s fused_activation."""
        out = node.output[0]
        users = self.users.get(out, [])
        if out in self.graph_outputs or len(users) != 1:
            return None, out
        u = users[0]
        kind = None
        if u.op_type == "Relu":
            kind = "relu"
        elif u.op_type == "Clip":
            lo, hi = self.clip_bounds(u)
            kind = {(0.0, 6.0): "relu6", (-1.0, 1.0): "relu_n1_to_1"}.get((lo, hi))
        if kind is None:
            return None, out
        self.done.add(id(u))
        return kind, u.output[0]

    def clip_bounds(self, n):
        lo, hi = _attr(n, "min"), _attr(n, "max")
        if len(n.input) > 1 and n.input[1]:
            lo = float(self.const(n.input[1], n))
        if len(n.input) > 2 and n.input[2]:
            hi = float(self.const(n.input[2], n))
        return (None if lo is None else float(lo)), (None if hi is None else float(hi))

    def bind(self, name: str, v: Val) -> None:
        self.vals[name] = v

    # -- driver -----------------------------------------------------------------------------
    def run(self) -> TFLiteGraph:
        g = self.model.graph
        init = set(self.consts)
        ins = []
        io = {"inputs": [], "outputs": []}
        for inp in g.input:
            if inp.name in init:
                continue
            if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise BadModelError(f"input '{inp.name}' is not float32; the litert compiler needs float inputs")
            shape = self.shape(inp.name)
            perm = L.preferred(len(shape))
            v = Val(self.new(inp.name, perm), perm)
            self.bind(inp.name, v)
            ins.append(v.t)
            io["inputs"].append({"name": inp.name, "onnx_shape": list(shape), "perm": list(perm)})
        for node in g.node:
            if id(node) in self.done:
                continue
            handler = getattr(self, "op_" + node.op_type, None)
            if handler is None or (node.domain not in ("", "ai.onnx")):
                raise UnsupportedOpError(node.op_type, node.name, _BACKEND)
            handler(node)
        outs = []
        for o in g.output:
            v = self.val(o.name, o)
            if v.fperm is not None:
                raise UnsupportedOpError("Flatten feeding a graph output", o.name, _BACKEND)
            outs.append(v.t)
            io["outputs"].append({"name": o.name, "onnx_shape": list(self.shape(o.name)), "perm": list(v.perm)})
        self.g.set_io(ins, outs)
        self.g.add_metadata(METADATA_NAME, io)
        return self.g

    # -- convolution, dense ------------------------------------------------------------------
    def spatial_padding(self, node, x_shape, out_shape, k, s, d, allow_same=True):
        """(mode, explicit pads [(before, after)] or None) for a 2-D window op. TFLite's SAME
        leaves padded cells out of average pools, so ``allow_same=False`` for ONNX pools that
        count them."""
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        auto = _attr(node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
            pads = [0, 0, 0, 0]
            if auto != "VALID":
                for i in range(2):
                    tot = max((out_shape[2 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - x_shape[2 + i], 0)
                    lo = tot // 2 if auto == "SAME_UPPER" else tot - tot // 2
                    pads[i], pads[2 + i] = lo, tot - lo
        explicit, same = [], True
        for i in range(2):
            n_in, n_out = x_shape[2 + i], out_shape[2 + i]
            need = (n_out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - n_in
            before, after = pads[i], pads[2 + i]
            after = max(after, need - before)           # ceil_mode windows past the end
            explicit.append((before, max(after, 0)))
            tot = max((-(-n_in // s[i]) - 1) * s[i] + (k[i] - 1) * d[i] + 1 - n_in, 0)
            if n_out != -(-n_in // s[i]) or before != tot // 2:
                same = False
        if all(b == 0 and a == 0 for b, a in explicit):
            return PAD_VALID, None
        if same and allow_same:
            return PAD_SAME, None
        return PAD_VALID, explicit

    def pad_spatial(self, x: Val, x_shape, explicit, value=0.0, name="pad") -> tuple[Val, tuple]:
        (pt, pb), (pl, pr) = explicit
        nshape = (x_shape[0], x_shape[1], x_shape[2] + pt + pb, x_shape[3] + pl + pr)
        t = self.new(name + "_pad", L.NHWC, nshape)
        pads = np.array([[0, 0], [pt, pb], [pl, pr], [0, 0]], np.int32)
        if value == 0.0:
            self.g.op("PAD", [x.t, self.g.const(pads)], [t])
        else:
            self.g.op("PADV2", [x.t, self.g.const(pads), self.g.const(np.array([value], np.float32))], [t])
        return Val(t, L.NHWC, nonneg=x.nonneg), nshape

    def op_Conv(self, node):
        x_shape = self.shape(node.input[0])
        if len(x_shape) != 4:
            raise UnsupportedOpError(f"Conv{len(x_shape) - 2}D", node.name, _BACKEND)
        x = self.to_layout(self.val(node.input[0], node), L.NHWC, x_shape, node.name)
        w = self.const(node.input[1], node).astype(np.float32)
        cout, cin_g, kh, kw = w.shape
        cin = x_shape[1]
        b = (self.const(node.input[2], node).astype(np.float32) if len(node.input) > 2 and node.input[2]
             else np.zeros(cout, np.float32))
        grp = int(_attr(node, "group", 1))
        s = list(_attr(node, "strides", [1, 1]))
        d = list(_attr(node, "dilations", [1, 1]))
        out_shape = self.shape(node.output[0])
        mode, explicit = self.spatial_padding(node, x_shape, out_shape, (kh, kw), s, d)
        if explicit:
            x, _ = self.pad_spatial(x, x_shape, explicit, name=node.name)
        act, out_name = self.fuse_act(node)
        y = self.new(out_name, L.NHWC, out_shape)
        bias = self.g.const(b, node.name + "_bias")
        common = dict(padding=mode, strideH=s[0], strideW=s[1], dilationHFactor=d[0], dilationWFactor=d[1],
                      fusedActivationFunction=FUSED_ACT[act])
        if grp == cin and grp > 1 and cout % cin == 0:
            wt = self.g.const(w.transpose(1, 2, 3, 0), node.name + "_w")       # [1, kh, kw, cout]
            self.g.op("DEPTHWISE_CONV_2D", [x.t, wt, bias], [y],
                      self.g.options("DepthwiseConv2DOptions", depthMultiplier=cout // cin, **common))
        else:
            # grouped conv: CONV_2D infers groups from cin / filter depth (TFLite >= 2.9, XNNPACK)
            wt = self.g.const(w.transpose(0, 2, 3, 1), node.name + "_w")       # [cout, kh, kw, cin/g]
            self.g.op("CONV_2D", [x.t, wt, bias], [y], self.g.options("Conv2DOptions", **common))
        self.bind(out_name, Val(y, L.NHWC, nonneg=act in ("relu", "relu6")))

    def _fc(self, node, x_name, w_out_in: np.ndarray, bias: np.ndarray):
        x = self.val(x_name, node)
        x_shape = self.shape(x_name)
        if len(x_shape) != 2:
            raise UnsupportedOpError(f"{node.op_type} on a rank-{len(x_shape)} input", node.name, _BACKEND)
        if x.fperm is not None:
            w_out_in = w_out_in[:, x.fperm]
        act, out_name = self.fuse_act(node)
        y = self.new(out_name, (0, 1))
        self.g.op("FULLY_CONNECTED", [x.t, self.g.const(np.ascontiguousarray(w_out_in, np.float32), node.name + "_w"),
                                      self.g.const(bias.astype(np.float32), node.name + "_bias")], [y],
                  self.g.options("FullyConnectedOptions", fusedActivationFunction=FUSED_ACT[act]))
        self.bind(out_name, Val(y, (0, 1), nonneg=act in ("relu", "relu6")))

    def op_Gemm(self, node):
        if _attr(node, "transA", 0):
            raise UnsupportedOpError("Gemm(transA=1)", node.name, _BACKEND)
        w = self.const(node.input[1], node).astype(np.float32) * float(_attr(node, "alpha", 1.0))
        w = w if _attr(node, "transB", 0) else w.T
        n_out = w.shape[0]
        b = np.zeros(n_out, np.float32)
        if len(node.input) > 2 and node.input[2]:
            b = np.broadcast_to(self.const(node.input[2], node).astype(np.float32) * float(_attr(node, "beta", 1.0)),
                                (n_out,)).copy()
        self._fc(node, node.input[0], w, b)

    def op_MatMul(self, node):
        w = self.const(node.input[1], node).astype(np.float32)
        if w.ndim != 2:
            raise UnsupportedOpError("MatMul with a non-2-D weight", node.name, _BACKEND)
        self._fc(node, node.input[0], w.T, np.zeros(w.shape[1], np.float32))

    # -- pooling, reductions -----------------------------------------------------------------
    def _pool(self, node, code, k, s, out_shape, global_pool=False):
        x_shape = self.shape(node.input[0])
        x = self.to_layout(self.val(node.input[0], node), L.NHWC, x_shape, node.name)
        counts_pads = code == "AVERAGE_POOL_2D" and bool(_attr(node, "count_include_pad", 0))
        mode, explicit = (PAD_VALID, None) if global_pool else \
            self.spatial_padding(node, x_shape, out_shape, k, s, [1, 1], allow_same=not counts_pads)
        divisor_fix = None
        if explicit:
            fill = 0.0 if code == "AVERAGE_POOL_2D" or x.nonneg else float(np.finfo(np.float32).min)
            if code == "AVERAGE_POOL_2D":
                divisor_fix = self._avg_divisor_fix(node, x_shape, out_shape, k, s, explicit)
            x, _ = self.pad_spatial(x, x_shape, explicit, fill, node.name)
        act, out_name = self.fuse_act(node) if divisor_fix is None else (None, node.output[0])
        y = self.new(out_name, L.NHWC, out_shape)
        self.g.op(code, [x.t], [y], self.g.options(
            "Pool2DOptions", padding=mode, strideH=s[0], strideW=s[1], filterHeight=k[0], filterWidth=k[1],
            fusedActivationFunction=FUSED_ACT[act]))
        if divisor_fix is not None:      # the pool divided by k*k everywhere; ONNX divides by fewer
            t = y
            y = self.new(out_name + "_divisor", L.NHWC, out_shape)
            self.g.op("MUL", [t, self.g.const(divisor_fix)], [y], self.g.options("MulOptions"))
        self.bind(out_name, Val(y, L.NHWC, nonneg=x.nonneg or act in ("relu", "relu6")))

    def _avg_divisor_fix(self, node, x_shape, out_shape, k, s, explicit):
        """k*k / (ONNX divisor) per output position, or None when ONNX divides by k*k everywhere.

        ONNX counts the padded cells only with count_include_pad, and never the cells a ceil-mode
        window reaches past the padding."""
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        include = bool(_attr(node, "count_include_pad", 0))
        counts = []
        for i in range(2):
            lo, hi = (-pads[i], x_shape[2 + i] + pads[2 + i]) if include else (0, x_shape[2 + i])
            start = np.arange(out_shape[2 + i]) * s[i] - explicit[i][0]
            counts.append(np.clip(np.minimum(start + k[i], hi) - np.maximum(start, lo), 0, None))
        div = np.outer(counts[0], counts[1]).astype(np.float64)
        if np.all(div == k[0] * k[1]):
            return None
        return (k[0] * k[1] / np.maximum(div, 1)).astype(np.float32).reshape(1, out_shape[2], out_shape[3], 1)

    def op_MaxPool(self, node):
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedOpError("MaxPool with indices", node.name, _BACKEND)
        if any(v != 1 for v in _attr(node, "dilations", [1, 1])):
            raise UnsupportedOpError("MaxPool(dilations>1)", node.name, _BACKEND)
        self._pool(node, "MAX_POOL_2D", list(_attr(node, "kernel_shape")), list(_attr(node, "strides", [1, 1])),
                   self.shape(node.output[0]))

    def op_AveragePool(self, node):
        self._pool(node, "AVERAGE_POOL_2D", list(_attr(node, "kernel_shape")),
                   list(_attr(node, "strides", [1, 1])), self.shape(node.output[0]))

    def op_GlobalMaxPool(self, node):
        x_shape = self.shape(node.input[0])
        self._pool(node, "MAX_POOL_2D", list(x_shape[2:]), [1, 1], self.shape(node.output[0]), global_pool=True)

    def _mean(self, node, axes, keep):
        x_shape = self.shape(node.input[0])
        x = self.val(node.input[0], node)
        axes = sorted(a % len(x_shape) for a in axes)
        tfl_axes = np.array(sorted(L.tfl_axis(x.perm, a) for a in axes), np.int32)
        if keep:
            perm = x.perm
        else:
            kept = [a for a in x.perm if a not in axes]
            perm = tuple(int(r) for r in np.argsort(np.argsort(kept)))   # renumber the kept axes
        y = self.new(node.output[0], perm)
        self.g.op("MEAN", [x.t, self.g.const(tfl_axes)], [y], self.g.options("ReducerOptions", keepDims=bool(keep)))
        self.bind(node.output[0], Val(y, perm, nonneg=x.nonneg))

    def op_GlobalAveragePool(self, node):
        axes = list(range(2, len(self.shape(node.input[0]))))
        users = self.users.get(node.output[0], [])
        # pool + flatten is one MEAN(keep_dims=False), as Keras' GlobalAveragePooling2D converts
        if (len(users) == 1 and users[0].op_type in ("Flatten", "Reshape", "Squeeze")
                and node.output[0] not in self.graph_outputs
                and self.shape(users[0].output[0]) == self.shape(node.input[0])[:2]):
            self.done.add(id(users[0]))
            node = onnx.helper.make_node("ReduceMean", [node.input[0]], [users[0].output[0]], name=node.name)
            return self._mean(node, axes, False)
        self._mean(node, axes, True)

    def op_ReduceMean(self, node):
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in self.const(node.input[1], node)]
        if axes is None:
            axes = list(range(len(self.shape(node.input[0]))))
        self._mean(node, axes, _attr(node, "keepdims", 1))


def compile_float(model: onnx.ModelProto) -> bytes:
    """A float32 .tflite (bytes) of a canonical, shape-inferred ONNX model."""
    return _Compiler(model).run().serialize()


def prepare(model) -> onnx.ModelProto:
    """Read, canonicalise (ORT basic optimizations) and shape-infer an ONNX model or path."""
    from hwlat.ir import load_onnx

    return load_onnx(model)


def onnx_to_tflite(model, precision: str = "fp32", *, calibration_samples: int = 8, seed: int = 0) -> bytes:
    """Compile an ONNX model (path or ModelProto) to .tflite bytes at ``precision`` (fp32|int8)."""
    from hwlat.errors import HwlatError

    proto = prepare(model)
    flat = compile_float(proto)
    if precision == "fp32":
        return flat
    if precision == "int8":
        from hwlat.profilers.litert.quantize import quantize_int8

        return quantize_int8(flat, samples=calibration_samples, seed=seed)
    raise HwlatError(f"precision '{precision}' is not supported by the litert backend: use fp32 or int8")


from hwlat.profilers.litert.runner import check_against_onnxruntime  # noqa: E402,F401 - public here too
