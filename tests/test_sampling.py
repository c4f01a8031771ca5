import pytest

from hwlat.fusion import default_rules
from hwlat.kernels import parse_key
from hwlat.profilers.sampling import prior_kernels


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_the_prior_covers_the_tiny_channel_counts_of_narrow_networks(backend):
    """GhostNet-0.5 runs 4- and 6-channel depthwise convs and concats at 112x112; without such
    shapes in the prior the regressors extrapolate from 8 channels (LiteRT: 0.3-0.4x)."""
    keys = prior_kernels(default_rules(backend), 1500)
    assert keys == prior_kernels(default_rules(backend), 1500)   # deterministic for a seed
    tiny = {}
    for k in keys:
        kk = parse_key(k)
        if any(len(s) == 3 and s[-1] < 8 and s[-1] != 3 for s in kk.inputs):
            tiny.setdefault(kk.kind, []).append(kk)
    for kind in ("conv", "dwconv", "concat"):
        assert tiny.get(kind), f"no {kind} kernel below 8 channels in the prior"
    # at the resolutions where narrow networks have them, not only in small tensors
    assert any(k.inputs[0][0] >= 56 for kind in ("conv", "dwconv") for k in tiny[kind])
    # and concats of tiny equal halves there (LiteRT int8: 0.069 ms at 112x112x(4+4), 6x what the
    # regressors made of wider concats)
    assert any(k.inputs[0][0] >= 56 and len({i[-1] for i in k.inputs}) == 1 for k in tiny["concat"])
    # a small slice of the sample: the rest stays where most networks live
    assert sum(len(v) for v in tiny.values()) < 0.1 * len(keys)


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_the_prior_has_convolutions_with_both_channel_counts_unaligned(backend):
    """ShuffleNet's 58->58 and DenseNet-BC's 210->105 1x1 convs run on ORT's NCHW path; with the
    output channels always rounded to 8 such convs were 0.4% of the sample and the regressors
    priced them 1.6-1.8x their measured time."""
    convs = [k for k in map(parse_key, prior_kernels(default_rules(backend), 1500))
             if k.kind == "conv" and k.inputs[0][-1] != 3]
    both = [k for k in convs if k.inputs[0][-1] % 4 and k.output[-1] % 4]
    assert len(both) >= 0.03 * len(convs)
    # 1x1 ones among them, at the resolutions where those networks have them
    assert any(k.attr("k") == 1 and k.inputs[0][0] >= 14 for k in both)
    # most of the sample stays aligned, as most networks are
    assert sum(1 for k in convs if k.inputs[0][-1] % 8 == 0 and k.output[-1] % 8 == 0) > 0.7 * len(convs)


def test_the_prior_samples_the_stems_networks_start_with():
    """SqueezeNet-1.0's stem (7x7/2, 3 -> 96 channels, unpadded, at 224) ran 1.8x what the
    regressors extrapolated on LiteRT int8 from a stem sample that stopped at 64 channels."""
    stems = [parse_key(k) for k in prior_kernels(default_rules("litert", "int8"), 2500)]
    stems = [k for k in stems if k.kind == "conv" and k.inputs[0][-1] == 3]
    assert any(k.output[-1] == 96 and k.attr("k") == 7 for k in stems)
    # unpadded ones: the output is (h - k) // s + 1, not ceil(h / s)
    assert any(k.output[0] == (k.inputs[0][0] - k.attr("k")) // k.attr("s") + 1 != -(-k.inputs[0][0] // k.attr("s"))
               for k in stems)
    assert any(k.inputs[0][0] >= 192 and k.attr("k") == 7 and k.attr("s") == 2 for k in stems)


@pytest.mark.parametrize("backend,precision", [("litert", "int8"), ("onnxruntime", "fp32")])
def test_the_common_stems_are_measured_as_a_grid_early_in_the_prior(backend, precision):
    """ResNet's, SqueezeNet's, VGG's and the MobileNets' stems at the usual resolutions are LUT
    entries, not left to a random stem sample (LiteRT int8: SqueezeNet-1.0 19-22% low from its
    stem alone)."""
    from hwlat.profilers.sampling import common_stems

    rules = default_rules(backend, precision)
    grid = common_stems(rules)
    keys = prior_kernels(rules, 1200)
    assert len(keys) == len(set(keys)) == 1200
    assert set(grid) <= set(keys) and max(keys.index(k) for k in grid) < 0.3 * len(keys)
    relu = "conv-relu" if rules.absorbs("conv", "relu") else "conv"
    for want in (f"{relu}_i224x224x3_o112x112x64_k7_s2_g1_p6",     # ResNet, padded 3
                 f"{relu}_i224x224x3_o109x109x96_k7_s2_g1",         # SqueezeNet-1.0, unpadded
                 f"{relu}_i160x160x3_o160x160x64_k3_s1_g1",         # VGG
                 "conv_i224x224x3_o112x112x16_k3_s2_g1_p2"):        # MobileNetV3 (h-swish apart)
        assert want in grid
    # a small prior stays a random sample over every kernel type
    small = prior_kernels(rules, 100)
    assert not set(grid) & set(small[:50]) and len(small) == 100
