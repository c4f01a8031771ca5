"""ONNX -> Relax -> (tuned) compiled library, for single kernels and whole models.

Pipeline: ``from_onnx`` (static shapes, weights bound as constants) -> the shared preparation
(legalize + fuse; the same passes for tuning-task extraction and for compiling, so records found
while tuning match when compiling) -> MetaSchedule tuning of the missing tasks when the device
asks for trials -> apply the device's database -> lower -> ``tvm.compile`` -> export (``.so``
when a linker for the target exists, else ``.tar``). Next to each library a small JSON sidecar
says what it is: inputs, target, tuned tasks, versions.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Sequence

import onnx

from hwlat.device import DeviceConfig, write_json_atomic
from hwlat.errors import BadModelError
from hwlat.profilers.base import BuildInput, BuildResult, Builder

SIDECAR_SUFFIX = ".json"


def input_specs(model: onnx.ModelProto) -> list[dict]:
    """Name, static shape and dtype of each graph input (initializers excluded)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if any(d <= 0 for d in shape):
            raise BadModelError(f"input '{inp.name}' of the model has a dynamic shape {shape}: TVM builds "
                                f"static shapes only; export the model with a fixed input shape")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        out.append({"name": inp.name, "shape": shape, "dtype": dtype})
    return out


COMMUTATIVE = ("Add", "Mul", "Max", "Min")
ANCHORS = ("Conv", "ConvTranspose", "Gemm", "MatMul")       # Relax's kOutEWiseFusable ops
ELEMENTWISE = ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Elu", "Selu",
               "Add", "Mul", "Div", "Sub", "Neg", "Softplus", "Erf", "Abs", "Exp", "PRelu")


def canonical_operands(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with the operands of commutative ops in the order the kernel models use:
    first the operand that Relax's FuseOps will fuse into the op's kernel, then the others.

    A tuning record belongs to one TIR workload, and ``conv(x) + r`` and ``r + conv(x)`` are two
    workloads. PyTorch writes residuals both ways (``x + f(x)``, ``f(x) + x``), so a network's
    residual block missed the record tuned for its profiled kernel and ran a schedule tuned for
    another network: measured on MobileNetV3-Small, the 7x7x432->72 projection with its residual
    took 269 us in the network against 48 us as the profiled kernel. The fused operand is the one
    whose producer feeds this op alone (an operand used elsewhere, like a block's input, stays
    outside the kernel); of several such, one that a convolution or matrix product heads (through
    elementwise ops) before one that a concat or another injective op does (GhostNet's shortcut
    conv takes the add from the concat), and the earliest produced among equals (FuseOps walks the
    graph in order and the first producer takes the op: a ResNet block's main branch, not its
    downsample). Floating-point addition, multiplication, max and min commute exactly, so the
    reordered model computes the same."""
    from hwlat.ir import Graph

    g = Graph(model)
    index = {id(n): i for i, n in enumerate(g.nodes)}

    def produced(v: str) -> int | None:
        """Position of the (non-constant) node that computes ``v``."""
        p = g.producer.get(v)
        return None if p is None or p.op_type == "Constant" else index[id(p)]

    def uses(v: str) -> int:
        return len(g.consumers.get(v, [])) + (v in g.outputs)

    def anchored(v: str) -> bool:
        """Is ``v`` the end of a chain a convolution or matrix product heads?"""
        for _ in range(8):
            if produced(v) is None:
                return False
            node = g.producer[v]
            if node.op_type in ANCHORS:
                return True
            if node.op_type not in ELEMENTWISE:
                return False
            ins = [x for x in node.input if produced(x) is not None]
            if len(ins) != 1 or uses(ins[0]) != 1:
                return False
            v = ins[0]
        return False

    order = []
    for i, node in enumerate(g.nodes):
        if node.op_type not in COMMUTATIVE or len(node.input) != 2 or not all(node.input):
            continue
        fusable = [v for v in node.input if produced(v) is not None and uses(v) == 1]
        if not fusable:
            continue
        first = min(fusable, key=lambda v: (not anchored(v), produced(v)))
        if node.input[0] != first:
            rest = list(node.input)
            rest.remove(first)
            order.append((i, [first] + rest))
    if not order:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, new in order:
        del out.graph.node[i].input[:]
        out.graph.node[i].input.extend(new)
    return out


def canonical_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """Pooling attributes that change nothing, dropped: ``ceil_mode`` where the floor gives the
    same output size (SqueezeNet's 79 -> 39 max pools) and ``count_include_pad`` without padding
    (DenseNet's transitions). Relax lowers them to another workload (a padded copy, another
    divisor), so the network missed the record tuned for its kernel, which is built without them."""
    pools = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type in ("MaxPool", "AveragePool")]
    if not pools:
        return model
    shapes = None
    edits = []
    for i, node in pools:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        drop = []
        pads = list(attrs.get("pads", [])) or [0, 0, 0, 0]
        if attrs.get("count_include_pad") and not any(pads):
            drop.append("count_include_pad")
        if attrs.get("ceil_mode") and not any(d != 1 for d in attrs.get("dilations", [1, 1])):
            if shapes is None:
                from hwlat.ir import Graph

                shapes = Graph(model if model.graph.value_info else onnx.shape_inference.infer_shapes(model)).shapes
            hw = list(shapes.get(node.input[0], ()))[2:]
            k, st = attrs.get("kernel_shape", []), attrs.get("strides", [1] * len(hw))
            if hw and all(h > 0 for h in hw) and len(k) == len(hw):
                n = len(hw)
                spans = [hw[j] + pads[j] + pads[j + n] - k[j] for j in range(n)]
                if all(sp // st[j] == -(-sp // st[j]) for j, sp in enumerate(spans)):
                    drop.append("ceil_mode")
        if drop:
            edits.append((i, drop))
    if not edits:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, drop in edits:
        node = out.graph.node[i]
        keep = [a for a in node.attribute if a.name not in drop]
        del node.attribute[:]
        node.attribute.extend(keep)
    return out


def to_relax(model: onnx.ModelProto):
    from tvm.relax.frontend.onnx import from_onnx

    model = canonical_pools(canonical_operands(model))
    specs = input_specs(model)
    return from_onnx(model, shape_dict={s["name"]: s["shape"] for s in specs},
                     dtype_dict={s["name"]: s["dtype"] for s in specs}, keep_params_in_input=False)


def prepare(mod, target: dict):
    """Legalize and fuse: the Relax module whose TIR functions are the tuning tasks."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline as rp

    t = tvm.target.Target(target)
    try:
        dispatch = rp.library_dispatch_passes(t)
    except ValueError:    # kinds without a Relax backend (hexagon, c, ...): no library dispatch
        dispatch = []
    try:
        legalize = rp.legalize_passes(t)
    except ValueError:    # ... and the generic legalize + fuse the CPU backend uses
        legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                    relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with t:
        seq = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
               *dispatch, *legalize]
        return tvm.transform.Sequential(seq)(mod)


_CALL = re.compile(r"R\.(call_tir\w*|call_dps_packed|call_packed)\(\s*(?:cls\.)?\"?([\w.]+)")


def tir_calls(prepared) -> list[str]:
    """The functions ``main`` of a prepared (legalized, fused) module calls, in order: the kernels
    the VM will launch (``fused_conv2d_add_relu``, ...). One name per launch; fusion detection
    counts them (an activation fused into a convolution adds none)."""
    return [name for _, name in _CALL.findall(prepared["main"].script(show_meta=False))]


def _lower_passes():
    from tvm import relax

    # the CPU backend does not export its lowering lists in 0.27 (relax.pipeline's helpers raise
    # AttributeError for llvm); these are the ones its default pipeline runs
    return [relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(), relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(), relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(), relax.transform.VMShapeLower(),
            relax.transform.AttachGlobalSymbol()]


def compile_prepared(prepared, target: dict, database=None):
    """Apply the tuning records (if any) and compile a prepared module to a VM executable."""
    import contextlib

    import tvm
    from tvm import relax
    from tvm.relax.backend.utils import BackendDispatcher

    t = tvm.target.Target(target)
    db_ctx = database if database is not None else contextlib.nullcontext()
    with t, db_ctx, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase()(prepared) if database is not None else prepared
        if BackendDispatcher.is_gpu_target(t):
            from tvm.s_tir import dlight as dl

            # GPU kernels must bind threads to run at all; dlight schedules what tuning did not
            mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                          dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
        return tvm.compile(mod, t, relax_pipeline=tvm.transform.Sequential(_lower_passes()))


def versions() -> dict:
    import tvm

    out = {"tvm": tvm.__version__}
    try:
        from importlib.metadata import version

        out["tvm_ffi"] = version("apache-tvm-ffi")
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        from tvm.target import codegen

        out["llvm"] = codegen.llvm_version_major()
    except Exception:  # noqa: BLE001
        pass
    return out


def read_sidecar(artifact: str | Path) -> dict:
    p = Path(str(artifact) + SIDECAR_SUFFIX)
    if not p.is_file():
        return {}
    return json.loads(p.read_text())


def build_model(model: onnx.ModelProto, target: dict, stem: Path, device: DeviceConfig, db_dir: Path | None,
                *, trials: int = 0, kind: str = "kernel", workers=None, database=None) -> tuple[Path, dict]:
    """Compile ``model`` for ``target`` into ``<stem>.so|.tar`` (+ sidecar); tune first if asked.

    ``database``: the device's JSONDatabase when the caller keeps it open across many builds
    (reading it is the slow part once it holds hundreds of kernels); else opened from ``db_dir``.
    """
    from hwlat.profilers.tvm import target as tgt
    from hwlat.profilers.tvm import tuning

    specs = input_specs(model)
    prepared = prepare(to_relax(model), target)
    tune_models = (device.options or {}).get("tune_models", True)
    tuning_now = trials > 0 and db_dir is not None and (kind == "kernel" or tune_models)
    if database is None and db_dir is not None:
        database = tuning.open_database(db_dir, create=tuning_now)
    if tuning_now:
        b, r = workers() if workers is not None else (None, None)
        report = tuning.tune(prepared, target, db_dir, trials, device, builder=b, runner=r, database=database)
    else:
        tasks = tuning.extract_tasks(prepared, target) if database is not None else []
        report = tuning.TuneReport(tasks=len(tasks),
                                   tuned_before=sum(tuning.is_tuned(t, database, target) for t in tasks))
    if database is not None:
        tgt.load_tensor_intrinsics(target)   # tuned traces may tensorize
    ops = tir_calls(prepared)
    executable = compile_prepared(prepared, target, database)
    path = tgt.export(executable, stem, target, device.options)
    meta = {"inputs": specs, "target": target, "tuned": report.covered > 0,
            "tuned_fraction": round(report.covered / report.tasks, 3) if report.tasks else 0.0,
            "tuning": report.to_dict(), "tuning_db": str(db_dir) if db_dir else None,
            "toolchain": tgt.toolchain(target, device.options)[2], "versions": versions(), "kind": kind,
            "ops": ops}
    write_json_atomic(Path(str(path) + SIDECAR_SUFFIX), meta)
    return path, meta


class TVMBuilder(Builder):
    """Kernels and models of one device; libraries cached by content under ``<workdir>/tvm_build``."""

    def __init__(self, device: DeviceConfig, workdir: Path, target: dict):
        from hwlat.profilers.tvm import tuning

        self.device = device
        self.workdir = Path(workdir)
        self.target = target
        self.trials = int((device.options or {}).get("tune_trials", 0))
        self.db_dir = tuning.tuning_dir(device, self.workdir)
        self.out_dir = self.workdir / "tvm_build"
        self._ms_workers = None
        self._db = None

    def _database(self):
        """The device's records, read once per builder (None while there are none to apply)."""
        from hwlat.profilers.tvm import tuning

        if self._db is None:
            self._db = tuning.open_database(self.db_dir, create=self.trials > 0)
        return self._db

    def _workers(self):
        """MetaSchedule's builder and runner, started once and shared by every kernel tuned here."""
        from hwlat.profilers.tvm import tuning
        from hwlat.profilers.tvm.target import load_tensor_intrinsics

        if self._ms_workers is None:
            load_tensor_intrinsics(self.target)
            self._ms_workers = (tuning.make_ms_builder(self.device, self.target),
                                tuning.make_ms_runner(self.device, self.target))
        return self._ms_workers

    def _stem(self, inp: BuildInput) -> Path:
        from hwlat.profilers.tvm import tuning

        h = hashlib.sha256(inp.model.SerializeToString(deterministic=True))
        h.update(json.dumps(self.target, sort_keys=True).encode())
        # a library built without records must not be reused once the device has some
        h.update(f"{self.trials}:{tuning.has_records(self.db_dir)}".encode())
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in inp.key)[:80]
        return self.out_dir / f"{safe}-{h.hexdigest()[:12]}"

    def _close_workers(self) -> None:
        """Stop MetaSchedule's worker processes (they would otherwise live as long as the host)."""
        from hwlat.profilers.tvm import tuning

        workers, self._ms_workers = self._ms_workers, None
        tuning.close_workers(workers)

    def build(self, inputs: Sequence[BuildInput]) -> list[BuildResult]:
        try:
            return self._build(inputs)
        finally:
            self._close_workers()

    def _build(self, inputs: Sequence[BuildInput]) -> list[BuildResult]:
        out = []
        for inp in inputs:
            t0 = time.perf_counter()
            try:
                stem = self._stem(inp)
                cached = [p for p in (Path(str(stem) + ".so"), Path(str(stem) + ".tar"))
                          if p.is_file() and Path(str(p) + SIDECAR_SUFFIX).is_file()]
                if cached:
                    path = cached[0]
                else:
                    path, _ = build_model(inp.model, self.target, stem, self.device, self.db_dir,
                                          trials=self.trials, kind=inp.kind, workers=self._workers,
                                          database=self._database())
                out.append(BuildResult(inp.key, str(path), None, time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - one bad kernel must not stop a long profile
                msg = str(e).strip().splitlines()
                out.append(BuildResult(inp.key, None, f"{type(e).__name__}: {msg[0] if msg else ''}"[:500],
                                       time.perf_counter() - t0))
        return out
