import numpy as np
import onnxruntime as ort
import pytest

from hwlat.errors import HwlatError
from hwlat.fusion import default_rules
from hwlat.ir import detect_kernels, load_onnx
from hwlat.kernel_onnx import kernel_model, random_inputs
from hwlat.kernels import Kernel, bytes_moved, flops, parse_key

KEYS = [
    "conv-hswish_i56x56x24_o56x56x24_k3_s1_g24",
    "conv-add-relu_i28x28x40+28x28x40_o28x28x40_k1_s1_g1",
    "conv_i224x224x3_o112x112x16_k3_s2_g1",
    "conv-relu6_i15x15x32_o8x8x32_k5_s2_g32",
    "conv_i14x14x64_o14x14x128_k3_s1_g4",
    "se-relu-hsigmoid_i14x14x480_o14x14x480_m120",
    "se-silu-sigmoid_i7x7x96_o7x7x96_m24",
    "gemm-relu_i1280_o1000",
    "gemm_i960_o1280",
    "shuffle_i28x28x116_o28x28x116_g2",
    "maxpool_i56x56x64_o28x28x64_k3_s2",
    "avgpool_i14x14x32_o7x7x32_k2_s2",
    "gap_i7x7x960_o1x1x960",
    "concat_i28x28x24+28x28x48_o28x28x72",
    "add_i14x14x80+14x14x80_o14x14x80",
    "silu_i28x28x24_o28x28x24",
    "hswish_i28x28x24_o28x28x24",
    "sigmoid_i28x28x24_o28x28x24",
    "reshape_i1x1x960_o960",
]


@pytest.mark.parametrize("key", KEYS)
def test_key_round_trip_and_runnable(key):
    k = parse_key(key)
    assert k.key == key
    assert parse_key(k.key) == k
    model = kernel_model(k)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, random_inputs(model))[0]
    expect = k.output if len(k.output) == 1 else (k.output[2], k.output[0], k.output[1])
    assert tuple(out.shape[1:]) == tuple(expect)
    assert np.isfinite(out).all()
    assert flops(k) > 0 and bytes_moved(k) > 0


@pytest.mark.parametrize("key", [k for k in KEYS if not k.startswith(("reshape", "gap"))])
def test_kernel_model_detects_back_to_its_key(key):
    """A single-kernel model, read back through the IR with ORT's rules, is that one kernel."""
    mk = detect_kernels(load_onnx(kernel_model(key)), default_rules("onnxruntime"))
    assert mk.keys == [key]


def test_attrs_are_canonical_and_keys_never_substring_matched():
    a = Kernel("conv", ((8, 8, 16),), (8, 8, 16), (("g", 16), ("s", 1), ("k", 3)))
    b = Kernel("conv", ((8, 8, 16),), (8, 8, 16), (("k", 3), ("s", 1), ("g", 16)))
    assert a == b and a.key == b.key == "conv_i8x8x16_o8x8x16_k3_s1_g16"
    assert a.kind == "dwconv"
    assert parse_key("conv_i8x8x16_o8x8x32_k3_s1_g1").kind == "conv"
    assert parse_key("conv_i8x8x16_o8x8x32_k3_s1_g2").kind == "gconv"


@pytest.mark.parametrize("bad", ["", "conv", "conv_i8x8", "conv_i8x8x3_oAxB", "Conv_i8_o8", "conv_i8x8x3_o8x8x3_k"])
def test_malformed_keys_raise(bad):
    with pytest.raises(HwlatError):
        parse_key(bad)


def test_model_padding_is_part_of_the_key():
    """PyTorch pads a 3x3 stride-2 window by 1 + 1, "same" by 0 + 1: one output shape, two kernels
    (on TVM two tuning tasks), so the key keeps the model's padding as ``p`` and builds it."""
    import onnxruntime as ort

    from hwlat.kernel_onnx import kernel_model, random_inputs
    from hwlat.kernels import pad_attr, parse_key, with_resolution

    assert pad_attr(224, 112, 3, 2, 1, 2) == 2 and pad_attr(224, 112, 3, 2, 1, 1) is None
    assert pad_attr(56, 56, 3, 1, 1, 2) is None            # stride 1: PyTorch's k // 2 is "same"
    assert pad_attr(55, 27, 3, 2, 1, 0) is None            # ceil-mode pooling: no padding to keep
    for key, pads in (("conv-relu_i224x224x3_o112x112x24_k3_s2_g1_p2", [1, 1, 1, 1]),
                      ("conv_i56x56x24_o28x28x24_k3_s2_g24", [0, 0, 1, 1]),
                      ("maxpool_i112x112x24_o56x56x24_k3_s2_p2", [1, 1, 1, 1])):
        m = kernel_model(key)
        node = next(n for n in m.graph.node if n.op_type in ("Conv", "MaxPool"))
        assert [list(a.ints) for a in node.attribute if a.name == "pads"] == [pads]
        out = ort.InferenceSession(m.SerializeToString()).run(None, random_inputs(m))[0]
        k = parse_key(key)
        assert out.shape == (1, k.output[2], k.output[0], k.output[1])
    # at another resolution the model's padding stays; "p" is re-derived from it
    k = parse_key("conv_i14x14x96_o7x7x96_k3_s2_g96_p2")
    assert with_resolution(k, {14: 22, 7: 11}).key == "conv_i22x22x96_o11x11x96_k3_s2_g96_p2"
    assert with_resolution(k, {14: 11, 7: 6}).key == "conv_i11x11x96_o6x6x96_k3_s2_g96"
    assert with_resolution(parse_key("conv_i11x11x96_o6x6x96_k3_s2_g96"), {11: 14, 6: 7}).key == \
        "conv_i14x14x96_o7x7x96_k3_s2_g96_p2"
