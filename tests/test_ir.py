import onnx
import pytest
from onnx import TensorProto, helper

from hwlat.errors import BadModelError, UnsupportedOpError
from hwlat.fusion import FusionRules, default_rules
from hwlat.ir import model_kernels
from tests.conftest import tiny_net


def test_ort_kernels_of_a_real_graph(tiny_onnx):
    mk = model_kernels(tiny_onnx, default_rules("onnxruntime"))
    keys = mk.keys
    # BatchNorm folded, activation fused, SE and shuffle grouped, residual add fused into the conv
    # PyTorch pads the stride-2 stem 1 + 1 where "same" would pad 0 + 1: the key keeps it (p2)
    assert keys[0] == "conv-hswish_i32x32x3_o16x16x16_k3_s2_g1_p2"
    assert "conv-relu_i16x16x16_o16x16x16_k3_s1_g16" in keys
    assert "se-relu-hsigmoid_i16x16x16_o16x16x16_m8" in keys
    assert "conv-add_i16x16x16+16x16x16_o16x16x16_k1_s1_g1" in keys
    assert "shuffle_i16x16x16_o16x16x16_g2" in keys
    assert "silu_i16x16x16_o16x16x16" in keys
    assert keys[-1] == "gemm_i16_o10"
    # every ONNX node of the canonical graph belongs to exactly one kernel
    nodes = [n for k in mk.kernels for n in k.nodes]
    assert len(nodes) == len(set(nodes))


def test_rules_change_kernels(tiny_onnx):
    none = FusionRules("x", frozenset(), frozenset())
    keys = model_kernels(tiny_onnx, none).keys
    assert "conv_i32x32x3_o16x16x16_k3_s2_g1_p2" in keys and "hswish_i16x16x16_o16x16x16" in keys
    assert not any(k.startswith(("se", "shuffle")) for k in keys)
    assert "transpose_i2x8x16x16_o8x2x16x16" in keys


def test_torch_module_input(tiny_onnx):
    a = model_kernels(tiny_net(), default_rules("onnxruntime"), input_shape=(1, 3, 32, 32)).keys
    b = model_kernels(tiny_onnx, default_rules("onnxruntime")).keys
    assert a == b


def _model_with(op, inputs=("x",), **attrs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    node = helper.make_node(op, list(inputs), ["y"], name="weird", **attrs)
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_op_names_op_and_node():
    with pytest.raises(UnsupportedOpError, match="'Erf'.*'weird'"):
        model_kernels(_model_with("Erf"), default_rules("onnxruntime"))


def test_dynamic_shape_needs_input_shape(tmp_path):
    m = _model_with("Relu")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(BadModelError, match="dynamic dimension"):
        model_kernels(m, default_rules("onnxruntime"))
    assert model_kernels(m, default_rules("onnxruntime"), input_shape=(1, 4, 8, 8)).keys == ["relu_i8x8x4_o8x8x4"]


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01not a model at all")
    with pytest.raises(BadModelError, match="not a readable ONNX"):
        model_kernels(bad, default_rules("onnxruntime"))
    with pytest.raises(BadModelError, match="not found"):
        model_kernels(tmp_path / "missing.onnx", default_rules("onnxruntime"))
    m = _model_with("Relu")
    m.graph.node[0].input[0] = "undefined_tensor"
    with pytest.raises(BadModelError):
        model_kernels(m, default_rules("onnxruntime"))
