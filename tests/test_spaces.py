"""Search spaces: identity (parse/key), sampling, encoding, genetic operators, real models."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from hwlat.errors import HwlatError
from hwlat.search import spaces

ALL = ["ofa-mbv3", "nasbench201", "fbnet", "hurricane", "convnet"]
PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "benchdata" / "published"


def _published(name: str, n: int | None = None) -> list[dict]:
    path = PUBLISHED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return rows if n is None else rows[:n]


def _onnx_run(model, shape, tmp_path):
    import onnxruntime as ort
    import torch

    from hwlat.zoo import export_module

    path = export_module(model, shape, tmp_path / "m.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = sess.run(None, {"input": x})[0]
    torch.set_num_threads(1)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return path, y, ref


# -- registry --------------------------------------------------------------------------------
def test_registry_names_and_unknown():
    assert set(ALL) <= set(spaces.names())
    with pytest.raises(HwlatError, match="nasbench201"):
        spaces.get("no-such-space")


# -- identity, sampling, rows -----------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_key_round_trip_many(name):
    space = spaces.get(name)
    archs = space.sample(400, seed=11)
    keys = space.keys(archs)
    for a, k in zip(archs, keys):
        b = space.parse(k)
        assert b == a and hash(b) == hash(a)
        assert space.key(b) == k
        assert space.parse(a) == a
    assert len(set(keys)) == len(set(archs))


@pytest.mark.parametrize("name", ALL)
def test_sample_deterministic_and_varied(name):
    space = spaces.get(name)
    a, b, c = space.sample(60, seed=3), space.sample(60, seed=3), space.sample(60, seed=4)
    assert a == b
    assert a != c
    assert len(set(a)) > 50                       # uniform over large spaces: few duplicates


@pytest.mark.parametrize("name", ALL)
def test_matrix_round_trip_and_encode(name):
    space = spaces.get(name)
    archs = space.sample(200, seed=5)
    m = space.to_matrix(archs)
    assert m.dtype.kind == "i" and m.shape[0] == 200
    assert space.from_matrix(m) == archs
    fresh = [space.parse(space.key(a)) for a in archs]      # no memoised rows on these
    assert np.array_equal(space.to_matrix(fresh), m)
    x = space.encode(archs)
    assert x.dtype == np.float32 and x.shape == (200, len(space.feature_names()))
    assert np.isfinite(x).all()
    assert np.array_equal(space.encode(m), x)
    assert np.array_equal(space.encode([space.key(a) for a in archs[:10]]), x[:10])
    # different architectures must not collapse onto one encoding
    assert len({row.tobytes() for row in x}) == len(set(archs))


@pytest.mark.parametrize("name", ALL)
def test_mutate_and_crossover_stay_in_space(name):
    space = spaces.get(name)
    rng = np.random.default_rng(0)
    a, b = space.sample(2, seed=9)
    assert space.mutate(a, rng, prob=0.0) == a
    mutated = [space.mutate(a, rng, prob=0.5) for _ in range(20)]
    assert any(m != a for m in mutated)
    children = [space.crossover(a, b, rng) for _ in range(20)]
    for x in mutated + children:
        assert space.parse(space.key(x)) == x
    assert any(c not in (a, b) for c in children)
    big = space.mutate_matrix(space.sample_matrix(500, seed=1), rng, prob=0.3)
    assert space.from_matrix(big) == [space.parse(space.key(x)) for x in space.from_matrix(big)]


@pytest.mark.parametrize("name", ALL)
def test_choices_describes_space(name):
    ch = spaces.get(name).choices()
    assert isinstance(ch, dict) and ch


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,spec,field", [
    ("ofa-mbv3", {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5}, "r"),
    ("ofa-mbv3", {"ks": [3] * 19, "e": [3] * 20, "d": [2] * 5, "r": 224}, "ks"),
    ("ofa-mbv3", {"ks": [3] * 20, "e": [5] * 20, "d": [2] * 5, "r": 224}, "e"),
    ("ofa-mbv3", {"ks": [3] * 20, "e": [3] * 20, "d": [2, 2, 5, 2, 2], "r": 224}, "d"),
    ("ofa-mbv3", {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 226}, "r"),
    ("ofa-mbv3", {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224, "w": 0.8}, "w"),
    ("ofa-mbv3", {"ks": [3.5] * 20, "e": [3] * 20, "d": [2] * 5, "r": 224}, "ks"),
    ("ofa-mbv3", "ofa-mbv3:r224:zz", "zz"),
    ("nasbench201", "|nor_conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "nor_conv_5x5"),
    ("nasbench201", "|none~0|+|none~0|none~1|", "3 nodes"),
    ("nasbench201", ["none"] * 5, "ops"),
    ("fbnet", ["k3_e1"] * 21, "ops"),
    ("fbnet", ["k3_e1"] * 21 + ["k7_e6"], "k7_e6"),
    ("hurricane", ["skip"] * 20, "layer 1 op .skip. is not allowed"),
    ("hurricane", 42, "hurricane"),
])
def test_bad_spec_names_field(name, spec, field):
    with pytest.raises(HwlatError, match=field):
        spaces.get(name).parse(spec)


# -- OFA --------------------------------------------------------------------------------------
def test_ofa_native_forms_and_canonical_skipped_blocks():
    space = spaces.get("ofa-mbv3")
    spec = {"ks": " ".join(["7"] * 20), "e": [6] * 20, "d": "2 3 4 2 3", "r": 160}
    a = space.parse(spec)
    assert a.ks[2:4] == (0, 0) and a.ks[4:7] == (7, 7, 7) and a.ks[7] == 0 and a.e[19] == 0
    other = dict(spec, ks=["7"] * 2 + ["3"] * 2 + ["7"] * 16)    # differs only in skipped blocks
    assert space.key(space.parse(other)) == space.key(a)
    assert space.parse(space.key(a)) == a
    assert space.input_shape(a) == (1, 3, 160, 160)
    with pytest.raises(HwlatError, match="width"):
        spaces.get("ofa-mbv3", widths=(0.9,))
    wide = spaces.get("ofa-mbv3", widths=(1.0, 1.2)).sample(40, seed=0)
    assert {x.w for x in wide} == {1.0, 1.2}


def test_ofa_published_rows_parse():
    space = spaces.get("ofa-mbv3")
    rows = _published("ofa_latency_ms.csv", 200)
    archs = [space.parse(r) for r in rows]
    for r, a in zip(rows, archs):
        assert a.r == int(r["r"]) and a.d == tuple(int(x) for x in r["d"].split())
        assert space.parse(space.key(a)) == a


def test_ofa_macs_match_the_built_model():
    import torch

    space = spaces.get("ofa-mbv3", widths=(1.0, 1.2))
    archs = space.sample(3, seed=2)
    est = space.macs_matrix(space.to_matrix(archs))
    torch.set_num_threads(1)
    for a, e in zip(archs, est):
        model, total = space.build(a), [0]

        def hook(mod, inp, out):
            if isinstance(mod, torch.nn.Conv2d):
                total[0] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            elif isinstance(mod, torch.nn.Linear):
                total[0] += mod.in_features * mod.out_features

        for mod in model.modules():
            mod.register_forward_hook(hook)
        with torch.no_grad():
            model(torch.randn(space.input_shape(a)))
        assert total[0] == int(e)


def test_ofa_encode_speed():
    space = spaces.get("ofa-mbv3")
    m = space.sample_matrix(100_000, seed=0)
    space.encode_matrix(m[:10])
    t = time.perf_counter()
    x = space.encode(m)
    dt = time.perf_counter() - t
    assert x.shape == (100_000, 140) and x.dtype == np.float32
    assert dt < 2.0, f"encode of 100k OFA rows took {dt:.2f}s (expected well under 0.5 s)"
    archs = space.from_matrix(m[:20_000])
    t = time.perf_counter()
    space.encode(archs)
    assert time.perf_counter() - t < 1.0


# -- NAS-Bench-201 -----------------------------------------------------------------------------
def test_nb201_all_and_index():
    space = spaces.get("nasbench201")
    archs = space.all()
    assert len(archs) == 15625 == len(set(archs))
    # NAS-Bench-201's own checks of its shuffled order
    assert space.key(archs[0]) == ("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|"
                                   "skip_connect~1|skip_connect~2|")
    assert space.key(archs[9]) == "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    assert space.key(archs[123]) == ("|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|"
                                     "avg_pool_3x3~1|nor_conv_3x3~2|")
    assert space.index(archs[4321]) == 4321
    assert list(space.index(archs[:50])) == list(range(50))


def test_nb201_order_matches_published_csv():
    space = spaces.get("nasbench201")
    rows = _published("nasbench201_latency_ms.csv")
    assert [space.key(a) for a in space.all()] == [r["arch_str"] for r in rows]


def test_nb201_dead_edges_are_pruned():
    import torch

    space = spaces.get("nasbench201")
    conv = sum(isinstance(m, torch.nn.Conv2d) for m in space.build(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|").modules())
    plain = sum(isinstance(m, torch.nn.Conv2d) for m in space.build(
        "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|").modules())
    assert conv == plain               # the convs feed nodes 1 and 2, which never reach node 3
    x = space.encode(["|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|"])
    names = space.feature_names()
    assert x[0, names.index("live_nor_conv_3x3")] == 0 and x[0, names.index("live_skip_connect")] == 1


# -- FBNet / HURRICANE ------------------------------------------------------------------------
def test_fbnet_published_rows_parse():
    space = spaces.get("fbnet")
    rows = _published("fbnet_latency_ms.csv", 300)
    archs = [space.parse(r["ops"]) for r in rows]
    assert [space.key(a) for a in archs] == [r["ops"] for r in rows]


def test_hurricane_restrict():
    space = spaces.get("hurricane")
    assert len(space.pool()) == 37 and "k5_e3_hswish_se" in space.pool() and "skip" in space.pool()
    cands = [list(c[:2]) for c in space.candidates]
    small = space.restrict(cands)
    assert small.restricted and not space.restricted
    archs = small.sample(300, seed=0)
    assert all(op in cands[i] for a in archs for i, op in enumerate(a.ops))
    rng = np.random.default_rng(1)
    assert all(op in cands[i] for _ in range(20) for i, op in enumerate(small.mutate(archs[0], rng, 0.9).ops))
    outside = space.sample(1, seed=0)[0]
    if any(op not in cands[i] for i, op in enumerate(outside.ops)):
        with pytest.raises(HwlatError, match="restricted"):
            small.parse(outside)
    with pytest.raises(HwlatError, match="layer 1"):
        space.restrict([["k3_e1_relu"]] + [["k3_e1_relu"]] * 19)


# -- real models ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_build_export_and_run(name, tmp_path):
    import onnx

    space = spaces.get(name)
    archs = space.sample(2, seed=21)
    if name == "nasbench201":
        archs[1] = space.parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")   # dead cell: x * 0
    for i, a in enumerate(archs):
        model = space.build(a)
        assert not model.training
        path, y, ref = _onnx_run(model, space.input_shape(a), tmp_path)
        classes = 10 if name == "nasbench201" else 1000
        assert y.shape == ref.shape == (1, classes)
        assert np.allclose(y, ref, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ops <= {"Conv", "Relu", "HardSwish", "HardSigmoid", "Mul", "Add", "GlobalAveragePool",
                       "Flatten", "Gemm", "Reshape", "Transpose", "Constant", "AveragePool",
                       "BatchNormalization", "MaxPool"}, ops
        if name in ("ofa-mbv3", "hurricane"):
            assert {"HardSwish", "HardSigmoid"} <= ops


def test_convnet_calibration_networks_spread_over_weights():
    """The calibration networks of ``convnet`` cover widths and resolutions in turn, so their weights
    span two orders of magnitude (what separates a correction's weight and activation terms)."""
    space = spaces.get("convnet")
    archs = space.calibration_sample(10, seed=1000)
    assert sorted({a.w for a in archs}) == [16, 32, 48, 64, 96]
    assert len({a.r for a in archs}) == 4
    assert archs == space.calibration_sample(10, seed=1000)
    mb = [sum(p.numel() for p in space.build(a).parameters()) * 4e-6 for a in archs]
    assert min(mb) < 3 and max(mb) > 60
    with pytest.raises(HwlatError, match="field 'w'"):
        space.parse({"r": 160, "w": 40, "d": [1, 1, 1, 1], "b": ["plain"] * 4})
    with pytest.raises(HwlatError, match="field 'b'"):
        space.parse({"r": 160, "w": 32, "d": [1, 1, 1, 1], "b": ["dense"] * 4})


def test_adaptive_neighbours_stay_within_real_network_shapes():
    """Neighbours of a kernel vary one dimension at a time and never leave the envelope real
    networks use: a kernel at the edge gets smaller neighbours only, one outside gets none."""
    from hwlat.kernels import flops, numel, parse_key
    from hwlat.profilers.sampling import MAX_TENSOR_ELEMENTS, neighbours, realistic

    near = neighbours("conv-relu_i56x56x64_o56x56x64_k3_s1_g1")
    assert len(near) >= 4 and all(realistic(parse_key(n)) for n in near)
    assert any("i64x64" in n for n in near) and any("x80_" in n for n in near)
    edge = "maxpool_i128x128x224_o64x64x224_k3_s2"          # 3.67M elements in
    assert realistic(parse_key(edge))
    grown = neighbours(edge)
    assert grown and all(max(numel(s) for s in parse_key(n).inputs) <= MAX_TENSOR_ELEMENTS for n in grown)
    assert not any("i160x160" in n or "x280_" in n for n in grown)
    assert not realistic(parse_key("avgpool_i160x160x552_o159x159x552_k2_s1"))
    big = "conv_i56x56x512_o56x56x512_k3_s1_g1"             # 14.8 GFLOP: beyond every network layer
    assert flops(parse_key(big)) > 800e6 and all(flops(parse_key(n)) <= 800e6 for n in neighbours(big))


def test_odd_channels_are_realistic_only_in_small_tensors():
    """DenseNet-BC's odd channel counts live at 14x14 and 7x7; a 7x7 depthwise conv over 80x80x607
    (39.7 ms on the slow unblocked path) is no network's, and the adaptive rounds never walk there."""
    from hwlat.kernels import parse_key
    from hwlat.profilers.sampling import neighbours, realistic

    assert realistic(parse_key("conv-relu_i14x14x210_o14x14x105_k1_s1_g1"))
    assert realistic(parse_key("conv_i56x56x58_o56x56x58_k3_s1_g58"))
    assert not realistic(parse_key("conv-hsigmoid_i80x80x607_o80x80x607_k7_s1_g607"))
    near = neighbours("conv-hsigmoid_i56x56x607_o56x56x607_k7_s1_g607")
    assert near and all(realistic(parse_key(n)) for n in near)
    assert not any("x607_" in n and "i80x80" in n for n in near)
