"""Real profiles on ONNX Runtime: small budgets, real sessions, real interruption."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

import hwlat
from hwlat.errors import DeviceBusyError, HwlatError
from hwlat.predictors.fit import MAX_PASS_SPREAD
from hwlat.protocol import Protocol
from hwlat.store import DeviceStore

QUICK = Protocol(warmup_ms=1.0, trials=3, min_trial_ms=0.3, max_retries=0, passes=2)


def _profile(name, home, **kw):
    args = dict(device=name, backend="onnxruntime", threads=1, spaces=[], budget_minutes=2, lut_dir=home / "devices",
                protocol=QUICK, prior=60, arch_samples=0, detect_fusion=False, adaptive=False)
    args.update(kw)
    return hwlat.profile(**args)


def test_profile_store_predict_round_trip(hwlat_home, tiny_onnx, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.onnx").write_bytes(tiny_onnx.read_bytes())
    dev = _profile("dev-a", hwlat_home, models=str(models))
    s = dev.summary
    assert s["kernels_measured"] >= 60 and s["errors"] == 0
    manifest = json.loads((dev.path / "device.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["device"]["backend"] == "onnxruntime"
    assert manifest["versions"]["onnxruntime"] and manifest["host"]["cores"] >= 1
    assert manifest["call_overhead_ms"] > 0
    lut = pd.read_csv(dev.path / "lut.csv")
    assert {"key", "latency_ms", "passes"} <= set(lut.columns) and (lut["latency_ms"] > 0).all()
    assert (lut["passes"] == 2).all()
    assert not list(dev.path.rglob("*.pkl"))
    assert (dev.path / "predictor" / "predictor.json").is_file()

    p = hwlat.load_predictor("dev-a", lut_dir=hwlat_home / "devices")
    b = p.breakdown(tiny_onnx)
    # the model's own kernels were profiled first (--models): all are LUT hits
    assert all(k["source"] == "lut" for k in b["kernels"])
    assert b["latency_ms"] == pytest.approx(sum(k["latency_ms"] for k in b["kernels"]), rel=1e-6)
    measured = hwlat.measure(tiny_onnx, backend="onnxruntime", threads=1, passes=2).median_ms
    assert 0.3 < b["latency_ms"] / measured < 3.0
    # a kernel never measured is estimated by a regressor, and says so
    keys, src, used = p.kernel_latencies(["conv-relu_i19x19x40_o19x19x72_k3_s1_g1"])
    assert src == ["model"] and keys[0] > 0 and used[0] in ("conv", "_global")


def test_models_only_profile_calibrates_on_other_networks(hwlat_home, tiny_onnx, tmp_path):
    """Without a search space the whole-model correction is still fitted, on fbnet and convnet
    networks measured whole (and their kernels), never on the user's own models."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.onnx").write_bytes(tiny_onnx.read_bytes())
    dev = _profile("dev-cal", hwlat_home, models=str(models), prior=0, arch_samples=4)
    store = DeviceStore.open("dev-cal", hwlat_home / "devices")
    try:
        nets = store.model_lut()
        sources = set(store.kernels()["source"])
    finally:
        store.close()
    # mobile networks and plain/residual CNNs, whose weights span 1-150 MB: one family alone
    # cannot tell weights from activations streamed
    assert sorted(nets["name"]) == sorted([f"fbnet-cal-{i:03d}" for i in range(4)]
                                          + [f"convnet-cal-{i:03d}" for i in range(4)])
    assert set(nets["family"]) == {"fbnet", "convnet"} and (nets["latency_ms"] > 0).all()
    assert {"models", "calibration"} <= sources
    # the correction is fitted on every network whose passes agree (a slow spell can spoil one)
    consistent = int(((nets["passes"] < 2) | (nets["fast_spread"] <= MAX_PASS_SPREAD)).sum())
    assert consistent >= 1
    assert dev.summary["fit"]["correction"]["fitted_on"] == consistent


def test_calibration_kernels_are_planned_right_after_the_prior_head():
    from hwlat.profiling import PRIOR_HEAD, calibration_first

    plan = ([("m0", "models")] + [(f"p{i}", "prior") for i in range(PRIOR_HEAD + 5)]
            + [(f"s{i}", "space:ofa-mbv3") for i in range(50)])
    out = calibration_first(plan, ["s40", "p2", "c0", "s10"])
    keys = [k for k, _ in out]
    # the user's models and the prior head first, then the calibration kernels not yet ahead, in order
    assert keys[:PRIOR_HEAD + 1] == ["m0"] + [f"p{i}" for i in range(PRIOR_HEAD)]
    assert keys[PRIOR_HEAD + 1:PRIOR_HEAD + 4] == ["s40", "c0", "s10"]
    assert dict(out)["s40"] == "space:ofa-mbv3" and dict(out)["c0"] == "calibration"
    assert sorted(keys) == sorted(dict.fromkeys([k for k, _ in plan] + ["c0"])) and len(keys) == len(set(keys))
    assert calibration_first(plan, []) == plan


def test_a_budget_that_ends_before_the_plan_still_measures_every_calibration_kernel(hwlat_home):
    """The whole-model correction is fitted on the calibration networks as the sum of their
    kernels: those kernels are measured before the rest of the plan, not left to regressors when
    the budget ends (before, a LiteRT int8 profile had measured 801 of its 1,135)."""
    from hwlat.search import spaces

    # measured: the calibration kernels are done ~40 s in, the plan (4,000 prior kernels) needs minutes
    dev = _profile("dev-calfirst", hwlat_home, prior=4000, arch_samples=2, budget_minutes=1.5)
    assert dev.summary["budget_exhausted"]
    p = hwlat.load_predictor("dev-calfirst", lut_dir=hwlat_home / "devices")
    store = DeviceStore.open("dev-calfirst", hwlat_home / "devices")
    try:
        nets, planned = store.model_lut(), len(store.kernels())
    finally:
        store.close()
    assert len(p.lut) < planned            # the plan did not finish
    assert set(nets["family"]) == {"fbnet", "convnet"}
    for fam, kernels in zip(nets["family"], nets["kernels"]):
        sp = spaces.get(fam)
        a = sp.parse(json.loads(kernels)[0])
        keys = p.kernels_of(sp.build(a), sp.input_shape(a)).keys
        assert keys and all(k in p.lut for k in keys), [k for k in keys if k not in p.lut]


@pytest.mark.parametrize("after", [False, True])
def test_calibration_networks_between_chunks_or_after_the_kernels(hwlat_home, tiny_onnx, tmp_path, monkeypatch,
                                                                   after):
    """Calibration networks are measured between kernel chunks (the host's state shared), or
    all after the kernels where the backend says profiling changes how fast networks run (TVM,
    whose networks ran 10-25% slower while kernels were still being tuned)."""
    from hwlat.profilers.onnxruntime.loader import OnnxRuntimeBackend

    monkeypatch.setattr(OnnxRuntimeBackend, "models_after_kernels", after)
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.onnx").write_bytes(tiny_onnx.read_bytes())
    _profile(f"dev-order-{after}", hwlat_home, models=str(models), prior=40, arch_samples=2)
    with sqlite3.connect(hwlat_home / "devices" / f"dev-order-{after}" / "measurements.sqlite") as c:
        last_kernel = c.execute("SELECT max(ts) FROM measurements").fetchone()[0]
        nets = [r[0] for r in c.execute("SELECT ts FROM models")]
    assert nets and last_kernel
    assert all(t >= last_kernel for t in nets) == after


def test_a_rerun_with_other_models_measures_their_kernels_and_nothing_twice(hwlat_home, tiny_onnx, tmp_path):
    """A finished profile re-run with other --models keeps its plan and appends the new models'
    kernels (before, the stored plan was resumed as it was and the new models were ignored)."""
    import torch
    from torch import nn

    from hwlat.ir import torch_to_onnx

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "tiny.onnx").write_bytes(tiny_onnx.read_bytes())
    net = nn.Sequential(nn.Conv2d(3, 24, 5, 1, 2), nn.ReLU(), nn.Conv2d(24, 40, 3, 2, 1), nn.ReLU()).eval()
    torch_to_onnx(net, (1, 3, 36, 36), b / "other.onnx")
    first = _profile("dev-more", hwlat_home, models=str(a), prior=20).summary
    p = hwlat.load_predictor("dev-more", lut_dir=hwlat_home / "devices")
    assert any(k["source"] != "lut" for k in p.breakdown(b / "other.onnx")["kernels"])
    second = _profile("dev-more", hwlat_home, models=str(b), prior=20).summary
    p = hwlat.load_predictor("dev-more", lut_dir=hwlat_home / "devices")
    assert all(k["source"] == "lut" for k in p.breakdown(b / "other.onnx")["kernels"])
    assert all(k["source"] == "lut" for k in p.breakdown(tiny_onnx)["kernels"])
    assert second["kernels_measured"] > first["kernels_measured"]
    rows, distinct = _count(hwlat_home / "devices" / "dev-more" / "measurements.sqlite")
    assert rows == distinct == 2 * second["kernels_measured"]


def test_unknown_space_and_bad_budget_write_nothing(hwlat_home):
    with pytest.raises(HwlatError, match="unknown search space"):
        _profile("dev-b", hwlat_home, spaces=["nope"])
    with pytest.raises(HwlatError, match="budget"):
        _profile("dev-b", hwlat_home, budget_minutes=0)
    assert not (hwlat_home / "devices" / "dev-b").exists()


def test_lock_refuses_a_second_profiler(hwlat_home):
    from hwlat.device import DeviceConfig

    cfg = DeviceConfig("dev-c", "onnxruntime")
    s1 = DeviceStore.create(cfg, hwlat_home / "devices").lock()
    try:
        with pytest.raises(DeviceBusyError):
            DeviceStore.create(cfg, hwlat_home / "devices").lock()
    finally:
        s1.close()
    DeviceStore.create(cfg, hwlat_home / "devices").lock().close()   # free again once released


def _count(db):
    c = sqlite3.connect(str(db))
    try:
        return c.execute("SELECT count(*), count(DISTINCT key || ':' || pass) FROM measurements").fetchone()
    finally:
        c.close()


def test_interrupted_profile_resumes_losing_at_most_one(hwlat_home):
    lut_dir = hwlat_home / "devices"
    cmd = [sys.executable, "-m", "hwlat.cli", "profile", "--backend", "onnxruntime", "--device", "dev-int",
           "--budget-minutes", "5", "--lut-dir", str(lut_dir), "--prior", "150", "--no-fusion-detection",
           "--no-adaptive", "--passes", "2", "--json"]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    db = lut_dir / "dev-int" / "measurements.sqlite"
    t0 = time.time()
    while time.time() - t0 < 120:
        if db.is_file():
            try:
                if _count(db)[0] >= 30:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.2)
    waited = time.time() - t0
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (waited, _count(db), out.decode()[-300:], err.decode()[-500:])
    assert b"resume" in err
    rows, distinct = _count(db)
    assert rows >= 30 and rows == distinct, (rows, distinct, err.decode()[-500:])

    # the re-run completes the same plan without measuring anything twice
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-800:]
    out = json.loads(proc.stdout)
    rows2, distinct2 = _count(db)
    why = (rows, rows2, distinct2, out, proc.stderr.decode()[-800:])
    assert rows2 == distinct2 == out["kernels_planned"] * 2, why
    assert out["measurements"] == rows2 - rows, why


def test_calibration_network_gets_more_passes_only_when_its_passes_disagree(hwlat_home):
    """A calibration network measured in a slow spell gets another pass (the store keeps its fastest
    pass); one whose passes agree does not, and no network gets more than two extra."""
    from hwlat.device import DeviceConfig
    from hwlat.profiling import ARCH_EXTRA_PASSES, Job

    job = Job(DeviceConfig("extra", "onnxruntime", threads=1), budget_minutes=1, lut_dir=hwlat_home / "devices",
              progress=False)
    job.arch_queue, job.arch_times = [], {}
    for ms in (5.0, 5.1, 5.05):
        job._more_passes("calm", ms)
    assert job.arch_queue == []
    for ms in (5.0, 6.4):
        job._more_passes("spell", ms)
    assert job.arch_queue == []                  # its scheduled passes are not all taken yet
    job._more_passes("spell", 5.1)
    assert job.arch_queue == [(3, "spell")]
    for ms in (6.3, 6.2, 6.1):
        job._more_passes("spell", ms)
    assert [p for p, n in job.arch_queue if n == "spell"] == [3, 4][:ARCH_EXTRA_PASSES]


def test_models_with_operators_of_their_own_are_profiled_and_predicted(hwlat_home, tmp_path):
    """A model with PRelu, instance norm, Erf, channel reductions and bilinear upsampling: its own
    kernels are measured by --models, so the prediction is made of LUT hits and lands near the
    measured latency (priced as elementwise ops instead, Resize and PRelu were 7-15x too cheap)."""
    from hwlat.zoo import export_module
    from tests.test_ir import _Odd

    models = tmp_path / "models"
    models.mkdir()
    path = export_module(_Odd(96).eval(), (1, 3, 96, 96), models / "odd.onnx")
    dev = _profile("dev-odd", hwlat_home, models=str(models), prior=30)
    assert dev.summary["errors"] == 0
    b = hwlat.load_predictor("dev-odd", lut_dir=hwlat_home / "devices").breakdown(path)
    own = [k for k in b["kernels"] if k["key"].split("_")[0] in ("prelu", "instnorm", "erf", "resize", "reducemax")]
    assert len(own) >= 5 and all(k["source"] == "lut" for k in b["kernels"])
    measured = hwlat.measure(path, backend="onnxruntime", threads=1, passes=2).median_ms
    assert 0.6 < b["latency_ms"] / measured < 1.6


def test_validate_reads_how_the_device_speed_moved_since_profiling(hwlat_home, tiny_onnx, tmp_path):
    """The drift probe re-measures some of the device's kernels: on an unchanged device the ratio
    is near 1; a LUT that holds twice the kernels' time reads as a device now twice as fast, and
    the drift-corrected score, not the headline one, takes it into account."""
    from hwlat.device import DeviceConfig
    from hwlat.validation import drift_probe, validate

    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.onnx").write_bytes(tiny_onnx.read_bytes())
    _profile("dev-drift", hwlat_home, models=str(models), prior=80)
    p = hwlat.load_predictor("dev-drift", lut_dir=hwlat_home / "devices")
    cfg = DeviceConfig.from_dict(p.manifest["device"])
    d = drift_probe(p, cfg, n=16, passes=2)
    assert d is not None and d["kernels"] >= 8
    assert 0.6 < d["speed_ratio"] < 1.6
    p.lut = {k: 2 * v for k, v in p.lut.items()}
    d2 = drift_probe(p, cfg, n=16, passes=2)
    assert 0.3 < d2["speed_ratio"] < 0.75

    r = validate("dev-drift", lut_dir=hwlat_home / "devices", models_dir=str(models), passes=1)
    assert r["drift"]["kernels"] >= 8 and set(r["drift_corrected"]) == {"rmspe", "acc_5pct", "acc_10pct", "bias"}
    # the corrected bias is the headline bias times the ratio: the same predictions, rescaled
    assert r["drift_corrected"]["bias"] == pytest.approx(r["bias"] * r["drift"]["speed_ratio"], rel=1e-6)
    assert "drift" not in validate("dev-drift", lut_dir=hwlat_home / "devices", models_dir=str(models), passes=1,
                                   drift=False)
