"""Elementwise, activation and data-movement handlers of the ONNX -> TFLite compiler.

Mixed into :class:`converter._Compiler`; each ``op_<OnnxType>`` emits the TFLite builtins for one
node (or aliases its output when no runtime op is needed) and binds its outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from hwlat.errors import UnsupportedOpError
from hwlat.profilers.litert import layout as L
from hwlat.profilers.litert.layout import Val
from hwlat.profilers.litert.tflite_writer import FUSED_ACT

_BACKEND = "litert"
_INT_MAX = 2**62


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _bcast_const(c: np.ndarray, rank: int, perm) -> np.ndarray:
    """An ONNX-broadcast constant aligned to ``rank`` and put in the layout ``perm``."""
    c = np.asarray(c, np.float32)
    c = c.reshape((1,) * (rank - c.ndim) + c.shape)
    return np.ascontiguousarray(c.transpose(perm))


class OpsMixin:
    # -- elementwise -------------------------------------------------------------------------
    def _binary(self, node, code, a_name, b_name, const_fn=None, fuse=True):
        out_shape = self.shape(node.output[0])
        r = len(out_shape)
        ca, cb = a_name in self.consts, b_name in self.consts
        if ca and cb:
            raise UnsupportedOpError(f"{node.op_type} of two constants (not folded)", node.name, _BACKEND)
        acts = [n for n, c in ((a_name, ca), (b_name, cb)) if not c]
        vs = [self.val(n, node) for n in acts]
        for n, v in zip(acts, vs):
            if v.fperm is not None:
                raise UnsupportedOpError(f"{node.op_type} after a permuted Flatten", node.name, _BACKEND)
            if len(self.shape(n)) != r:
                raise UnsupportedOpError(f"{node.op_type} broadcasting a lower-rank activation", node.name, _BACKEND)
        perm = next((v.perm for v in vs if v.perm == L.preferred(r)), vs[0].perm)
        ins = []
        for n, c in ((a_name, ca), (b_name, cb)):
            if c:
                arr = self.consts[n] if const_fn is None else const_fn(self.consts[n])
                ins.append(self.g.const(_bcast_const(arr, r, perm), f"{node.name}_c"))
            else:
                ins.append(self.to_layout(self.val(n, node), perm, self.shape(n), node.name).t)
        act, out_name = self.fuse_act(node) if fuse else (None, node.output[0])
        y = self.new(out_name, perm, out_shape)
        opts = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}.get(code)
        options = self.g.options(opts, fusedActivationFunction=FUSED_ACT[act]) if opts else None
        self.g.op(code, ins, [y], options)
        nonneg = act in ("relu", "relu6") or (code in ("ADD", "MUL") and len(vs) == 2 and all(v.nonneg for v in vs))
        self.bind(out_name, Val(y, perm, nonneg=nonneg))
        return out_name

    def op_Add(self, node):
        self._binary(node, "ADD", node.input[0], node.input[1])

    def op_Mul(self, node):
        self._binary(node, "MUL", node.input[0], node.input[1])

    def op_Sub(self, node):
        if node.input[1] in self.consts:     # x - c == x + (-c): what the converter folds it to
            self._binary(node, "ADD", node.input[0], node.input[1], const_fn=lambda c: -c)
        else:
            self._binary(node, "SUB", node.input[0], node.input[1])

    def op_Div(self, node):
        if node.input[1] in self.consts:
            self._binary(node, "MUL", node.input[0], node.input[1], const_fn=lambda c: 1.0 / c)
        else:
            self._binary(node, "DIV", node.input[0], node.input[1])

    def op_BatchNormalization(self, node):
        # BN that ONNX Runtime could not fold into a Conv: y = x * scale + shift
        gamma, beta, mean, var = (self.const(n, node).astype(np.float64) for n in node.input[1:5])
        scale = gamma / np.sqrt(var + float(_attr(node, "epsilon", 1e-5)))
        shift = beta - mean * scale
        r = len(self.shape(node.input[0]))
        bshape = (-1,) + (1,) * (r - 2)
        x = self.val(node.input[0], node)
        t = self.new(node.output[0] + "_scaled", x.perm, self.shape(node.input[0]))
        self.g.op("MUL", [x.t, self.g.const(_bcast_const(scale.reshape(bshape), r, x.perm))], [t],
                  self.g.options("MulOptions"))
        act, out_name = self.fuse_act(node)
        y = self.new(out_name, x.perm, self.shape(node.output[0]))
        self.g.op("ADD", [t, self.g.const(_bcast_const(shift.reshape(bshape), r, x.perm))], [y],
                  self.g.options("AddOptions", fusedActivationFunction=FUSED_ACT[act]))
        self.bind(out_name, Val(y, x.perm, nonneg=act in ("relu", "relu6")))

    # -- activations -------------------------------------------------------------------------
    def _unary(self, node, code, options=None, nonneg=False):
        x = self.val(node.input[0], node)
        y = self.new(node.output[0], x.perm)
        self.g.op(code, [x.t], [y], options)
        self.bind(node.output[0], Val(y, x.perm, x.fperm, nonneg))

    def op_Relu(self, node):
        self._unary(node, "RELU", nonneg=True)

    def op_Sigmoid(self, node):
        self._unary(node, "LOGISTIC", nonneg=True)

    def op_Tanh(self, node):
        self._unary(node, "TANH")

    def op_HardSwish(self, node):
        self._unary(node, "HARD_SWISH")

    def op_LeakyRelu(self, node):
        self._unary(node, "LEAKY_RELU", self.g.options("LeakyReluOptions", alpha=float(_attr(node, "alpha", 0.01))))

    def op_Clip(self, node):
        lo, hi = self.clip_bounds(node)
        code = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, None): "RELU"}.get((lo, hi))
        if code:
            return self._unary(node, code, nonneg=code != "RELU_N1_TO_1")
        x = self.val(node.input[0], node)
        r = len(self.shape(node.input[0]))
        cur = x.t
        for bound, op_code in ((lo, "MAXIMUM"), (hi, "MINIMUM")):
            if bound is None:
                continue
            t = self.new(node.output[0] + "_" + op_code.lower(), x.perm, self.shape(node.output[0]))
            self.g.op(op_code, [cur, self.g.const(np.full((1,) * r, bound, np.float32))], [t])
            cur = t
        self.bind(node.output[0], Val(cur, x.perm, nonneg=lo is not None and lo >= 0))

    def _hardswish_mul(self, node):
        """The Mul of ``x * HardSigmoid(x)`` (what ONNX Runtime inlines HardSwish into), or None."""
        users = self.users.get(node.output[0], [])
        alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
        if (len(users) == 1 and users[0].op_type == "Mul" and node.output[0] not in self.graph_outputs
                and abs(alpha * 6 - 1) < 1e-6 and abs(beta - 0.5) < 1e-6
                and sorted(users[0].input) == sorted([node.input[0], node.output[0]])):
            return users[0]
        return None

    def op_HardSigmoid(self, node):
        mul = self._hardswish_mul(node)
        if mul is not None:
            self.done.add(id(mul))
            x = self.val(node.input[0], node)
            y = self.new(mul.output[0], x.perm)
            self.g.op("HARD_SWISH", [x.t], [y])
            return self.bind(mul.output[0], Val(y, x.perm))
        # clip(a*x + b, 0, 1) == relu6(6a*x + 6b) / 6: ADD(+6b, fused RELU6) then MUL(1/6), as
        # TensorFlow's hard_sigmoid converts; a MUL(6a) first when a != 1/6
        alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
        x = self.val(node.input[0], node)
        shape = self.shape(node.input[0])
        one = (1,) * len(shape)
        cur = x.t
        if abs(alpha * 6 - 1) > 1e-6:
            t = self.new(node.output[0] + "_scale", x.perm, shape)
            self.g.op("MUL", [cur, self.g.const(np.full(one, 6 * alpha, np.float32))], [t], self.g.options("MulOptions"))
            cur = t
        t = self.new(node.output[0] + "_relu6", x.perm, shape)
        self.g.op("ADD", [cur, self.g.const(np.full(one, 6 * beta, np.float32))], [t],
                  self.g.options("AddOptions", fusedActivationFunction=FUSED_ACT["relu6"]))
        y = self.new(node.output[0], x.perm)
        self.g.op("MUL", [t, self.g.const(np.full(one, 1 / 6, np.float32))], [y], self.g.options("MulOptions"))
        self.bind(node.output[0], Val(y, x.perm, nonneg=True))

    def op_Softmax(self, node):
        shape = self.shape(node.input[0])
        axis = int(_attr(node, "axis", -1)) % len(shape)
        x = self.val(node.input[0], node)
        if L.tfl_axis(x.perm, axis) != len(shape) - 1:
            perm = tuple([a for a in x.perm if a != axis] + [axis])
            x = self.to_layout(x, perm, shape, node.name)
        y = self.new(node.output[0], x.perm)
        self.g.op("SOFTMAX", [x.t], [y], self.g.options("SoftmaxOptions", beta=1.0))
        self.bind(node.output[0], Val(y, x.perm, nonneg=True))

    # -- aliases and constants ---------------------------------------------------------------
    def op_Identity(self, node):
        if node.input[0] in self.consts:
            self.consts[node.output[0]] = self.consts[node.input[0]]
        else:
            self.bind(node.output[0], self.val(node.input[0], node))

    def op_Dropout(self, node):
        self.op_Identity(node)

    def op_Constant(self, node):
        v = _attr(node, "value")
        if v is None:
            raise UnsupportedOpError("Constant without a tensor value", node.name, _BACKEND)
        self.consts[node.output[0]] = numpy_helper.to_array(v)

    # -- data movement -----------------------------------------------------------------------
    def _reshape(self, node, out_shape):
        in_name, out_name = node.input[0], node.output[0]
        if in_name in self.consts:
            self.consts[out_name] = self.consts[in_name].reshape(out_shape)
            return
        x = self.val(in_name, node)
        if x.fperm is not None:
            raise UnsupportedOpError(f"{node.op_type} after a permuted Flatten", node.name, _BACKEND)
        in_shape = self.shape(in_name)
        q = L.reshape_layout(in_shape, out_shape, x.perm)
        if q is None:
            users = self.users.get(out_name, [])
            if (len(out_shape) == 2 and users and out_name not in self.graph_outputs
                    and all(u.op_type in ("Gemm", "MatMul") and u.input[0] == out_name for u in users)):
                idx = L.feature_permutation(in_shape, out_shape, x.perm)
                if idx is not None:     # the FULLY_CONNECTED permutes its weights instead
                    y = self.g.tensor(out_shape, np.float32, out_name)
                    self.g.op("RESHAPE", [x.t, self.g.const(np.array(out_shape, np.int32))], [y])
                    return self.bind(out_name, Val(y, (0, 1), fperm=idx, nonneg=x.nonneg))
            x = self.to_layout(x, L.identity(len(in_shape)), in_shape, node.name)
            q = L.identity(len(out_shape))
        tshape = L.permute_shape(out_shape, q)
        y = self.g.tensor(tshape, np.float32, out_name)
        self.g.op("RESHAPE", [x.t, self.g.const(np.array(tshape, np.int32))], [y])
        self.bind(out_name, Val(y, q, nonneg=x.nonneg))

    def op_Reshape(self, node):
        self._reshape(node, self.shape(node.output[0]))

    def op_Flatten(self, node):
        self._reshape(node, self.shape(node.output[0]))

    def op_Squeeze(self, node):
        self._reshape(node, self.shape(node.output[0]))

    def op_Unsqueeze(self, node):
        self._reshape(node, self.shape(node.output[0]))

    def op_Transpose(self, node):
        shape = self.shape(node.input[0])
        p = list(_attr(node, "perm", list(range(len(shape)))[::-1]))
        if node.input[0] in self.consts:
            self.consts[node.output[0]] = self.consts[node.input[0]].transpose(p)
            return
        x = self.val(node.input[0], node)
        inv_p = list(np.argsort(p))
        free = tuple(int(inv_p[a]) for a in x.perm)      # the layout in which no op is needed
        if free == L.preferred(len(p)) or free == x.perm:
            return self.bind(node.output[0], Val(x.t, free, nonneg=x.nonneg))
        q = x.perm
        t = tuple(x.perm.index(p[q[i]]) for i in range(len(q)))
        y = self.new(node.output[0], q)
        self.g.op("TRANSPOSE", [x.t, self.g.const(np.array(t, np.int32))], [y])
        self.bind(node.output[0], Val(y, q, nonneg=x.nonneg))

    def op_Concat(self, node):
        out_shape = self.shape(node.output[0])
        r = len(out_shape)
        axis = int(_attr(node, "axis")) % r
        names = [n for n in node.input if n]
        acts = [self.val(n, node) for n in names if n not in self.consts]
        perm = next((v.perm for v in acts if v.perm == L.preferred(r)), acts[0].perm if acts else L.identity(r))
        ins = []
        for n in names:
            if n in self.consts:
                ins.append(self.g.const(np.ascontiguousarray(self.consts[n].astype(np.float32).transpose(perm))))
            else:
                ins.append(self.to_layout(self.val(n, node), perm, self.shape(n), node.name).t)
        y = self.new(node.output[0], perm)
        self.g.op("CONCATENATION", ins, [y], self.g.options("ConcatenationOptions", axis=L.tfl_axis(perm, axis)))
        self.bind(node.output[0], Val(y, perm, nonneg=all(v.nonneg for v in acts)))

    def op_Split(self, node):
        shape = self.shape(node.input[0])
        axis = int(_attr(node, "axis", 0)) % len(shape)
        x = self.val(node.input[0], node)
        outs = list(node.output)
        sizes = [self.shape(o)[axis] for o in outs]
        ax = self.g.const(np.array(L.tfl_axis(x.perm, axis), np.int32))
        ys = [self.new(o, x.perm) for o in outs]
        if len(set(sizes)) == 1:
            self.g.op("SPLIT", [ax, x.t], ys, self.g.options("SplitOptions", numSplits=len(outs)))
        else:
            self.g.op("SPLIT_V", [x.t, self.g.const(np.array(sizes, np.int32)), ax], ys,
                      self.g.options("SplitVOptions", numSplits=len(outs)))
        for o, y in zip(outs, ys):
            self.bind(o, Val(y, x.perm, nonneg=x.nonneg))

    def op_Slice(self, node):
        shape = self.shape(node.input[0])
        r = len(shape)
        starts = [int(v) for v in self.const(node.input[1], node)]
        ends = [int(v) for v in self.const(node.input[2], node)]
        axes = ([int(v) % r for v in self.const(node.input[3], node)] if len(node.input) > 3 and node.input[3]
                else list(range(len(starts))))
        steps = ([int(v) for v in self.const(node.input[4], node)] if len(node.input) > 4 and node.input[4]
                 else [1] * len(starts))
        begin, end, stride = [0] * r, list(shape), [1] * r
        for a, s, e, st in zip(axes, starts, ends, steps):
            if st <= 0:
                raise UnsupportedOpError("Slice with a negative step", node.name, _BACKEND)
            n = shape[a]
            s = min(max(s + n if s < 0 else s, 0), n)
            e = min(max(e + n if e < 0 else e, 0), n)
            begin[a], end[a], stride[a] = s, e, st
        x = self.val(node.input[0], node)
        y = self.new(node.output[0], x.perm)
        pb = np.array([begin[p] for p in x.perm], np.int32)
        if all(st == 1 for st in stride):
            size = np.array([end[p] - begin[p] for p in x.perm], np.int32)
            self.g.op("SLICE", [x.t, self.g.const(pb), self.g.const(size)], [y])
        else:
            self.g.op("STRIDED_SLICE", [x.t, self.g.const(pb), self.g.const(np.array([end[p] for p in x.perm], np.int32)),
                                        self.g.const(np.array([stride[p] for p in x.perm], np.int32))], [y],
                      self.g.options("StridedSliceOptions"))
        self.bind(node.output[0], Val(y, x.perm, nonneg=x.nonneg))

    def op_Pad(self, node):
        shape = self.shape(node.input[0])
        r = len(shape)
        mode = _attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = ([int(v) for v in self.const(node.input[1], node)] if len(node.input) > 1 and node.input[1]
                else list(_attr(node, "pads")))
        if len(node.input) > 3 and node.input[3]:
            raise UnsupportedOpError("Pad with axes", node.name, _BACKEND)
        value = float(self.const(node.input[2], node)) if len(node.input) > 2 and node.input[2] else 0.0
        if min(pads) < 0:
            raise UnsupportedOpError("Pad with negative pads (cropping)", node.name, _BACKEND)
        x = self.val(node.input[0], node)
        paddings = self.g.const(np.array([[pads[p], pads[p + r]] for p in x.perm], np.int32))
        y = self.new(node.output[0], x.perm)
        if mode == "reflect":
            self.g.op("MIRROR_PAD", [x.t, paddings], [y], self.g.options("MirrorPadOptions", mode=0))
        elif mode != "constant":
            raise UnsupportedOpError(f"Pad(mode={mode})", node.name, _BACKEND)
        elif value == 0.0:
            self.g.op("PAD", [x.t, paddings], [y])
        else:
            self.g.op("PADV2", [x.t, paddings, self.g.const(np.array([value], np.float32))], [y])
        self.bind(node.output[0], Val(y, x.perm, nonneg=x.nonneg and value >= 0))
