"""MetaSchedule tuning: one JSON database per device, filled kernel by kernel, applied when compiling.

Untuned TVM kernels are tens of times slower than tuned ones, so a TVM latency table means
little unless the kernels were tuned, and a deployed model is only as fast as the table says if
it is compiled with the same records. The records live in ``<device dir>/tvm_tuning/``
(MetaSchedule's ``database_workload.json`` + ``database_tuning_record.json``); tasks are keyed
by the structure of their fused TIR function, so a kernel tuned alone is found again inside a
whole model whenever TVM fuses it the same way.

Candidates are measured where the kernels will run: locally, or on the remote device through
MetaSchedule's RPCRunner (tracker + key: every registered server at once; or one direct server).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from hwlat.device import DeviceConfig
from hwlat.errors import HwlatError

DB_FILES = ("database_workload.json", "database_tuning_record.json")


def tuning_dir(device: DeviceConfig, workdir: Path | None) -> Path:
    """Where the device's records live: option > the device's folder > the builder's workdir."""
    opts = device.options or {}
    if opts.get("tuning_dir"):
        return Path(opts["tuning_dir"])
    if opts.get("device_dir"):
        return Path(opts["device_dir"]) / "tvm_tuning"
    if workdir is None:
        raise HwlatError("no tuning directory: give the device's folder (options['device_dir'])")
    return Path(workdir) / "tvm_tuning"


def has_records(db_dir: Path) -> bool:
    p = Path(db_dir) / DB_FILES[1]
    return p.is_file() and p.stat().st_size > 0


def open_database(db_dir: Path, create: bool = False):
    """The device's JSONDatabase, or None when it has no records and ``create`` is false."""
    from tvm.s_tir import meta_schedule as ms

    db_dir = Path(db_dir)
    if not create and not has_records(db_dir):
        return None
    db_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")


def extract_tasks(prepared, target: dict) -> list:
    from tvm.s_tir import meta_schedule as ms
    import tvm

    return list(ms.relax_integration.extract_tasks(prepared, tvm.target.Target(target)))


def is_tuned(task, db, target: dict) -> bool:
    import tvm

    if db is None:
        return False
    mod = task.dispatched[0]
    return db.query_tuning_record(mod, tvm.target.Target(target), "main") is not None


@dataclass
class TuneReport:
    tasks: int = 0                    # TIR tasks in the module
    tuned_before: int = 0             # already in the database
    tuned_now: int = 0                # tuned by this call
    trials: int = 0                   # trials spent by this call
    seconds: float = 0.0
    names: list = field(default_factory=list)

    @property
    def covered(self) -> int:
        return self.tuned_before + self.tuned_now

    def to_dict(self) -> dict:
        return {"tasks": self.tasks, "tuned_before": self.tuned_before, "tuned_now": self.tuned_now,
                "tuned_tasks": self.covered, "trials": self.trials, "tune_seconds": round(self.seconds, 2)}


def _evaluator(device: DeviceConfig):
    from tvm.s_tir import meta_schedule as ms

    o = device.options or {}
    # candidates are ranked, not reported: a short, repeated timing is enough
    return ms.runner.EvaluatorConfig(number=int(o.get("tune_number", 3)), repeat=int(o.get("tune_repeat", 1)),
                                     min_repeat_ms=int(o.get("tune_min_repeat_ms", 20)),
                                     enable_cpu_cache_flush=bool(o.get("tune_cache_flush", False)))


def _direct_session(host: str, port: int, key: str, timeout: int, _rpc_config):
    from tvm import rpc

    return rpc.connect(host, port, key=key, session_timeout=timeout)


def make_ms_runner(device: DeviceConfig, target: dict):
    """MetaSchedule runner measuring candidates on the device itself."""
    from tvm.s_tir import meta_schedule as ms

    o = device.options or {}
    init = functools.partial(_worker_init, target)
    timeout = int(o.get("tune_session_timeout", 60))
    if device.rpc_tracker:
        from hwlat.profilers.tvm.rpc import parse_address, tracker_servers

        host, port = parse_address(device.rpc_tracker, "--rpc-tracker")
        # one measuring process per registered device: candidates go to all of them at once
        n = max(1, len(tracker_servers(host, port, device.rpc_key)[0]))
        cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=device.rpc_key,
                                  session_timeout_sec=timeout)
        return ms.runner.RPCRunner(cfg, _evaluator(device), max_workers=n, initializer=init)
    if device.rpc_address:
        from hwlat.profilers.tvm.rpc import parse_address

        host, port = parse_address(device.rpc_address, "rpc_address")
        cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct",
                                  session_timeout_sec=timeout)
        return ms.runner.RPCRunner(cfg, _evaluator(device), max_workers=1, initializer=init,
                                   f_create_session=functools.partial(_direct_session, host, port,
                                                                      o.get("rpc_server_key", ""), timeout))
    return ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=_evaluator(device), initializer=init)


def _worker_init(target: dict) -> None:
    """Runs in MetaSchedule's popen workers before any job."""
    from hwlat.profilers.tvm.target import load_tensor_intrinsics

    logging.getLogger("tvm").setLevel(logging.WARNING)
    load_tensor_intrinsics(target)


def make_ms_builder(device: DeviceConfig, target: dict):
    from hwlat.profilers.tvm.target import export_for_tuning

    o = device.options or {}
    return _pooled_builder_class()(
        max_workers=int(o.get("tune_build_workers", 1)), timeout_sec=float(o.get("tune_build_timeout", 60)),
        f_export=functools.partial(export_for_tuning, target=target, options=o),
        initializer=functools.partial(_worker_init, target))


@functools.cache
def _pooled_builder_class():
    """MetaSchedule's LocalBuilder, keeping its worker processes between batches.

    LocalBuilder starts a fresh pool for every batch (against a slow leak in long tuning runs);
    on a small machine that start (a Python process importing TVM) costs more than building
    the batch. Here the pool lives for ``recycle`` batches instead.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self, *, max_workers=1, timeout_sec=60.0, f_export=None, initializer=None, recycle=20):
            super().__init__()
            self.max_workers, self.timeout_sec = max_workers, timeout_sec
            self.f_export, self.initializer, self.recycle = f_export, initializer, recycle
            self._pool, self._uses = None, 0

        def build(self, build_inputs):
            if self._pool is None or self._uses >= self.recycle:
                if self._pool is not None:
                    self._pool.shutdown()
                self._pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec,
                                               initializer=self.initializer)
                self._uses = 0
            self._uses += 1
            args = [(None, self.f_export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            out = []
            for r in self._pool.map_with_error_catching(lambda x: _worker_func(*x), args):
                if r.status == StatusKind.COMPLETE:
                    out.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    out.append(BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
                else:
                    out.append(BuilderResult(None, f"build failed: {r.value}"))
            return out

        def close(self):
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    return PooledBuilder


def tune(prepared, target: dict, db_dir: Path, trials: int, device: DeviceConfig, *,
         only_missing: bool = True, log_dir: Path | None = None, builder=None, runner=None,
         database=None) -> TuneReport:
    """Tune the TIR tasks of a prepared module with ``trials`` trials each; records go to ``db_dir``.

    ``builder``/``runner`` (from ``make_ms_builder``/``make_ms_runner``) may be shared by many
    calls: their worker processes then start once per profile, not once per kernel.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from hwlat.profilers.tvm.target import load_tensor_intrinsics

    load_tensor_intrinsics(target)
    t0 = time.monotonic()
    tasks = extract_tasks(prepared, target)
    db = open_database(db_dir, create=True) if database is None else database
    rep = TuneReport(tasks=len(tasks), names=[t.task_name for t in tasks])
    todo = []
    for t in tasks:
        if only_missing and is_tuned(t, db, target):
            rep.tuned_before += 1
        else:
            todo.append(t)
    if not todo or trials <= 0:
        rep.seconds = time.monotonic() - t0
        return rep
    o = device.options or {}
    strategy = ms.search_strategy.EvolutionarySearch(
        # smaller than MetaSchedule's defaults (512 x 4): with budgets of tens of trials per kernel
        # the search, not the measurement, would otherwise dominate the tuning time
        population_size=int(o.get("tune_population", 128)), init_measured_ratio=0.2,
        init_min_unmeasured=int(o.get("tune_init_unmeasured", 32)),
        genetic_num_iters=int(o.get("tune_genetic_iters", 2)))
    work_dir = str(log_dir or (Path(db_dir) / "logs"))
    _quiet_logs()
    # MetaSchedule's logger setup re-lists this logger's handlers by name and crashes on one
    # without a name (pytest's capture handlers, a user's own): hold those aside meanwhile
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in ms_logger.handlers if h.get_name() is None]
    for h in unnamed:
        ms_logger.removeHandler(h)
    try:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            todo, work_dir, strategy=strategy, num_threads=int(o.get("tune_search_threads", 1)),
            seed=int(o.get("tune_seed", 0)))
    finally:
        for h in unnamed:
            ms_logger.addHandler(h)
    per_iter = max(1, min(trials, int(o.get("tune_trials_per_iter", 32))))
    own = [x is None for x in (builder, runner)]
    builder = make_ms_builder(device, target) if builder is None else builder
    runner = make_ms_runner(device, target) if runner is None else runner
    try:
        with tvm.transform.PassContext(opt_level=3):
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir,
                          max_trials_global=trials * len(todo), max_trials_per_task=trials,
                          num_trials_per_iter=per_iter, builder=builder, runner=runner, database=db,
                          task_scheduler="round-robin")
    finally:
        close_workers([w for w, mine in zip((builder, runner), own) if mine])
    rep.tuned_now = sum(is_tuned(t, db, target) for t in todo)
    rep.trials = trials * len(todo)
    rep.seconds = time.monotonic() - t0
    if rep.tuned_now == 0:
        raise HwlatError(f"MetaSchedule found no valid candidate for {len(todo)} task(s) in {trials} trials "
                         f"(see the logs in {work_dir})")
    return rep


def close_workers(workers) -> None:
    """Stop the worker processes of MetaSchedule builders/runners made here."""
    for w in workers or ():
        try:
            if hasattr(w, "close"):
                w.close()
            elif getattr(w, "pool", None) is not None:
                w.pool.shutdown()
        except Exception:  # noqa: BLE001 - best effort: the pool may already be gone
            pass


def _quiet_logs() -> None:
    # MetaSchedule sizes its console handler (on stdout, which `--json` keeps for one object)
    # from this logger's level when the loggers are created; the files in the work dir still get
    # every trial at DEBUG
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.CRITICAL)
