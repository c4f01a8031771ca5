"""ArchLatencyPredictor: learns real functions of the architecture, round-trips, few-shot, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from hwlat.errors import HwlatError
from hwlat.predictors import ArchLatencyPredictor
from hwlat.search import spaces

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "benchdata" / "published"


def ofa_latency(sp, archs) -> np.ndarray:
    """A nonlinear 'device': super-linear in MACs, a per-block launch cost, a resolution-dependent
    penalty for 7x7 kernels with expand 6, and a unit-4 depth x resolution interaction."""
    m = sp.to_matrix(archs)
    macs = sp.macs_matrix(m) / 1e6
    ks, e, d, r = m[:, :20], m[:, 20:40], m[:, 40:45], m[:, 45].astype(float)
    big = ((ks == 7) & (e == 6)).sum(1)
    return 0.8 + 0.004 * macs ** 1.1 + 0.08 * d.sum(1) + 0.05 * big * (r / 224) ** 2 + 0.1 * d[:, 4] * (r / 224) ** 3


def rel_err(pred, true) -> np.ndarray:
    return np.abs(pred / true - 1)


@pytest.fixture(scope="module")
def ofa():
    return spaces.get("ofa-mbv3")


@pytest.fixture(scope="module")
def nb201():
    return spaces.get("nasbench201")


def test_learns_nonlinear_function_and_predicts_fast(ofa):
    train, test = ofa.sample(400, seed=1), ofa.sample(1000, seed=2)
    q = ArchLatencyPredictor(ofa).fit(train, ofa_latency(ofa, train))
    err = rel_err(q.predict(test), ofa_latency(ofa, test))
    assert np.median(err) < 0.02 and np.mean(err < 0.10) > 0.97, (np.median(err), np.mean(err < 0.10))
    assert q.info["mode"] == "trees+mix"
    # keys, native dicts and integer rows give the same predictions as arch objects
    keys = [ofa.key(a) for a in test[:5]]
    dicts = [{"ks": a.ks, "e": a.e, "d": a.d, "r": a.r} for a in test[:5]]
    ref = q.predict(test[:5])
    np.testing.assert_allclose(q.predict(keys), ref)
    np.testing.assert_allclose(q.predict(dicts), ref)
    np.testing.assert_allclose(q.predict(ofa.to_matrix(test[:5])), ref)
    assert q.predict(test[0]).shape == (1,)


def test_save_load_round_trip_is_identical(ofa, nb201, tmp_path):
    train, test = ofa.sample(100, seed=3), ofa.sample(300, seed=4)
    q = ArchLatencyPredictor(ofa).fit(train, ofa_latency(ofa, train))
    q.save(tmp_path / "full")
    assert not list((tmp_path / "full").glob("*.pkl"))
    q2 = ArchLatencyPredictor.load(tmp_path / "full")
    np.testing.assert_array_equal(q2.predict(test), q.predict(test))
    q3 = ArchLatencyPredictor.load(tmp_path / "full" / "manifest.json", space=ofa)
    np.testing.assert_array_equal(q3.predict(test), q.predict(test))

    ref, _ = synthetic_nb201_devices(nb201, n_ref=200)
    few = nb201.sample(10, seed=5)
    fq = ArchLatencyPredictor(nb201, reference=ref).fit(few, np.linspace(1.0, 3.0, 10))
    fq.save(tmp_path / "few")
    others = nb201.sample(200, seed=6)
    np.testing.assert_array_equal(ArchLatencyPredictor.load(tmp_path / "few").predict(others), fq.predict(others))


def synthetic_nb201_devices(sp, n_ref: int, seed: int = 0):
    """Four reference 'devices' with different per-op costs (what differs between a GPU, a CPU and a
    phone), and a new device whose costs are an unseen mix of theirs, all with 3% noise."""
    rng = np.random.default_rng(seed)
    costs = {  # none, skip, conv1x1, conv3x3, avgpool: per live edge, plus a fixed part
        "gpu": (0.05, 0.02, 0.30, 0.45, 0.25, 3.0),
        "cpu": (0.01, 0.01, 0.60, 3.50, 0.40, 2.0),
        "phone": (0.02, 0.03, 0.90, 5.00, 1.20, 4.0),
        "dsp": (0.00, 0.00, 0.20, 0.90, 2.00, 1.0),
    }
    new = tuple(0.5 * a + 0.3 * b + 0.2 * c for a, b, c in zip(costs["cpu"], costs["phone"], costs["gpu"]))

    def latency(archs, c, noise):
        m = sp.to_matrix(archs)
        live = sp.encode_matrix(m)[:, 30:35]
        conv = (m == 3).sum(1) + 0.3 * (m == 2).sum(1)     # dead convs still cost a little
        ms = c[5] + live @ np.array(c[:5]) * 2.0 + 0.2 * conv
        return ms * np.exp(rng.normal(0, noise, len(m)))

    all_archs = sp.all()
    ref_archs = [all_archs[i] for i in rng.choice(len(all_archs), n_ref, replace=False)]
    ref = pd.DataFrame({k: latency(ref_archs, c, 0.03) for k, c in costs.items()},
                       index=[sp.key(a) for a in ref_archs])
    return ref, (lambda archs: latency(archs, new, 0.03))


def test_few_shot_with_reference_beats_a_constant(nb201):
    ref, new_device = synthetic_nb201_devices(nb201, n_ref=300)
    few, test = nb201.sample(10, seed=11), nb201.sample(1000, seed=12)   # mostly outside ref's index
    y_few, y_test = new_device(few), new_device(test)
    q = ArchLatencyPredictor(nb201, reference=ref).fit(few, y_few)
    pred = q.predict(test)
    const = np.full(len(test), np.median(y_few))
    rmspe = lambda p: float(np.sqrt(np.mean(rel_err(p, y_test) ** 2)))  # noqa: E731
    assert rmspe(pred) < 0.5 * rmspe(const), (rmspe(pred), rmspe(const))
    assert spearmanr(pred, y_test).statistic > 0.9
    assert q.info["mode"] == "mix" and set(q.ref_names) == set(ref.columns)


class ScaledLut:
    """Stands in for a profiled device's kernel-LUT predictor: right shape of latency, wrong scale."""

    def __init__(self, sp):
        self.sp = sp

    def predict_many(self, archs):
        return 1.4 * ofa_latency(self.sp, list(archs)) + 0.3


def test_lut_predictor_is_the_base_for_a_few_samples(ofa, tmp_path):
    few, test = ofa.sample(6, seed=21), ofa.sample(500, seed=22)
    q = ArchLatencyPredictor(ofa, lut_predictor=ScaledLut(ofa)).fit(few, ofa_latency(ofa, few))
    err = rel_err(q.predict(test), ofa_latency(ofa, test))
    assert np.mean(err < 0.05) > 0.95, np.mean(err < 0.05)
    q.save(tmp_path / "lut")
    with pytest.raises(HwlatError, match="lut_predictor"):
        ArchLatencyPredictor.load(tmp_path / "lut")
    q2 = ArchLatencyPredictor.load(tmp_path / "lut", lut_predictor=ScaledLut(ofa))
    np.testing.assert_array_equal(q2.predict(test), q.predict(test))


@pytest.mark.skipif(not (PUBLISHED / "nasbench201_latency_ms.csv").exists(), reason="published tables not present")
def test_published_nasbench201_devices(nb201):
    df = pd.read_csv(PUBLISHED / "nasbench201_latency_ms.csv")
    keys = [nb201.key(nb201.parse(s)) for s in df.arch_str]
    devices = [c for c in df.columns if c not in ("index", "arch_str")]
    lat = df[devices].set_axis(keys)
    rng = np.random.default_rng(0)
    tr, te = rng.choice(len(df), 300, replace=False), rng.choice(len(df), 2000, replace=False)
    target = devices[0]                                      # a GPU
    q = ArchLatencyPredictor(nb201).fit([keys[i] for i in tr], lat[target].to_numpy()[tr])
    pred, true = q.predict([keys[i] for i in te]), lat[target].to_numpy()[te]
    assert spearmanr(pred, true).statistic > 0.95 and np.mean(rel_err(pred, true) < 0.10) > 0.9
    # few-shot: 10 measurements of the held-out device, three other devices as reference
    ref = lat[devices[1:4]].iloc[rng.choice(len(df), 2000, replace=False)]
    few = rng.choice(len(df), 10, replace=False)
    fq = ArchLatencyPredictor(nb201, reference=ref).fit([keys[i] for i in few], lat[target].to_numpy()[few])
    assert spearmanr(fq.predict([keys[i] for i in te]), true).statistic > 0.9


def test_bad_input_errors(ofa, nb201, tmp_path):
    archs = ofa.sample(5, seed=0)
    q = ArchLatencyPredictor(ofa)
    with pytest.raises(HwlatError, match="before predict"):
        q.predict(archs)
    with pytest.raises(HwlatError, match="5 architectures"):
        q.fit(archs, [1.0, 2.0])
    with pytest.raises(HwlatError, match="positive"):
        q.fit(archs, [1.0, 2.0, -3.0, 1.0, 1.0])
    with pytest.raises(HwlatError, match="positive"):
        q.fit(archs, [1.0, 2.0, float("nan"), 1.0, 1.0])
    with pytest.raises(HwlatError, match="at least 3"):
        q.fit(archs[:2], [1.0, 2.0])
    with pytest.raises(HwlatError, match="resolution"):
        q.fit([{"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 100}] * 3, [1.0] * 3)
    with pytest.raises(HwlatError, match="columns"):
        q.fit(np.zeros((3, 5), np.int16), [1.0] * 3)
    with pytest.raises(HwlatError, match="unknown search space"):
        ArchLatencyPredictor("no-such-space")
    with pytest.raises(HwlatError, match="DataFrame"):
        ArchLatencyPredictor(nb201, reference={"a": [1.0]})
    keys = [nb201.key(a) for a in nb201.sample(20, seed=1)]
    with pytest.raises(HwlatError, match="not numeric"):
        ArchLatencyPredictor(nb201, reference=pd.DataFrame({"dev": ["x"] * 20}, index=keys))
    with pytest.raises(HwlatError, match="positive"):
        ArchLatencyPredictor(nb201, reference=pd.DataFrame({"dev": [-1.0] * 20}, index=keys))
    bad_ref = pd.DataFrame({"dev": np.ones(20)}, index=["|bogus~0|"] * 20)
    with pytest.raises(HwlatError):
        ArchLatencyPredictor(nb201, reference=bad_ref).fit(keys[:5], np.ones(5))
    with pytest.raises(HwlatError, match="cannot read"):
        ArchLatencyPredictor.load(tmp_path / "nothing-here")
    with pytest.raises(HwlatError, match="nothing fitted"):
        q.save(tmp_path / "empty")
