"""TensorRT backend: what runs without a GPU runs for real here; the rest needs TensorRT + a GPU."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwlat.device import DeviceConfig
from hwlat.errors import BackendUnavailableError, HwlatError
from hwlat.profilers import get_backend, probe_all
from hwlat.profilers.base import BuildInput
from hwlat.profilers.tensorrt import TRT_MISSING, TensorRTBackend, gpu
from hwlat.profilers.tensorrt.builder import (TensorRTBuilder, artifact_name, build_options, engine_path,
                                              metadata_path)
from hwlat.protocol import Protocol, measure_session

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.needs_tensorrt
skip_no_gpu = pytest.mark.skipif(not TensorRTBackend.probe().available,
                                 reason="TensorRT and an NVIDIA GPU are not available on this machine")
RULES_FILE = Path(__file__).resolve().parents[1] / "profilers" / "tensorrt" / "fusion_rules.json"
NEUTRAL_OPS = {"conv", "gemm", "add", "addc", "mul", "mulc", "relu", "relu6", "clip", "hswish", "hsigmoid",
               "sigmoid", "silu", "tanh", "leakyrelu", "maxpool", "avgpool", "gap", "gmp", "concat",
               "transpose", "split", "slice", "pad", "softmax", "reshape"}


def dev(**kw) -> DeviceConfig:
    return DeviceConfig(name="gpu-trt", backend="tensorrt", **kw)


def conv_relu_model(name: str = "convrelu") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# --- availability ----------------------------------------------------------------------------
@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_probe_reports_missing_tensorrt():
    info = TensorRTBackend.probe()
    assert (info.name, info.available, info.version) == ("tensorrt", False, None)
    assert info.reason == TRT_MISSING
    assert any(i.name == "tensorrt" and not i.available for i in probe_all())


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_get_backend_raises_with_reason():
    with pytest.raises(BackendUnavailableError, match="TensorRT not installed"):
        get_backend("tensorrt")
    assert isinstance(get_backend("tensorrt", require=False), TensorRTBackend)


def _has_module(name):
    """find_spec on a dotted name imports the parent and raises when the parent is absent."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_cuda_device_status_never_raises():
    st = gpu.device_status()
    assert set(st) >= {"ok", "count", "name", "reason"}
    if st["ok"]:
        assert st["count"] >= 1 and st["name"]
    else:
        assert st["reason"]
        if _has_module("cuda.bindings"):   # the runtime itself said why
            assert re.search(r"cudaError\w+|no CUDA device", st["reason"]), st["reason"]


# --- fusion rules ----------------------------------------------------------------------------
def test_fusion_rules_file_is_well_formed():
    raw = json.loads(RULES_FILE.read_text())
    assert raw["backend"] == "tensorrt" and raw["source"]
    pairs = [tuple(p) for p in raw["fuse"]]
    assert len(pairs) == len(set(pairs)) > 0
    chains = {"-".join(p) for p in pairs}
    for chain, op in pairs:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", chain), chain
        assert set(chain.split("-")) | {op} <= NEUTRAL_OPS, (chain, op)
        assert "-" not in chain or chain in chains, f"chain {chain} cannot be grown by these rules"
    rules = TensorRTBackend().default_fusion_rules()
    assert rules.backend == "tensorrt" and rules.absorbs("conv-add", "relu")
    assert not rules.absorbs("conv", "hswish")      # not a documented TensorRT fusion


def test_fusion_rules_drive_kernel_detection():
    torch = pytest.importorskip("torch")
    from hwlat.ir import detect_kernels, torch_to_onnx

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = torch.nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = torch.relu(self.c2(torch.relu(self.c1(x))) + x)
            return torch.nn.functional.hardswish(self.c3(y))

    keys = detect_kernels(torch_to_onnx(Block(), (1, 8, 16, 16)), TensorRTBackend().default_fusion_rules()).keys
    assert [k.split("_")[0] for k in keys] == ["conv-relu", "conv-add-relu", "conv", "hswish"]


# --- options and naming (plain functions) ----------------------------------------------------
def test_precision_flags():
    assert build_options(dev()).flags == () and not build_options(dev()).calibrate
    assert build_options(dev(precision="fp16")).flags == ("FP16",)
    o = build_options(dev(precision="int8"))
    assert o.flags == ("FP16", "INT8") and o.calibrate
    assert build_options(dev()).workspace_bytes is None


@pytest.mark.parametrize("value,expected", [(512, 512 << 20), ("64", 64 << 20), (1.0, 1 << 20)])
def test_workspace_option(value, expected):
    assert build_options(dev(options={"workspace_mb": value})).workspace_bytes == expected


@pytest.mark.parametrize("bad", [0, -5, 1.5, "1.5", "abc", True, [1]])
def test_bad_workspace_is_a_clear_error(bad):
    with pytest.raises(HwlatError, match="workspace_mb"):
        build_options(dev(options={"workspace_mb": bad}))
    with pytest.raises(HwlatError, match="workspace_mb"):      # before any long batch starts
        TensorRTBuilder(dev(options={"workspace_mb": bad}), Path("/nonexistent"))


def test_engine_paths(tmp_path):
    assert engine_path(tmp_path, "resnet/18 v1") == tmp_path / "resnet_18_v1.engine"
    assert engine_path(tmp_path, "") == engine_path(tmp_path, None) == tmp_path / "model.engine"
    assert artifact_name("../..") == "model"
    key = "conv-add-relu_i16x16x8+16x16x8_o16x16x8_k3_s1_g1"
    assert engine_path(tmp_path, key).name == "conv-add-relu_i16x16x8_16x16x8_o16x16x8_k3_s1_g1.engine"
    assert metadata_path(tmp_path / "a.engine") == tmp_path / "a.engine.json"


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_builder_returns_errors_as_values(tmp_path):
    res = TensorRTBuilder(dev(), tmp_path).build([BuildInput("k1", conv_relu_model()), BuildInput("k2", conv_relu_model())])
    assert [r.key for r in res] == ["k1", "k2"]
    assert all(r.artifact is None and "tensorrt" in r.error for r in res)


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_runner_failure_is_a_value_and_leaves_no_session(tmp_path):
    from hwlat.profilers.base import BuildResult
    from hwlat.profilers.tensorrt.runner import TensorRTSession

    s = TensorRTSession(tmp_path / "missing.engine")
    with pytest.raises(ImportError):
        s.activate()
    assert not s._active and s._buffers == {} and s._stream is None
    backend = TensorRTBackend()
    [r] = list(backend.runner(dev()).run([BuildResult("k", tmp_path / "missing.engine")], Protocol.quick()))
    assert r.measurement is None and "tensorrt" in r.error


# --- needs TensorRT and a GPU ----------------------------------------------------------------
@needs_tensorrt
@skip_no_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_time(tmp_path, precision):
    import onnxruntime as ort

    model = conv_relu_model()
    backend = get_backend("tensorrt")
    [res] = backend.builder(dev(precision=precision, options={"workspace_mb": 256}), tmp_path).build(
        [BuildInput("conv-relu_i16x16x4_o16x16x8_k3_s1_g1", model)])
    assert res.error is None and Path(res.artifact).stat().st_size > 0
    with backend.session(res.artifact, dev()) as s:
        x = np.random.default_rng(1).standard_normal((1, 4, 16, 16)).astype(np.float32)
        [y] = s.infer({"x": x})
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(y, ref, rtol=1e-2 if precision == "fp16" else 1e-3, atol=1e-2)
        m = measure_session(s, Protocol.quick())
    assert m.backend == "tensorrt" and 0 < m.median_ms < 100


@needs_tensorrt
@skip_no_gpu
def test_parse_error_is_a_value(tmp_path):
    bad = conv_relu_model()
    bad.graph.node.append(helper.make_node("NoSuchOp", ["y"], ["z"], domain="hwlat.test"))
    [res] = get_backend("tensorrt").builder(dev(), tmp_path).build([BuildInput("bad", bad)])
    assert res.artifact is None and "parser" in res.error


@needs_tensorrt
@skip_no_gpu
def test_compile_writes_engine_and_manifest(tmp_path):
    path = get_backend("tensorrt").compile(conv_relu_model("tiny"), tmp_path, dev())
    assert path == tmp_path / "tiny.engine" and path.stat().st_size > 0
    meta = json.loads(metadata_path(path).read_text())
    assert meta["tensorrt_version"] and meta["gpu"] and meta["engine"] == "tiny.engine"
    assert not list(tmp_path.glob("*.tmp"))
