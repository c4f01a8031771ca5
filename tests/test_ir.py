import numpy as np
import onnx
import pytest
import torch
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
    with pytest.raises(UnsupportedOpError, match="'Hardmax'.*'weird'"):
        model_kernels(_model_with("Hardmax"), default_rules("onnxruntime"))


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


class _Odd(torch.nn.Module):
    """PReLU, instance norm, GELU (Erf), channel max/mean (CBAM), bilinear upsampling, layer norm."""

    def __init__(self, width: int = 32):
        super().__init__()
        nn = torch.nn
        self.c1, self.p1 = nn.Conv2d(3, 8, 3, 2, 1), nn.PReLU(8)
        self.n, self.g = nn.InstanceNorm2d(8, affine=True), nn.GELU()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.ln = nn.LayerNorm(width)   # over the input's (and output's) width

    def forward(self, x):
        a = self.g(self.n(self.p1(self.c1(x))))
        att = torch.sigmoid(a.mean(1, keepdim=True) + a.amax(1, keepdim=True))
        return self.ln(torch.maximum(self.up(a * att), self.up(a)))


def test_operators_without_a_neutral_op_get_kernels_of_their_own():
    """PRelu, norms, reductions, Erf, Max and Resize are kernels named after them (never priced as
    another op, never fused into a conv), and a spatial ReduceMean is still global pooling."""
    keys = model_kernels(_Odd().eval(), default_rules("onnxruntime"), input_shape=(1, 3, 32, 32)).keys
    assert "conv_i32x32x3_o16x16x8_k3_s2_g1_p2" in keys            # PRelu not fused into the conv
    for k in ("prelu_i16x16x8_o16x16x8", "instnorm_i16x16x8_o16x16x8", "erf_i16x16x8_o16x16x8",
              "reducemean_i16x16x8_o16x16x1", "reducemax_i16x16x8_o16x16x1", "resize_i16x16x8_o32x32x8_r1",
              "max_i32x32x8+32x32x8_o32x32x8", "layernorm_i32x32x8_o32x32x8"):
        assert k in keys, k
    gap = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d(1))
    assert "gap_i8x8x4_o1x1x4" in model_kernels(gap, default_rules("onnxruntime"), input_shape=(1, 3, 8, 8)).keys


@pytest.mark.parametrize("key,ref", [
    ("prelu_i6x6x4_o6x6x4", lambda x: np.where(x > 0, x, 0.25 * x)),
    ("reducemax_i6x6x4_o6x6x1", lambda x: x.max(1, keepdims=True)),
    ("reducemean_i5x8_o8", lambda x: x.mean(1)),
    ("reducesum_i6x6x4_o1x1x4", lambda x: x.sum((2, 3), keepdims=True)),
    ("erf_i6x6x4_o6x6x4", None), ("exp_i10_o10", lambda x: np.exp(x)), ("pow_i6x6x4_o6x6x4", lambda x: x ** 3),
    ("instnorm_i6x6x4_o6x6x4", lambda x: (x - x.mean((2, 3), keepdims=True)) / np.sqrt(x.var((2, 3), keepdims=True) + 1e-5)),
    ("layernorm_i5x8_o5x8", lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)),
    ("resize_i3x3x2_o6x6x2_r0", lambda x: x.repeat(2, 2).repeat(2, 3)),
    ("resize_i3x3x2_o6x6x2_r1", None),
    ("depthtospace_i6x6x16_o12x12x4_s2_r1", None), ("spacetodepth_i6x6x4_o3x3x16_s2", None),
])
def test_kernels_of_their_own_build_and_compute_the_op(key, ref):
    import onnxruntime as ort

    from hwlat.kernel_onnx import kernel_model, random_inputs
    from hwlat.kernels import parse_key

    m = kernel_model(key)
    onnx.checker.check_model(m, full_check=True)
    feeds = random_inputs(m)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    k = parse_key(key)
    assert y.shape == (1,) + ((k.output[-1],) + tuple(k.output[:-1]) if len(k.output) == 3 else tuple(k.output))
    if ref is not None:
        np.testing.assert_allclose(y, ref(next(iter(feeds.values()))), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", [(16, 8, 2, 2, 0, 0, 1), (16, 8, 3, 2, 1, 1, 1), (16, 16, 4, 2, 1, 0, 4)])
def test_transposed_convolutions_are_kernels_that_compute_what_torch_does(layer):
    """ConvTranspose (UNet/GAN upsampling) is a ``convt`` kernel: its key keeps kernel size,
    stride and groups, its FLOPs count every scattered patch, and the single-kernel model built from
    the key alone computes the layer torch exported (padding re-derived from the output size)."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from hwlat.kernel_onnx import kernel_model, random_inputs
    from hwlat.kernels import flops, parse_key

    cin, cout, ks, s, p, op, g = layer
    m = torch.nn.ConvTranspose2d(cin, cout, ks, s, p, output_padding=op, groups=g).eval()
    key = model_kernels(torch.nn.Sequential(m), default_rules("onnxruntime"), input_shape=(1, cin, 10, 10)).keys[0]
    assert key == f"convt_i10x10x{cin}_o20x20x{cout}_k{ks}_s{s}_g{g}"
    assert flops(parse_key(key)) == 2 * 10 * 10 * cin * (cout // g) * ks * ks
    km = kernel_model(key)
    feeds = random_inputs(km)
    y = ort.InferenceSession(km.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    w = next(numpy_helper.to_array(i) for i in km.graph.initializer if len(i.dims) == 4)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w.copy()))
        m.bias.zero_()
        ref = m(torch.from_numpy(next(iter(feeds.values())).copy())).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_a_1d_convolution_is_the_2d_one_over_a_1_x_l_image():
    """Conv1d over (N, C, L): the key is the 2-D conv over 1 x L with a 1 x k kernel, whose FLOPs are
    the 1-D layer's, and the kernel built from it runs (it was keyed as a k x k conv, 18x the work)."""
    import onnxruntime as ort

    from hwlat.kernel_onnx import kernel_model, random_inputs
    from hwlat.kernels import flops, parse_key

    net = torch.nn.Sequential(torch.nn.Conv1d(8, 32, 5, stride=2, padding=2), torch.nn.Tanh()).eval()
    key = model_kernels(net, default_rules("onnxruntime"), input_shape=(1, 8, 100)).keys[0]
    assert key == "conv-tanh_i1x100x8_o1x50x32_k1_s2_g1_kw5"
    assert flops(parse_key(key)) == 2 * 50 * 32 * 8 * 5 + 50 * 32
    km = kernel_model(key)
    y = ort.InferenceSession(km.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, random_inputs(km))[0]
    assert y.shape == (1, 32, 1, 50)


@pytest.mark.parametrize("shape", [(1, 49, 32), (1, 4, 49, 32)])
def test_attention_matmuls_of_two_activations_are_matmul_kernels(shape):
    """Q K^T and A V multiply two activations: ``matmul`` kernels (one per head batch), with the
    FLOPs of the product, built as a MatMul of two inputs (a Gemm with weights cannot run them)."""
    import onnxruntime as ort

    from hwlat.kernel_onnx import kernel_model, random_inputs
    from hwlat.kernels import flops, parse_key

    class Att(torch.nn.Module):
        def forward(self, q):
            return torch.softmax(q @ q.transpose(-1, -2), -1) @ q

    keys = [k for k in model_kernels(Att().eval(), default_rules("onnxruntime"), input_shape=shape).keys
            if k.startswith("matmul")]
    heads = shape[1] if len(shape) == 4 else 1
    assert len(keys) == 2 and all(flops(parse_key(k)) == 2 * 49 * 32 * 49 * heads for k in keys)
    for k in keys:
        km = kernel_model(k)
        y = ort.InferenceSession(km.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, random_inputs(km))[0]
        assert y.size == 49 * (49 if "o49x49" in k else 32) * heads
