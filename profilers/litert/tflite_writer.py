"""Write ``.tflite`` flatbuffers directly with the schema that ai-edge-litert ships.

A :class:`TFLiteGraph` collects tensors (constants carry their data), operators and graph
inputs/outputs, then packs them through the schema's object API (``ModelT`` ... ``Pack``). Only
float32 graphs are written here; int8 models come from the official post-training quantizer
(:mod:`.quantize`), which rewrites a float graph exactly as the TFLite converter does.
"""

from __future__ import annotations

import json

import numpy as np

from hwlat.errors import HwlatError

# ONNX-ish activation names -> TFLite ActivationFunctionType values (schema enum)
FUSED_ACT = {None: 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3, "tanh": 4}

PAD_SAME, PAD_VALID = 0, 1

_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 2,
           np.dtype(np.uint8): 3, np.dtype(np.int64): 4, np.dtype(np.int8): 9}

METADATA_NAME = "hwlat_io"


def _schema():
    from ai_edge_litert import schema_py_generated as fb  # lazy: heavy optional dependency
    return fb


class TFLiteGraph:
    """One-subgraph TFLite model under construction (NHWC tensors, int32 shapes)."""

    def __init__(self, name: str = "main"):
        self.fb = _schema()
        self.name = name
        self.tensors: list = []
        self.shapes: list[tuple[int, ...]] = []
        self.buffers: list = [self.fb.BufferT()]        # buffer 0: the empty sentinel
        self.opcodes: dict[int, int] = {}
        self.codes: list = []
        self.operators: list = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.metadata: dict[str, bytes] = {}
        self._names: set[str] = set()

    # -- tensors -------------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        base, i = name or "t", 0
        while name in self._names or not name:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def tensor(self, shape, dtype=np.float32, name: str = "", data: np.ndarray | None = None) -> int:
        fb = self.fb
        t = fb.TensorT()
        t.shape = np.asarray([int(d) for d in shape], dtype=np.int32)
        dt = np.dtype(dtype)
        if dt not in _DTYPES:
            raise HwlatError(f"tensor dtype {dt} cannot be written to .tflite")
        t.type = _DTYPES[dt]
        t.name = self._unique(name)
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data, dtype=dt).reshape(tuple(int(d) for d in shape)))
            b = fb.BufferT()
            b.data = np.frombuffer(arr.tobytes(), dtype=np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        self.shapes.append(tuple(int(d) for d in shape))
        return len(self.tensors) - 1

    def const(self, data, name: str = "const", dtype=None) -> int:
        arr = np.asarray(data, dtype=dtype) if dtype is not None else np.asarray(data)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if arr.dtype == np.int64:
            arr = arr.astype(np.int32)
        return self.tensor(arr.shape, arr.dtype, name, data=arr)

    def shape(self, t: int) -> tuple[int, ...]:
        return self.shapes[t]

    # -- operators -----------------------------------------------------------------------
    def op(self, code: str, inputs: list[int], outputs: list[int], options: tuple | None = None,
           version: int = 1) -> None:
        fb = self.fb
        c = getattr(fb.BuiltinOperator, code)
        if c not in self.opcodes:
            oc = fb.OperatorCodeT()
            oc.builtinCode = c
            oc.deprecatedBuiltinCode = min(c, 127)   # 127 = PLACEHOLDER_FOR_GREATER_OP_CODES
            oc.version = version
            self.opcodes[c] = len(self.codes)
            self.codes.append(oc)
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes[c]
        o.inputs = np.asarray(inputs, dtype=np.int32)
        o.outputs = np.asarray(outputs, dtype=np.int32)
        if options is not None:
            kind, obj = options
            o.builtinOptionsType = getattr(fb.BuiltinOptions, kind)
            o.builtinOptions = obj
        self.operators.append(o)

    def options(self, kind: str, **fields) -> tuple:
        """``options("Conv2DOptions", strideW=1, ...)`` -> (union name, filled OptionsT)."""
        obj = getattr(self.fb, kind + "T")()
        for k, v in fields.items():
            if not hasattr(obj, k):
                raise AttributeError(f"{kind} has no field {k}")
            setattr(obj, k, v)
        return kind, obj

    # -- output --------------------------------------------------------------------------
    def set_io(self, inputs: list[int], outputs: list[int]) -> None:
        self.inputs, self.outputs = list(inputs), list(outputs)

    def add_metadata(self, name: str, payload: dict) -> None:
        self.metadata[name] = json.dumps(payload, sort_keys=True).encode()

    def serialize(self) -> bytes:
        import flatbuffers

        fb = self.fb
        sg = fb.SubGraphT()
        sg.tensors, sg.operators, sg.name = self.tensors, self.operators, self.name
        sg.inputs = np.asarray(self.inputs, dtype=np.int32)
        sg.outputs = np.asarray(self.outputs, dtype=np.int32)
        m = fb.ModelT()
        m.version = 3
        m.operatorCodes = self.codes
        m.subgraphs = [sg]
        m.description = "hwlat"
        buffers = list(self.buffers)
        metas = []
        for name, payload in self.metadata.items():
            b = fb.BufferT()
            b.data = np.frombuffer(payload, dtype=np.uint8)
            buffers.append(b)
            md = fb.MetadataT()
            md.name, md.buffer = name, len(buffers) - 1
            metas.append(md)
        m.buffers = buffers
        m.metadata = metas or None
        builder = flatbuffers.Builder(1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def add_metadata(model_bytes: bytes, name: str, payload: dict) -> bytes:
    """The model with one more JSON metadata entry (an existing entry of that name is replaced)."""
    import flatbuffers

    fb = _schema()
    m = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    b = fb.BufferT()
    b.data = np.frombuffer(json.dumps(payload, sort_keys=True).encode(), dtype=np.uint8)
    m.buffers.append(b)
    md = fb.MetadataT()
    md.name, md.buffer = name, len(m.buffers) - 1
    m.metadata = [x for x in (m.metadata or []) if (x.name.decode() if isinstance(x.name, bytes) else x.name) != name]
    m.metadata.append(md)
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(model_bytes: bytes, name: str = METADATA_NAME) -> dict | None:
    """The JSON metadata entry ``name`` of a .tflite model, or None."""
    fb = _schema()
    m = fb.Model.GetRootAs(model_bytes, 0)
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if md.Name() is not None and md.Name().decode() == name:
            buf = m.Buffers(md.Buffer())
            data = buf.DataAsNumpy()
            if isinstance(data, np.ndarray):
                return json.loads(data.tobytes().decode())
    return None


def op_names(model_bytes: bytes) -> list[str]:
    """Builtin operator names of the first subgraph, in execution order (for tests and reports)."""
    fb = _schema()
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    m = fb.Model.GetRootAs(model_bytes, 0)
    g = m.Subgraphs(0)
    out = []
    for i in range(g.OperatorsLength()):
        oc = m.OperatorCodes(g.Operators(i).OpcodeIndex())
        out.append(names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?"))
    return out
