"""The neutral model IR: ONNX (path or ModelProto) or torch in, fused kernels out.

1. ``load_onnx`` reads and checks the model, fixes the input shape when given, and canonicalises
   it with ONNX Runtime's *basic* optimizations (constant folding, BatchNorm folded into Conv,
   Identity/Dropout removed): every runtime does these, so they are not fusion decisions.
2. ``graph_ops`` maps ONNX nodes to neutral ops (``conv``, ``relu``, ``hswish``, ``add``, ...),
   recognising ``x*sigmoid(x)`` (SiLU) and ``x*hardsigmoid(x)`` (hard-swish).
3. ``detect_kernels`` groups squeeze-excite blocks and channel shuffles, then grows op chains by
   the backend's fusion rules (:mod:`hwlat.fusion`). Every node ends up in exactly one kernel; an
   op no kernel type covers is an :class:`~hwlat.errors.UnsupportedOpError`.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from hwlat.errors import BadModelError, HwlatError, UnsupportedOpError
from hwlat.fusion import FusionRules
from hwlat.kernels import Kernel, pad_attr

ACTIVATIONS = {"relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "tanh", "leakyrelu", "clip"}
# ops that only compute shapes; folded away by canonicalisation in static graphs
_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Cast", "Constant", "ConstantOfShape", "Range"}


@dataclass
class Op:
    """One node of the canonical graph as a neutral op."""

    name: str
    op: str                          # neutral name
    inputs: list[str]                # activation tensors (initializers excluded)
    output: str
    attrs: dict = field(default_factory=dict)
    onnx_type: str = ""
    absorbed: list[str] = field(default_factory=list)   # nodes merged into it (e.g. HardSigmoid of hswish)


@dataclass
class KernelInstance:
    kernel: Kernel
    nodes: list[str]


@dataclass
class ModelKernels:
    name: str
    kernels: list[KernelInstance]
    input_shape: tuple

    @property
    def keys(self) -> list[str]:
        return [k.kernel.key for k in self.kernels]


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def torch_to_onnx(module, input_shape, path: str | os.PathLike | None = None) -> onnx.ModelProto:
    """Export a torch.nn.Module with static shapes (legacy exporter: plain ONNX ops)."""
    import torch

    if input_shape is None:
        raise BadModelError("a torch module needs input_shape=(N, C, H, W) to be exported")
    module = module.eval()
    buf = io.BytesIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # export runs a forward pass; more threads only fight the other core
    try:
        with torch.no_grad():
            torch.onnx.export(module, (torch.randn(*input_shape),), buf, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"], do_constant_folding=True)
    finally:
        torch.set_num_threads(threads)
    model = onnx.load_from_string(buf.getvalue())
    if path is not None:
        onnx.save(model, str(path))
    return model


def read_onnx(model) -> onnx.ModelProto:
    """A ModelProto from a path or a ModelProto; corrupt or non-ONNX input is a BadModelError."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise BadModelError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises various types for garbage
        raise BadModelError(f"{path} is not a readable ONNX model ({type(e).__name__}); export it again "
                            f"with torch.onnx.export or check the file") from None
    if not proto.graph.node:
        raise BadModelError(f"{path} is not a usable ONNX model: its graph has no nodes")
    return proto


def _graph_inputs(model: onnx.ModelProto):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _fix_input_shape(model: onnx.ModelProto, input_shape) -> onnx.ModelProto:
    inputs = _graph_inputs(model)
    if input_shape is not None:
        if len(inputs) != 1:
            raise BadModelError("input_shape can only be given for a model with exactly one input")
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) != len(input_shape):
            raise BadModelError(f"input_shape {tuple(input_shape)} has rank {len(input_shape)}, but the "
                                f"model input '{inputs[0].name}' has rank {len(dims)}")
        for d, v in zip(dims, input_shape):
            d.ClearField("dim_param")
            d.dim_value = int(v)
    for inp in inputs:
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                raise BadModelError(
                    f"model input '{inp.name}' has a dynamic dimension "
                    f"('{d.dim_param or '?'}'): give a static input shape (--input-shape 1,3,224,224)")
    return model


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime basic-level optimizations, saved back as plain ONNX."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "canonical.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = out
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise BadModelError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:300]}") from None
        return onnx.load(out)


def load_onnx(model, input_shape=None, *, canonical: bool = True) -> onnx.ModelProto:
    """Read, check, fix the input shape, canonicalise and shape-infer a model (ONNX or torch)."""
    if _is_torch_module(model):
        model = torch_to_onnx(model, input_shape)
        input_shape = None
    proto = onnx.ModelProto()
    proto.CopyFrom(read_onnx(model))
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001
        raise BadModelError(f"invalid ONNX model: {str(e).splitlines()[0][:300]}") from None
    proto = _fix_input_shape(proto, input_shape)
    if canonical:
        proto = canonicalize(proto)
    try:
        proto = shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise BadModelError(f"shape inference failed: {str(e).splitlines()[0][:300]}") from None
    if canonical:
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                            "hwlat.canonical": "1"})
    return proto


def _is_torch_module(obj) -> bool:
    mod = type(obj).__module__ or ""
    if not (mod.startswith("torch") or hasattr(obj, "forward")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


# ---------------------------------------------------------------------------------------------
# neutral graph
# ---------------------------------------------------------------------------------------------
class Graph:
    """Shapes, producers and consumers of a canonical, shape-inferred ONNX graph."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.model = model
        self.inits = {i.name: i for i in g.initializer}
        self.shapes: dict[str, tuple] = {}
        self.dtypes: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            self.dtypes[vi.name] = tt.elem_type
        for name, init in self.inits.items():
            self.shapes[name] = tuple(init.dims)
        self.nodes = list(g.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}

    def is_const(self, name: str) -> bool:
        if name in self.inits:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant"

    def const_value(self, name: str):
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def shape(self, name: str) -> tuple:
        s = self.shapes.get(name)
        if s is None or any(d <= 0 for d in s):
            raise BadModelError(f"tensor '{name}' has no static shape after shape inference; give a static "
                                f"input shape")
        return s

    def act_inputs(self, node) -> list[str]:
        return [i for i in node.input if i and not self.is_const(i) and self.dtypes.get(i, 1) in (1, 10, 11, 16)]


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _str_attr(node, name, default: str) -> str:
    """A string attribute (ONNX stores them as bytes)."""
    v = _attr(node, name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _clip_bounds(g: Graph, node) -> tuple[float | None, float | None]:
    lo, hi = _attr(node, "min"), _attr(node, "max")
    if len(node.input) > 1 and node.input[1]:
        v = g.const_value(node.input[1])
        lo = None if v is None else float(v)
    if len(node.input) > 2 and node.input[2]:
        v = g.const_value(node.input[2])
        hi = None if v is None else float(v)
    return lo, hi


_SIMPLE = {
    "Relu": "relu", "HardSwish": "hswish", "HardSigmoid": "hsigmoid", "Sigmoid": "sigmoid",
    "Tanh": "tanh", "LeakyRelu": "leakyrelu", "GlobalAveragePool": "gap", "MaxPool": "maxpool",
    "AveragePool": "avgpool", "Concat": "concat", "Transpose": "transpose", "Split": "split",
    "Slice": "slice", "Pad": "pad", "Softmax": "softmax", "Flatten": "reshape", "Reshape": "reshape",
    "Squeeze": "reshape", "Unsqueeze": "reshape", "Gemm": "gemm", "MatMul": "gemm", "Conv": "conv",
    "GlobalMaxPool": "gmp", "BatchNormalization": "bn",
}


# Operators that run as kernels of their own (no runtime's fusion rules here absorb them into a
# convolution or GEMM): each gets a kernel type named after it, built and measured like any other
# (``hwlat.kernel_onnx``), so ``hwlat profile --models`` measures them in a user's models and the
# regressors estimate the ones a device never measured. Their costs differ too much to price one
# as another (measured on ONNX Runtime, one thread: a bilinear Resize to 112x112x64 1.18 ms, a
# PRelu on 112x112x32 0.72 ms, a channel ReduceMax at 56x56x64 0.11 ms; a multiply by a constant
# of the same sizes 0.10, 0.10 and 0.03 ms). A transposed convolution (``convt``) keeps its kernel
# size, stride and groups; the output shape gives the rest.
UNARY_OPS = ("Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Softplus", "Softsign", "Elu", "Selu",
             "Celu", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign")
BINARY_OPS = ("Max", "Min")
REDUCE_OPS = ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSumExp", "ReduceSumSquare")
RESIZE_MODES = ("nearest", "linear", "cubic")     # the ``r`` attribute of a resize kernel


def _own_kernel(g: Graph, n, ins: list) -> tuple[str, dict] | None:
    """(kernel op, attributes) for the operators listed above, None for any other."""
    t = n.op_type
    if t in UNARY_OPS:
        return t.lower(), {}
    if t in BINARY_OPS and len(ins) >= 2:
        return t.lower(), {}
    if t == "Pow" and len(ins) == 1:       # x ** c (GELU's tanh form, decomposed norms)
        return "pow", {}
    if t == "PRelu":
        return "prelu", {}
    if t in REDUCE_OPS:
        return t.lower(), {}
    if t == "InstanceNormalization":
        return "instnorm", {}
    if t == "LayerNormalization":
        return "layernorm", {}
    if t == "ConvTranspose":
        ks = _attr(n, "kernel_shape") or list(g.shape(n.input[1])[2:])
        attrs = {"k": int(ks[0]), "s": int((_attr(n, "strides") or [1])[0]), "g": int(_attr(n, "group", 1))}
        if len(ks) > 1 and ks[1] != ks[0]:
            attrs["kw"] = int(ks[1])
        return "convt", attrs
    if t in ("DepthToSpace", "SpaceToDepth"):      # PixelShuffle / space-to-depth stems
        crd = _str_attr(n, "mode", "DCR") == "CRD"
        return t.lower(), {"s": int(_attr(n, "blocksize", 2)), **({"r": 1} if crd else {})}
    if t in ("Resize", "Upsample"):
        mode = _str_attr(n, "mode", "nearest")
        return "resize", {"r": RESIZE_MODES.index(mode) if mode in RESIZE_MODES else 1}
    return None


def graph_ops(g: Graph) -> list[Op]:
    """Neutral ops in topological order; raises UnsupportedOpError for anything unknown."""
    ops: list[Op] = []
    skip: set[str] = set()
    for n in g.nodes:
        if n.name in skip:
            continue
        name = n.name or n.output[0]
        t = n.op_type
        if t in ("Identity", "Dropout"):
            raise HwlatError(f"node '{name}' ({t}) survived canonicalisation; this is a bug")
        if t in _SHAPE_OPS and all(g.dtypes.get(o, 7) == 7 for o in n.output):
            continue  # shape arithmetic on int64 tensors: no kernel
        if t == "Constant":
            continue
        ins = g.act_inputs(n)
        out = n.output[0]
        attrs: dict = {}
        if t == "Conv":
            ks = _attr(n, "kernel_shape") or list(g.shape(n.input[1])[2:])
            attrs = {"k": int(ks[0]), "s": int((_attr(n, "strides") or [1])[0]), "g": int(_attr(n, "group", 1)),
                     "d": int((_attr(n, "dilations") or [1])[0])}
            if len(ks) > 1 and ks[1] != ks[0]:
                attrs["kw"] = int(ks[1])
            _pad_attr(g, n, attrs)
            op = "conv"
        elif t == "Clip":
            lo, hi = _clip_bounds(g, n)
            op = "relu6" if (lo == 0 and hi == 6) else ("relu" if lo == 0 and hi is None else "clip")
        elif t in ("MaxPool", "AveragePool"):
            ks = _attr(n, "kernel_shape")
            attrs = {"k": int(ks[0]), "s": int((_attr(n, "strides") or [1])[0])}
            _pad_attr(g, n, attrs)
            op = _SIMPLE[t]
        elif t == "Mul":
            op = _mul_kind(g, n, ins)
            if op in ("hswish", "silu"):
                gate = next(g.producer[i] for i in n.input if g.producer.get(i) is not None and
                            g.producer[i].op_type in ("HardSigmoid", "Sigmoid") and g.producer[i].input[0] in n.input)
                # drop the already-emitted gate op and take the mul in its place
                ops = [o for o in ops if o.name != (gate.name or gate.output[0])]
                ins = [gate.input[0]]
                attrs = {}
        elif t in ("Add", "Sum"):
            op = "add" if len(ins) >= 2 else "addc"
        elif t in ("Sub", "Div"):
            op = "addc" if len(ins) == 1 else "mul"
        elif t == "MatMul" and len(ins) >= 2:
            op = "matmul"       # two activations (attention's Q K^T and A V): no weights
        elif t in _SIMPLE:
            op = _SIMPLE[t]
        elif t == "ReduceMean" and _spatial_mean(g, n):
            op = "gap"
        elif (own := _own_kernel(g, n, ins)) is not None:
            op, attrs = own
        else:
            raise UnsupportedOpError(t, name)
        if not ins and op not in ("conv", "gemm", "convt"):
            continue  # a constant subgraph left over: runs once at load
        ops.append(Op(name, op, ins, out, attrs, t))
    return ops


def _spatial_mean(g: Graph, n) -> bool:
    """A ReduceMean over H and W of an NCHW tensor: global average pooling."""
    axes = _attr(n, "axes")
    if axes is None and len(n.input) > 1:
        v = g.const_value(n.input[1])
        axes = None if v is None else [int(a) for a in np.atleast_1d(v)]
    rank = len(g.shape(n.input[0]))
    return rank == 4 and sorted(a % rank for a in (axes or [])) == [2, 3]


def _pad_attr(g: Graph, n, attrs: dict) -> None:
    """Record the model's padding (``p``) where it is not the "same" padding a kernel built from the
    key would get (see :func:`hwlat.kernels.pad_attr`)."""
    auto = _str_attr(n, "auto_pad", "NOTSET")
    pads = _attr(n, "pads")
    if auto != "NOTSET" or not pads or len(pads) != 4:
        return
    hin, hout = g.shape(n.input[0])[2], g.shape(n.output[0])[2]
    p = pad_attr(hin, hout, attrs["k"], attrs["s"], attrs.get("d", 1), int(pads[0]) + int(pads[2]))
    if p is not None:
        attrs["p"] = p


def _mul_kind(g: Graph, n, ins) -> str:
    if len(ins) < 2:
        return "mulc"
    a, b = n.input[0], n.input[1]
    for x, y in ((a, b), (b, a)):
        p = g.producer.get(y)
        if p is not None and p.input and p.input[0] == x and len(g.consumers.get(y, [])) == 1:
            if p.op_type == "Sigmoid":
                return "silu"
            if p.op_type == "HardSigmoid" and abs(_attr(p, "alpha", 0.2) - 1 / 6) < 1e-3:
                return "hswish"
    return "mul"


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
def _hwc(shape: tuple) -> tuple:
    """Drop batch; NCHW -> HWC; (N, C) -> (C,)."""
    s = tuple(int(d) for d in shape[1:])
    if len(s) == 3:
        return (s[1], s[2], s[0])
    return s


def _batch(shape: tuple) -> int:
    return int(shape[0]) if shape else 1


def detect_kernels(model, rules: FusionRules, *, input_shape=None, name: str = "model") -> ModelKernels:
    """Split a model into the kernels a backend with ``rules`` really runs."""
    proto = model if isinstance(model, onnx.ModelProto) and _is_canonical(model) else load_onnx(model, input_shape)
    g = Graph(proto)
    ops = graph_ops(g)
    by_out = {o.output: o for o in ops}
    users: dict[str, list[Op]] = {}
    for o in ops:
        for i in o.inputs:
            users.setdefault(i, []).append(o)
    assigned: set[str] = set()
    kernels: list[KernelInstance] = []

    def mk(op_chain, inputs, out_tensor, attrs, members):
        out_shape = g.shape(out_tensor)
        attrs = dict(attrs)
        b = _batch(out_shape)
        if b != 1:
            attrs["b"] = b
        attrs = {k: v for k, v in attrs.items() if not (k == "d" and v == 1)}
        hwc = _hwc
        if op_chain.split("-")[0] in ("conv", "convt") and len(out_shape) == 3:
            # a 1-D convolution over (N, C, L) is the 2-D one over a 1 x L image with a 1 x k kernel
            hwc = lambda s: (1, int(s[2]), int(s[1])) if len(s) == 3 else _hwc(s)  # noqa: E731
            attrs["kw"], attrs["k"] = attrs.get("k", 1), 1
        kern = Kernel(op_chain, tuple(hwc(g.shape(i)) for i in inputs), hwc(out_shape), tuple(attrs.items()))
        kernels.append(KernelInstance(kern, [m.name for m in members]))
        assigned.update(m.name for m in members)

    groups = _find_groups(g, ops, by_out, users, rules)
    group_of = {m.name: grp for grp in groups for m in grp["members"]}
    emitted_groups: set[int] = set()

    for o in ops:
        if o.name in assigned:
            continue
        grp = group_of.get(o.name)
        if grp is not None:
            if id(grp) not in emitted_groups:
                emitted_groups.add(id(grp))
                mk(grp["op"], grp["inputs"], grp["output"], grp["attrs"], grp["members"])
            continue
        chain, members, inputs, cur = o.op, [o], list(o.inputs), o
        while True:
            nxt = users.get(cur.output, [])
            if len(nxt) != 1 or cur.output in g.outputs:
                break
            n2 = nxt[0]
            extra = [i for i in n2.inputs if i != cur.output]
            src = by_out[extra[0]].op if len(extra) == 1 and extra[0] in by_out else None
            if n2.name in assigned or n2.name in group_of or not rules.absorbs(chain, n2.op, src):
                break
            if n2.op == "add" and len(extra) != 1:
                break
            chain = f"{chain}-{n2.op}"
            members.append(n2)
            inputs += extra
            cur = n2
        attrs = dict(o.attrs)
        if o.op == "split":
            attrs["n"] = len(g.producer[o.output].output) if o.output in g.producer else 1
        mk(chain, inputs, cur.output, attrs, members)
    in_shape = g.shape(_graph_inputs(proto)[0].name)
    return ModelKernels(name, kernels, tuple(in_shape))


def _is_canonical(model: onnx.ModelProto) -> bool:
    return any(p.key == "hwlat.canonical" for p in model.metadata_props)


def _find_groups(g: Graph, ops, by_out, users, rules) -> list[dict]:
    groups: list[dict] = []
    if "se" in rules.groups:
        for o in ops:
            if o.op != "mul" or len(o.inputs) != 2:
                continue
            for x, gate in ((o.inputs[0], o.inputs[1]), (o.inputs[1], o.inputs[0])):
                members = _se_members(g, by_out, x, gate)
                if members:
                    convs = [m for m in members if m.op == "conv"]
                    acts = [m.op for m in members if m.op in ACTIVATIONS]
                    mid = g.shape(convs[0].output)[1] if convs else 1
                    op = "se-" + "-".join(acts) if acts else "se"
                    groups.append({"op": op, "inputs": [x], "output": o.output, "attrs": {"m": mid},
                                   "members": members + [o]})
                    break
    if "shuffle" in rules.groups:
        for o in ops:
            if o.op != "transpose" or len(g.shape(o.output)) != 5:
                continue
            pre = by_out.get(o.inputs[0]) if o.inputs else None
            post = users.get(o.output, [])
            if pre is None or pre.op != "reshape" or len(post) != 1 or post[0].op != "reshape":
                continue
            groups_n = g.shape(o.inputs[0])[1]
            grp = {"op": "shuffle", "inputs": [pre.inputs[0]], "output": post[0].output,
                   "attrs": {"g": int(groups_n)}, "members": [pre, o, post[0]]}
            if "catshuffle" in rules.groups:
                _widen_shuffle(g, grp, by_out, users)
            groups.append(grp)
    return groups


def _widen_shuffle(g: Graph, grp: dict, by_out, users) -> None:
    """TVM's Relax fuses injective chains: the concat before a channel shuffle and the split after
    it run in the same TIR function (``fused_concatenate_reshape_transpose_reshape_split``), so they
    are one kernel there: ``concat-shuffle[-split]``, inputs the concat's, output the shuffled
    tensor, ``n`` the split's output count."""
    cat = by_out.get(grp["inputs"][0])
    if cat is None or cat.op != "concat" or len(users.get(cat.output, [])) != 1 or cat.output in g.outputs:
        return
    grp["op"], grp["inputs"], grp["members"] = "concat-shuffle", list(cat.inputs), [cat] + grp["members"]
    post = users.get(grp["output"], [])
    if len(post) == 1 and post[0].op == "split" and grp["output"] not in g.outputs:
        sp = g.producer.get(post[0].output)
        grp["op"] += "-split"
        grp["attrs"]["n"] = len(sp.output) if sp is not None else 2
        grp["members"].append(post[0])


def _se_members(g: Graph, by_out, x: str, gate: str) -> list[Op] | None:
    """Ops computing ``gate`` from ``x`` through a global pool on 1x1 tensors, or None."""
    members: list[Op] = []
    stack, seen = [gate], set()
    found_pool = False
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        op = by_out.get(t)
        if op is None:
            return None
        shp = g.shapes.get(t, ())
        if len(shp) != 4 or shp[2] != 1 or shp[3] != 1:
            return None
        members.append(op)
        if op.op == "gap":
            if op.inputs != [x]:
                return None
            found_pool = True
            continue
        if op.op not in ("conv", "gemm") and op.op not in ACTIVATIONS and op.op not in ("addc", "mulc"):
            return None
        stack.extend(op.inputs)
    if not found_pool:
        return None
    order = {id(o): i for i, o in enumerate(by_out.values())}
    return sorted(members, key=lambda m: order.get(id(m), 0))


def model_kernels(model, rules: FusionRules, *, input_shape=None, name: str | None = None) -> ModelKernels:
    """Convenience: kernels of a path, ModelProto or torch module."""
    if name is None:
        name = Path(model).stem if isinstance(model, (str, os.PathLike)) else getattr(model, "name", None) or \
            type(model).__name__
    return detect_kernels(model, rules, input_shape=input_shape, name=name)


def with_input_shape(proto: onnx.ModelProto, input_shape) -> onnx.ModelProto:
    """The same canonical graph at another static input shape (e.g. another resolution)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    _fix_input_shape(m, input_shape)
    return shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
