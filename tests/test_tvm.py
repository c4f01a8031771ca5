"""TVM backend: real compiles, a real RPC tracker with real servers, real MetaSchedule tuning."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.needs_tvm
tvm = pytest.importorskip("tvm")

from hwlat.device import DeviceConfig  # noqa: E402
from hwlat.errors import HwlatError  # noqa: E402
from hwlat.kernel_onnx import kernel_model, random_inputs  # noqa: E402
from hwlat.profilers import get_backend  # noqa: E402
from hwlat.profilers.base import BuildInput, BuildResult, LocalRunner  # noqa: E402
from hwlat.protocol import Protocol  # noqa: E402

KEYS = [
    "conv-relu_i14x14x16_o14x14x32_k3_s1_g1",
    "conv-hswish_i28x28x24_o28x28x24_k3_s1_g24",
    "se-relu-hsigmoid_i14x14x48_o14x14x48_m12",
    "add-relu_i14x14x40+14x14x40_o14x14x40",
    "gemm_i256_o100",
    "maxpool_i28x28x16_o14x14x16_k3_s2",
    "shuffle_i14x14x48_o14x14x48_g2",
    "split_i14x14x48_o14x14x24_n2",
    "concat-shuffle-split_i14x14x24+14x14x24_o14x14x48_g2_n2",
    "concat-add_i14x14x16+14x14x16+14x14x32_o14x14x32",
]
KEY = "tvm-test"


# -- a real tracker and real servers, each in its own process group ------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class Farm:
    """``python -m tvm.exec.rpc_tracker`` + servers; a session's worker processes outlive their
    server, so each server gets its own process group and the whole group is killed."""

    def __init__(self, n_servers: int, key: str = KEY, standalone: int = 0):
        self.procs: list[subprocess.Popen] = []
        self.servers: dict[str, subprocess.Popen] = {}
        self.key = key
        try:
            self.tracker_port = free_port()
            self._spawn("rpc_tracker", "--port", str(self.tracker_port), "--port-end", str(self.tracker_port + 1))
            wait_port(self.tracker_port)
            for _ in range(n_servers):
                p = free_port()
                proc = self._spawn("rpc_server", "--port", str(p), "--port-end", str(p + 1),
                                   "--tracker", self.tracker, "--key", key)
                self.servers[f"127.0.0.1:{p}"] = proc
            self.standalone = []
            for _ in range(standalone):
                p = free_port()
                self._spawn("rpc_server", "--port", str(p), "--port-end", str(p + 1))
                self.standalone.append(f"127.0.0.1:{p}")
            from hwlat.profilers.tvm.rpc import tracker_servers

            end = time.monotonic() + 120
            while tracker_servers("127.0.0.1", self.tracker_port, key)[1] < n_servers:
                if time.monotonic() > end:
                    raise RuntimeError("RPC servers did not register with the tracker")
                time.sleep(0.3)
            for addr in self.standalone:
                wait_port(int(addr.rsplit(":", 1)[1]))
        except BaseException:
            self.stop()
            raise

    @property
    def tracker(self) -> str:
        return f"127.0.0.1:{self.tracker_port}"

    def _spawn(self, module: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", f"tvm.exec.{module}", "--host", "127.0.0.1", *args,
                                 *(["--silent"] if module == "rpc_tracker" else [])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def stop(self) -> None:
        for p in self.procs:
            self.kill(p)


@pytest.fixture(scope="module")
def farm():
    f = Farm(2, standalone=1)
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def backend():
    return get_backend("tvm")


@pytest.fixture(scope="module")
def host_builds(backend, tmp_path_factory):
    dev = DeviceConfig(name="host-tvm", backend="tvm")
    builds = backend.builder(dev, tmp_path_factory.mktemp("dev")).build([BuildInput(k, kernel_model(k)) for k in KEYS])
    assert [b.error for b in builds] == [None] * len(KEYS)
    return builds


def _rpc_device(farm, **options) -> DeviceConfig:
    return DeviceConfig(name="farm-tvm", backend="tvm", rpc_tracker=farm.tracker, rpc_key=farm.key, options=options)


# -- local ---------------------------------------------------------------------------------------

def test_probe_reports_what_the_build_can_target(backend):
    info = backend.probe()
    assert info.available and info.version.startswith("0.")
    d = info.details
    assert d["llvm_version"] >= 10 and "llvm" in d["codegen_kinds"] and d["runtimes"]["llvm"] is True
    assert "aarch64" in d["llvm_arches"] and d["host_target"]["kind"] == "llvm" and d["host_target"]["mcpu"]
    assert d["hexagon"]["available"] is False and d["hexagon"]["codegen"] is True


def test_target_forms_and_bad_targets(backend):
    from hwlat.profilers.tvm.target import resolve_target

    host = resolve_target(None, threads=1)
    assert host["kind"] == "llvm" and host["mcpu"] == tvm.target.codegen.llvm_get_system_cpu()
    assert resolve_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon") == {
        "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon"]}
    assert resolve_target('{"kind": "llvm", "mcpu": "skylake"}')["mcpu"] == "skylake"
    hx = resolve_target({"kind": "hexagon", "mtriple": "hexagon", "mcpu": "hexagonv68"})
    assert hx["vtcm-capacity"] > 0 and "+hvxv68" in hx["mattr"]
    for bad in ("llvm -mcpu=no-such-cpu", {"kind": "no-such-kind"}, "no-such-target", "{not json", "llvm mcpu"):
        with pytest.raises(HwlatError):
            resolve_target(bad)
    with pytest.raises(HwlatError):
        backend.builder(DeviceConfig(name="bad", backend="tvm", target="llvm -mcpu=no-such-cpu"), Path("."))
    with pytest.raises(HwlatError, match="another CPU"):
        backend.builder(DeviceConfig(name="arm", backend="tvm", target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"}),
                        Path("."))


def test_local_kernels_match_onnxruntime(backend, host_builds):
    import onnxruntime as ort

    dev = DeviceConfig(name="host-tvm", backend="tvm")
    for key, b in zip(KEYS, host_builds):
        assert Path(b.artifact).suffix == ".so"
        model = kernel_model(key)
        feeds = random_inputs(model, seed=1)
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        with backend.session(b.artifact, dev) as s:
            out = s.infer(feeds)
        assert len(out) == len(ref)
        for a, r in zip(out, ref):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4, err_msg=key)
    results = list(backend.runner(dev).run(host_builds[:3], Protocol.quick()))
    assert isinstance(backend.runner(dev), LocalRunner)
    assert all(r.error is None and r.measurement.median_ms > 0 for r in results)


def test_kernels_follow_relax_fusion():
    """A TVM kernel is what Relax runs as one TIR function: in a ShuffleNet, the concat, channel
    shuffle and split of each unit are one fused function per call site, and so one hwlat kernel."""
    from hwlat.fusion import default_rules
    from hwlat.ir import load_onnx, model_kernels, torch_to_onnx
    from hwlat.profilers.tvm.builder import prepare, tir_calls, to_relax
    from hwlat.profilers.tvm.target import host_target
    from hwlat.zoo_nets import shufflenet_v2

    proto = load_onnx(torch_to_onnx(shufflenet_v2(0.5).eval(), (1, 3, 64, 64)))
    calls = tir_calls(prepare(to_relax(proto), host_target(1)))
    keys = model_kernels(proto, default_rules("tvm")).keys
    fused = [c for c in calls if "concatenate" in c]
    assert fused and all("reshape" in c and "transpose" in c for c in fused)
    assert len(fused) == sum(k.startswith("concat-shuffle") for k in keys)
    assert sum("split" in c for c in fused) == sum(k.startswith("concat-shuffle-split") for k in keys) > 0
    assert len(calls) == len(keys)   # here every kernel is one TIR call
    assert not any(k.startswith(("concat_", "shuffle_", "split_")) for k in keys)
    # other runtimes keep the three kernels apart
    ort_keys = model_kernels(proto, default_rules("onnxruntime")).keys
    assert any(k.startswith("shuffle_") for k in ort_keys) and not any(k.startswith("concat-") for k in ort_keys)


def _workloads(proto) -> set:
    """The structural hashes of the TIR workloads (tuning tasks) ``proto`` compiles to on the host."""
    import tvm_ffi

    from hwlat.profilers.tvm import tuning
    from hwlat.profilers.tvm.builder import prepare, to_relax
    from hwlat.profilers.tvm.target import host_target

    t = host_target(1)
    return {tvm_ffi.structural_hash(task.dispatched[0]["main"], map_free_vars=True)
            for task in tuning.extract_tasks(prepare(to_relax(proto), t), t)}


def _residual_onnx(residual_first: bool, downsample: bool):
    """conv(x) + r written either way; with ``downsample`` the residual is a second conv computed
    after the main branch (a ResNet block)."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(16, 16, 1)
            self.conv = torch.nn.Conv2d(16, 16, 1)
            self.down = torch.nn.Conv2d(16, 16, 1)

        def forward(self, x):
            y = self.conv(torch.relu(self.conv1(x)))
            r = self.down(x) if downsample else x
            return torch.relu(r + y if residual_first else y + r)

    from hwlat.ir import load_onnx, torch_to_onnx

    torch.manual_seed(0)
    return load_onnx(torch_to_onnx(Block().eval(), (1, 16, 14, 14)), canonical=False)


def test_residuals_written_either_way_are_one_tuning_workload():
    """A tuning record is found by the TIR workload: ``r + conv(x)`` must compile to the same
    workload as the profiled kernel ``conv(x) + r``, or the network runs some other schedule."""
    import onnxruntime as ort

    from hwlat.profilers.tvm.builder import canonical_operands

    kernel = _workloads(kernel_model("conv-add-relu_i14x14x16+14x14x16_o14x14x16_k1_s1_g1"))
    for downsample in (False, True):
        a, b = (_residual_onnx(first, downsample) for first in (True, False))
        assert a.graph.node[-2].input[:] != b.graph.node[-2].input[:]   # really written two ways
        wa, wb = _workloads(a), _workloads(b)
        assert wa == wb
        assert kernel <= wa          # the conv + residual + relu kernel is one of the network's tasks
        # the reordered graph computes the same (ORT's Conv+Add fusion depends on the order, so
        # the last bits may differ)
        x = np.random.default_rng(0).standard_normal((1, 16, 14, 14)).astype(np.float32)
        for m in (a, b):
            outs = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
                    .run(None, {p.graph.input[0].name: x})[0] for p in (m, canonical_operands(m))]
            np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    # a graph already in order is returned as it is
    b = _residual_onnx(False, False)
    assert canonical_operands(b) is b


def test_a_ghost_shortcut_conv_takes_the_residual_add_as_relax_fuses_it():
    """GhostNet: the add joins a concat (the ghost module) and a 1x1 shortcut conv. Relax fuses
    the add into the conv; hwlat's TVM kernels must be that conv-add and a lone concat, and every
    workload of the network one of its kernels' workloads."""
    import torch

    from hwlat.fusion import default_rules
    from hwlat.ir import load_onnx, model_kernels, torch_to_onnx

    class Ghost(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.primary = torch.nn.Conv2d(8, 8, 1)
            self.cheap = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.short = torch.nn.Conv2d(8, 16, 1)

        def forward(self, x):
            p = torch.relu(self.primary(x))
            return torch.cat([p, self.cheap(p)], 1) + self.short(x)

    proto = load_onnx(torch_to_onnx(Ghost().eval(), (1, 8, 14, 14)), canonical=False)
    keys = model_kernels(proto, default_rules("tvm")).keys
    assert any(k.startswith("conv-add_") for k in keys) and any(k.startswith("concat_") for k in keys)
    assert not any(k.startswith("concat-add") for k in keys)
    # ONNX Runtime runs the add alone (its blocked conv does not take a concat's output)
    assert any(k.startswith("add_") for k in model_kernels(proto, default_rules("onnxruntime")).keys)
    mine = set().union(*(_workloads(kernel_model(k)) for k in keys))
    assert _workloads(proto) <= mine


def test_pool_attributes_that_change_nothing_do_not_change_the_workload():
    """SqueezeNet's ceil-mode max pools (79 -> 39, the floor gives the same) and DenseNet's
    average pools with count_include_pad and no padding are the workloads of their kernels; a
    ceil mode that adds an output row is kept."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from hwlat.profilers.tvm.builder import canonical_pools

    def pool(op, hw, **attrs):
        node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3] if op == "MaxPool" else [2, 2],
                                strides=[2, 2], **attrs)
        g = helper.make_graph([node], "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    x = np.random.default_rng(0).standard_normal((1, 8, 80, 80)).astype(np.float32)
    cases = [(pool("MaxPool", 79, ceil_mode=1), "maxpool_i79x79x8_o39x39x8_k3_s2", True),
             (pool("AveragePool", 78, count_include_pad=1), "avgpool_i78x78x8_o39x39x8_k2_s2", True),
             (pool("MaxPool", 80, ceil_mode=1), None, False)]        # 80 -> 40 with ceil, 39 with floor
    for m, key, same in cases:
        c = canonical_pools(m)
        assert (c is not m) == same
        if key:
            assert _workloads(m) == _workloads(kernel_model(key))
        hw = m.graph.input[0].type.tensor_type.shape.dim[3].dim_value
        feed = {"x": np.ascontiguousarray(x[..., :hw, :hw])}
        outs = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
                for p in (m, c)]
        assert np.array_equal(outs[0], outs[1])


def test_ops_run_counts_the_tir_functions_tvm_launches(backend, host_builds, tmp_path):
    """TVM reports what it runs (the TIR calls of the fused ``main``, kept with each build), so
    fusion detection can count rather than time: a fused activation adds no launch, an op that
    Relax does not fuse adds one."""
    from hwlat.kernels import Kernel

    dev = DeviceConfig(name="host-tvm", backend="tvm")
    ops = {b.key: backend.ops_run(b.artifact, dev) for b in host_builds}
    assert all(o for o in ops.values()), ops
    # each of these is one kernel of hwlat, and one TIR function of TVM
    for key in KEYS[:2] + KEYS[3:5]:
        assert len(ops[key]) == 1, (key, ops[key])
    conv = Kernel("conv", ((14, 14, 16),), (14, 14, 32), (("k", 3), ("s", 1), ("g", 1)))
    relu = Kernel("relu", ((14, 14, 32),), (14, 14, 32))
    fused = Kernel("conv-relu", ((14, 14, 16),), (14, 14, 32), (("k", 3), ("s", 1), ("g", 1)))
    # two MatMuls in a row: an op of the same pattern is never absorbed
    from onnx import TensorProto, helper, numpy_helper

    ws = [numpy_helper.from_array(np.full((64, 64), 0.01, np.float32), f"w{i}") for i in range(2)]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("MatMul", ["h", "w1"], ["y"])],
                              "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], ws)
    two = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    builds = backend.builder(dev, tmp_path).build([BuildInput(k.key, kernel_model(k)) for k in (conv, relu, fused)]
                                                  + [BuildInput("gemm-gemm", two)])
    assert [b.error for b in builds] == [None] * 4
    n = {b.key: len(backend.ops_run(b.artifact, dev)) for b in builds}
    assert n[fused.key] == n[conv.key] == 1 and n[relu.key] == 1
    assert n["gemm-gemm"] == 2


def test_errors_are_values(backend, tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])
    dynamic = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)])
    dynamic.ir_version = 8
    dev = DeviceConfig(name="host-tvm", backend="tvm")
    res = backend.builder(dev, tmp_path).build([BuildInput("dyn", dynamic), BuildInput(KEYS[4], kernel_model(KEYS[4]))])
    assert "dynamic shape" in res[0].error and res[1].error is None
    runs = list(backend.runner(dev).run([BuildResult("gone", str(tmp_path / "missing.so")), res[0]], Protocol.quick()))
    assert runs[0].error and "does not exist" in runs[0].error and runs[1].error == res[0].error


def test_compiled_so_runs_in_relax_vm_like_onnxruntime(backend, tmp_path):
    import onnxruntime as ort
    from tvm import relax

    from conftest import tiny_net
    from hwlat.ir import torch_to_onnx

    model = torch_to_onnx(tiny_net(), (1, 3, 32, 32))
    model.graph.name = "tiny"
    path = backend.compile(model, tmp_path, DeviceConfig(name="host-tvm", backend="tvm"))
    assert path == tmp_path / "tiny.so"
    meta = json.loads((tmp_path / "tiny.so.json").read_text())
    assert meta["tuned"] is False and meta["versions"]["tvm"] == tvm.__version__ and meta["target"]["kind"] == "llvm"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {model.graph.input[0].name: x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_cross_target_without_toolchain_exports_tar(backend, tmp_path):
    from hwlat.profilers.tvm.target import toolchain

    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}
    model = kernel_model(KEYS[0])
    model.graph.name = "k"
    path = backend.compile(model, tmp_path, DeviceConfig(name="arm", backend="tvm", target=arm))
    suffix = toolchain(arm)[0]
    assert path.suffix == suffix and path.stat().st_size > 1000
    if suffix == ".tar":
        import tarfile

        with tarfile.open(path) as tf:
            assert any(n.endswith(".o") for n in tf.getnames())


# -- tuning -----------------------------------------------------------------------------------

def test_tuning_fills_the_device_database_and_speeds_the_kernel_up(backend, tmp_path):
    from hwlat.protocol import measure_session

    key = "conv-relu_i14x14x32_o14x14x32_k3_s1_g1"
    times = {}
    for trials in (0, 8):
        dev = DeviceConfig(name="host-tvm", backend="tvm", options={"tune_trials": trials})
        b = backend.builder(dev, tmp_path).build([BuildInput(key, kernel_model(key))])[0]
        assert b.error is None
        meta = json.loads(Path(b.artifact + ".json").read_text())
        assert meta["tuned"] is (trials > 0)
        with backend.session(b.artifact, dev) as s:
            times[trials] = measure_session(s, Protocol.quick()).median_ms
    db = tmp_path / "tvm_tuning"
    records = (db / "database_tuning_record.json").read_text().strip().splitlines()
    assert len(records) >= 1 and (db / "database_workload.json").stat().st_size > 0
    assert meta["tuning"]["tuned_now"] == 1 and meta["tuning"]["trials"] == 8
    assert times[8] <= times[0], times

    # the same kernel inside a whole model compiles with the device's record
    from torch import nn

    from hwlat.ir import torch_to_onnx

    net = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 16, 1)).eval()
    model = torch_to_onnx(net, (1, 32, 14, 14))
    model.graph.name = "two"
    out = tmp_path / "deploy"
    path = backend.compile(model, out, DeviceConfig(name="host-tvm", backend="tvm",
                                                    options={"device_dir": str(tmp_path)}))
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["tuning"]["tasks"] == 2 and meta["tuning"]["tuned_before"] == 1 and meta["tuned"] is True


@pytest.mark.slow
def test_tuning_measures_on_the_remote_devices(backend, farm, tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from hwlat.profilers.tvm.tuning import make_ms_runner

    dev = _rpc_device(farm, tune_trials=4)
    assert isinstance(make_ms_runner(dev, {"kind": "llvm"}), ms.runner.RPCRunner)
    key = "conv-relu_i7x7x32_o7x7x32_k3_s1_g1"
    b = backend.builder(dev, tmp_path).build([BuildInput(key, kernel_model(key))])[0]
    assert b.error is None
    meta = json.loads(Path(b.artifact + ".json").read_text())
    assert meta["tuning"]["tuned_now"] == 1 and meta["tuning"]["trials"] == 4
    records = [json.loads(line) for line in (tmp_path / "tvm_tuning" / "database_tuning_record.json").open()]
    run_secs = [r[1][1] for r in records if r[1][1]]          # [workload, [trace, run_secs, ...]]
    assert 1 <= len(records) <= 4 and run_secs and all(0 < float(t[0]) < 1 for t in run_secs)


# -- RPC -------------------------------------------------------------------------------------

def test_backend_picks_the_rpc_runner(backend, farm):
    from hwlat.profilers.tvm.rpc import TVMRpcRunner

    assert isinstance(backend.runner(_rpc_device(farm)), TVMRpcRunner)
    with pytest.raises(HwlatError):
        TVMRpcRunner(DeviceConfig(name="x", backend="tvm", rpc_tracker="nohostport", rpc_key="k"))


def test_farm_measures_on_every_server_through_the_tracker(farm, host_builds):
    from hwlat.profilers.tvm.rpc import TVMRpcRunner

    runner = TVMRpcRunner(_rpc_device(farm))
    try:
        results = list(runner.run(host_builds, Protocol.quick()))
    finally:
        runner.close()
    assert sorted(r.key for r in results) == sorted(KEYS)
    assert [r.error for r in results] == [None] * len(KEYS)
    assert {r.worker for r in results} == set(farm.servers)          # both devices worked
    split = next(r for r in results if r.key.startswith("split"))
    # timed on the device: a few-microsecond kernel, not an RPC round trip
    assert split.measurement.median_ms < 0.1


def test_direct_server_address(farm, host_builds):
    from hwlat.profilers.tvm.rpc import TVMRpcRunner

    dev = DeviceConfig(name="one", backend="tvm", rpc_address=farm.standalone[0])
    runner = TVMRpcRunner(dev)
    try:
        results = list(runner.run(host_builds[:2] + [BuildResult("broken", None, "no build")], Protocol.quick()))
    finally:
        runner.close()
    by_key = {r.key: r for r in results}
    assert by_key["broken"].error == "no build"
    assert all(by_key[k].measurement is not None and by_key[k].worker == farm.standalone[0] for k in KEYS[:2])


def test_unreachable_tracker_is_an_error_value(host_builds):
    from hwlat.profilers.tvm.rpc import TVMRpcRunner

    dev = DeviceConfig(name="x", backend="tvm", rpc_tracker=f"127.0.0.1:{free_port()}", rpc_key="k",
                       options={"rpc_timeout": 2, "rpc_retries": 0})
    results = list(TVMRpcRunner(dev).run(host_builds[:2], Protocol.quick()))
    assert len(results) == 2 and all("tracker" in r.error for r in results)


def test_server_killed_mid_run_loses_only_its_current_kernel(backend, host_builds, tmp_path):
    from hwlat.profilers.tvm.rpc import TVMRpcRunner

    big = "conv_i56x56x64_o56x56x64_k3_s1_g1"       # untuned: tens of ms per run
    big_build = backend.builder(DeviceConfig(name="host-tvm", backend="tvm"), tmp_path).build(
        [BuildInput(big, kernel_model(big))])[0]
    farm = Farm(3, key="tvm-kill")
    try:
        # 1. eight kernels on three servers; one server dies after its first result
        runner = TVMRpcRunner(_rpc_device(farm, rpc_timeout=10))
        slow = Protocol(warmup_ms=5, trials=4, min_trial_ms=40, max_retries=0, passes=1)
        results, victim = [], None
        for r in runner.run(host_builds, slow):
            results.append(r)
            if victim is None:
                victim = r.worker
                farm.kill(farm.servers[victim])
        runner.close()
        assert sorted(r.key for r in results) == sorted(KEYS)
        assert [r.error for r in results] == [None] * len(KEYS)
        assert runner.lost and runner.lost[0][1] == victim           # its kernel was re-queued ...
        assert all(r.worker != victim for r in results[1:])          # ... and measured by the others
        assert {r.worker for r in results[1:]} == set(farm.servers) - {victim}

        # 2. the survivor that ran dry takes back the kernel of a server dying after it finished
        runner = TVMRpcRunner(_rpc_device(farm, rpc_timeout=10))
        quick = Protocol(warmup_ms=2, trials=3, min_trial_ms=1, max_retries=0, passes=1)
        split = next(b for b in host_builds if b.key.startswith("split"))
        results = []
        for r in runner.run([split, big_build], quick):
            results.append(r)
            if len(results) == 1:
                assert r.key == split.key
                busy = next(s for s in runner.servers if s != r.worker)
                farm.kill(farm.servers[busy])
        runner.close()
        assert [r.error for r in results] == [None, None]
        assert results[1].key == big and results[1].worker == results[0].worker
        assert runner.lost[0][:2] == (big, busy)
    finally:
        farm.stop()
