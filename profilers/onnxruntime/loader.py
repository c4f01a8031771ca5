"""Builder and backend class for ONNX Runtime (CPUExecutionProvider)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import onnx

from hwlat.device import DeviceConfig
from hwlat.profilers.base import Backend, BackendInfo, BuildInput, BuildResult, Builder
from hwlat.profilers.onnxruntime.runner import SINK, SOURCE, is_aux


def _identity_dw(x: str, out: str, channels: int, name: str, g) -> onnx.NodeProto:
    import numpy as np

    w = onnx.numpy_helper.from_array(np.ones((channels, 1, 1, 1), np.float32), f"{name}_w")
    g.initializer.append(w)
    return onnx.helper.make_node("Conv", [x, w.name], [out], name=name, group=channels, kernel_shape=[1, 1])


def with_sink(model: onnx.ModelProto) -> onnx.ModelProto:
    """The kernel followed by an identity 1x1 depthwise conv, so that its last op does not produce
    a graph output.

    ORT leaves a fusion undone when the fused node's output is a graph output: a lone
    Conv->HardSwish runs as Conv, HardSigmoid, Mul, while inside a network the NCHWc Conv takes
    HardSwish as its activation (read from both optimized graphs). A depthwise conv runs in the
    blocked layout for any channel count (a max-pool sink ran in NCHW behind a ReorderOutput when
    the channels were not a multiple of the block, 77% of a 7x7x552 kernel's run). The sink is
    timed by the layout probe (found by its output's name, kept by ORT as a prefix) and taken off
    with the reorders.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    out = g.output[0]
    y = out.name
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] <= 0:
        raise ValueError(f"a sink needs a 4-d output with known channels, got {dims}")
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == y:
                n.output[i] = y + "_kernel"
    out.name = f"{SINK}_{y}"
    g.node.append(_identity_dw(y + "_kernel", out.name, dims[1], SINK, g))
    return m


def with_source(model: onnx.ModelProto) -> onnx.ModelProto:
    """The residual input of a Conv->Add kernel passed through an identity 1x1 depthwise conv first.

    ORT fuses a residual Add into its NCHWc Conv (the ``Sum`` input) only when the other operand
    is itself in the blocked layout. Inside a network it always is (another convolution made it,
    its channels padded to the block); a lone kernel's graph input is not, so without this the
    Add ran as its own NCHW node after a ReorderOutput (read from ORT's profiler). A max-pool
    would do only for channel counts that are multiples of the block (24, 40, 72 are not); a
    depthwise convolution takes any. It and its reorder are timed by the layout probe (found by
    their output's name, which ORT's NCHWc pass keeps as a prefix) and taken off.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    for n in g.node:
        if n.op_type != "Add":
            continue
        for j, x in enumerate(n.input):
            if x in shapes and len(shapes[x]) == 4:
                n.input[j] = f"{SOURCE}_{x}"
                g.node.insert(0, _identity_dw(x, n.input[j], shapes[x][1], SOURCE, g))
                return m
    return m


def _needs_source(key: str) -> bool:
    chain = key.split("_", 1)[0].split("-")
    return len(chain) > 1 and chain[0] == "conv" and "add" in chain


def kernel_artifact(key: str, model: onnx.ModelProto) -> onnx.ModelProto:
    """A kernel's model as ORT must run it to fuse as it does inside a network."""
    if _needs_source(key):
        model = with_source(model)
    if _needs_sink(key):
        model = with_sink(model)
    return model


def ops_run(model_bytes: bytes, threads: int = 1, *, aux: bool = False) -> list[str]:
    """The compute nodes ORT runs for a model, from its own profiler; layout conversions and the
    sink/source hwlat adds are left out unless ``aux``."""
    import os
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from hwlat.profilers.onnxruntime.runner import is_node, read_profile, session_options

    d = tempfile.mkdtemp(prefix="hwlat-ortops-")
    sess = None
    try:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "p")
        sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        sess.run(None, {i.name: np.zeros([x if isinstance(x, int) and x > 0 else 1 for x in i.shape], np.float32)
                        for i in sess.get_inputs()})
    finally:
        events = read_profile(sess, d)
    return [e["args"]["op_name"] for e in events if is_node(e) and (aux or not is_aux(e))]


def _needs_sink(key: str) -> bool:
    from hwlat.ir import ACTIVATIONS

    chain = key.split("_", 1)[0].split("-")
    return len(chain) > 1 and chain[0] == "conv" and chain[-1] in ACTIVATIONS


class OnnxRuntimeBuilder(Builder):
    """ONNX is already ORT's format: the artifact is the serialized model."""

    def build(self, inputs: Sequence[BuildInput]) -> list[BuildResult]:
        out = []
        for inp in inputs:
            t0 = time.perf_counter()
            try:
                model = kernel_artifact(inp.key, inp.model) if inp.kind == "kernel" else inp.model
                out.append(BuildResult(inp.key, model.SerializeToString(), None, time.perf_counter() - t0,
                                       kind=inp.kind))
            except Exception as e:  # noqa: BLE001 - errors are values in a batch
                out.append(BuildResult(inp.key, None, f"{type(e).__name__}: {e}"))
        return out


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    pip_extra = ""
    # No free scale on the kernel sum: ORT's own profiler shows ResNet-18's convolutions at
    # 1.04-1.05x their isolated time inside the network, while a scale fitted on the (mobile)
    # calibration networks came out at 1.14-1.15 and over-predicted ResNet/VGG by 10-15%. The gap
    # is cold weights and activations (the d and e terms). On three 10-minute stores, the whole
    # zoo within 10% went 73->84%, 77->80%, 41->41% without the scale.
    correction_scale = False
    pass_estimate = "min"

    @classmethod
    def probe(cls) -> BackendInfo:
        try:
            import onnxruntime as ort
        except Exception as e:  # noqa: BLE001
            return BackendInfo(cls.name, False, None, f"cannot import onnxruntime ({e}): pip install onnxruntime")
        providers = ort.get_available_providers()
        return BackendInfo(cls.name, True, ort.__version__, "",
                           {"providers": providers, "device": ort.get_device()})

    def builder(self, device: DeviceConfig, workdir: Path) -> Builder:
        return OnnxRuntimeBuilder()

    def session(self, artifact: Any, device: DeviceConfig):
        from hwlat.profilers.onnxruntime.runner import OrtSession

        return OrtSession(artifact, threads=device.threads, options=device.options)

    def ops_run(self, artifact: Any, device: DeviceConfig) -> list[str]:
        """What ORT runs for a built kernel: the structural evidence of fusion detection."""
        return ops_run(artifact, device.threads)

    def compile(self, model: onnx.ModelProto, out_dir: Path, device: DeviceConfig) -> Path:
        """The deployable artifact for ORT is the ONNX model itself (checked to load)."""
        import onnxruntime as ort

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = (model.graph.name or "model").replace("/", "_")
        path = out_dir / f"{name}.onnx"
        tmp = path.with_suffix(".onnx.tmp")
        onnx.save(model, str(tmp))
        ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])  # loads as it is
        tmp.replace(path)
        return path
