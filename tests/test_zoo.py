"""The validation zoo: every member builds, exports to standard-op ONNX and runs in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from hwlat import zoo
from hwlat.errors import HwlatError

STANDARD_OPS = {
    "Conv", "BatchNormalization", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Mul", "Add",
    "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Reshape", "Transpose",
    "Split", "Slice", "Flatten", "Gemm", "Constant",
}
OFA_COUNT = 3
MODELS = zoo.models(ofa_count=OFA_COUNT)


def test_families_and_names():
    fams = zoo.families()
    assert len(fams) >= 11 and "ofa" in fams
    names = [m.name for m in MODELS]
    assert len(names) == len(set(names))
    for fam in fams:
        members = [m for m in MODELS if m.family == fam]
        assert 3 <= len(members) <= 6 or fam == "ofa", (fam, len(members))
    assert "mobilenetv2-w0.75-r224" in names and "ofa-002" in names
    assert len(zoo.models(["ofa"], ofa_count=20)) == 20


def test_ofa_members_are_reproducible_space_archs():
    from hwlat.search import spaces

    space = spaces.get("ofa-mbv3")
    a = zoo.models(["ofa"], seed=7, ofa_count=4)
    b = zoo.models(["ofa"], seed=7, ofa_count=4)
    assert [m.arch for m in a] == [m.arch for m in b]
    assert [m.arch for m in a] != [m.arch for m in zoo.models(["ofa"], seed=8, ofa_count=4)]
    for m in a:
        arch = space.parse(m.arch)
        assert m.input_shape == space.input_shape(arch)


def test_unknown_family_and_name():
    with pytest.raises(HwlatError, match="mobilenetv2"):
        zoo.models(["alexnet"])
    with pytest.raises(HwlatError, match="no zoo model"):
        zoo.get("alexnet-r224")


def test_weights_depend_on_name_only():
    import torch

    m = zoo.get("shufflenetv2-w0.5-r224")
    a, b = m.build(), m.build()
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("zm", MODELS, ids=[m.name for m in MODELS])
def test_export_and_run(zm, tmp_path):
    import onnx
    import onnxruntime as ort

    path = zoo.export_onnx(zm, tmp_path / f"{zm.name}.onnx")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert ops <= STANDARD_OPS, ops - STANDARD_OPS
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "input" and tuple(dims) == zm.input_shape
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(zm.input_shape).astype(np.float32)
    y = sess.run(None, {"input": x})[0]
    assert y.shape == (1, 1000) and np.isfinite(y).all()
    assert np.std(y) > 0


@pytest.mark.parametrize("name", ["mobilenetv3-small-w1.0-r224", "shufflenetv2-w0.5-r224", "ghostnet-w0.5-r224",
                                  "squeezenet1.1-r160", "densenet-g12-4.8.12.8-r224"])
def test_onnx_matches_torch(name, tmp_path):
    import onnxruntime as ort
    import torch

    zm = zoo.get(name)
    model = zm.build()
    path = zoo.export_module(model, zm.input_shape, tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal(zm.input_shape).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    torch.set_num_threads(1)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.allclose(y, ref, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
