"""The profile job: measure kernels into a device's store within a budget, then fit its predictor.

Order of work (each step resumable; every measurement committed as it is made):
1. calibrate the per-call overhead and the drift reference;
2. kernels in chunks, most informative first; each chunk is measured in ``protocol.passes``
   shuffled, interleaved passes, the reference kernel timed before each pass (a slow spell of the
   host shows there, and the pass is taken again);
3. a few whole architectures of the space measured end to end (interleaved passes) to fit the
   whole-model correction;
4. fit the regressors and write ``lut.csv`` and ``predictor/``.
Backends, predictors and spaces are imported here lazily: the core imports none at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from hwlat.device import DeviceConfig, host_facts
from hwlat.errors import HwlatError
from hwlat.fusion import FusionRules
from hwlat.kernel_onnx import kernel_model
from hwlat.kernels import parse_key
from hwlat.protocol import MODEL_PROTOCOL, Protocol
from hwlat.store import DeviceStore, resolve_lut_dir

REFERENCE_KEY = "conv-relu_i28x28x64_o28x28x64_k3_s1_g1"
OVERHEAD_KEY = "relu_i1x1x8_o1x1x8"
CHUNK = 120
PRIOR_HEAD = 300         # prior kernels measured before anything else: every kernel type gets a regressor
CHECKPOINT_S = 120.0     # how often the error curve gets a point
SLOW_SPELL = 1.12        # a pass whose reference runs this much slower than usual is taken again
ARCH_PASS_S = 1.0         # seconds one pass of a calibration network is given (measured: 0.2-0.5 s)
ARCH_AGREE = 0.10        # a calibration network whose passes are further apart gets more passes
ARCH_EXTRA_PASSES = 2    # at most this many


@dataclass
class ProfileSummary:
    device: str
    backend: str
    kernels_planned: int = 0
    kernels_measured: int = 0
    measurements: int = 0
    models_measured: int = 0
    errors: int = 0
    repeated_passes: int = 0
    minutes: float = 0.0
    interrupted: bool = False
    budget_exhausted: bool = False
    fit: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _check_config(store: DeviceStore, config: DeviceConfig) -> None:
    old = store.manifest().get("device")
    if not old:
        return
    old_cfg = DeviceConfig.from_dict(old)
    for f in ("backend", "threads", "precision", "target"):
        if getattr(old_cfg, f) != getattr(config, f) and getattr(config, f) is not None:
            raise HwlatError(
                f"device '{config.name}' was profiled with {f}={getattr(old_cfg, f)!r}, not {getattr(config, f)!r}: "
                f"a device is one configuration; choose another --device name")


def _kernel_rows(pairs) -> list[tuple[str, str, str, str]]:
    """(key, op, kind, source) rows for DeviceStore.add_kernels from (key, source) pairs."""
    rows = []
    for k, s in pairs:
        kern = parse_key(k)
        rows.append((k, kern.op, kern.kind, s))
    return rows


# networks measured for the whole-model correction besides those of the profiled spaces
CALIBRATION_EXTRA = {"fbnet": 8, "convnet": 10}


def calibration_first(plan: list[tuple[str, str]], cal_keys: list[str]) -> list[tuple[str, str]]:
    """The plan with the calibration networks' kernels moved up, right after the user's models'
    kernels and the broad prior head: the whole-model correction is fitted on those networks as
    the sum of their measured kernels, so a kernel of theirs left to a regressor puts regressor
    error into the correction. Measured on a LiteRT int8 store whose budget ended before its plan
    did: 801 of the 1,135 calibration kernels had been measured (most were planned as space
    kernels, deep in the plan), 41% of the OFA networks' kernel time was a regressor's."""
    cal = dict.fromkeys(cal_keys)
    if not cal:
        return plan
    cut, seen_prior = 0, 0
    for i, (k, s) in enumerate(plan):
        if s not in ("models", "prior") or seen_prior >= PRIOR_HEAD:
            break
        seen_prior += s == "prior"
        cut = i + 1
    front = plan[:cut]
    source = {k: s for k, s in plan}
    ahead = {k for k, _ in front}
    moved = [(k, source.get(k, "calibration")) for k in cal if k not in ahead]
    return front + moved + [(k, s) for k, s in plan[cut:] if k not in cal]


class Job:
    def __init__(self, config: DeviceConfig, *, spaces=(), models_dir=None, budget_minutes: float = 10.0,
                 lut_dir=None, protocol: Protocol | None = None, prior: int = 1200, arch_samples: int = 24,
                 detect_fusion: bool = True, adaptive: bool = True, seed: int = 0, progress: bool = True):
        from hwlat.profilers import get_backend

        if budget_minutes is None or budget_minutes <= 0:
            raise HwlatError(f"--budget-minutes must be positive (got {budget_minutes}); e.g. --budget-minutes 10")
        self.config = config
        self.backend = get_backend(config.backend)
        self.spaces = list(spaces)
        self.models_dir = models_dir
        self.budget_s = float(budget_minutes) * 60.0
        self.lut_dir = resolve_lut_dir(lut_dir)
        self.protocol = protocol or Protocol(warmup_ms=5.0, trials=5, min_trial_ms=1.5)
        # calibration architectures are whole models: timed as validation times them
        self.model_protocol = dataclasses.replace(MODEL_PROTOCOL, passes=self.protocol.passes,
                                                  max_retries=self.protocol.max_retries)
        self.prior = prior
        self.arch_samples = arch_samples
        self.detect_fusion = detect_fusion
        self.adaptive_enabled = adaptive
        self.seed = seed
        self.progress = progress
        self.session_id = uuid.uuid4().hex[:8]
        self.t0 = time.monotonic()
        self._last_checkpoint = self.t0
        from hwlat.search import spaces as _spaces

        self.space_objs = [_spaces.get(s) for s in self.spaces]   # unknown names fail before any write

    # -- helpers -----------------------------------------------------------------------------
    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def _measure_keys(self, keys: list[str]) -> dict:
        return {r.key: r for r in self._measure_iter(keys)}

    def _reference_ms(self) -> float | None:
        r = self._measure_keys([REFERENCE_KEY]).get(REFERENCE_KEY)
        if r is None or r.measurement is None:
            return None
        self.store.add_reference(r.measurement.median_ms, self.session_id)
        return r.measurement.median_ms

    # -- steps -------------------------------------------------------------------------------
    def calibrate(self) -> dict:
        m = self.store.manifest()
        if "call_overhead_ms" in m:
            return m
        vals = []
        for _ in range(5):
            r = self._measure_keys([OVERHEAD_KEY])[OVERHEAD_KEY]
            if r.measurement:
                vals.append(r.measurement.median_ms)
        m["call_overhead_ms"] = float(np.median(vals)) if vals else 0.0
        self.store.write_manifest(m)
        return m

    def plan(self) -> list[tuple[str, str]]:
        """(key, source) in measurement order; stored once so a re-run resumes the same plan. A
        re-run that asks for more (other ``--models``, another space, a larger prior) keeps the
        stored plan and appends the kernels it does not have yet."""
        existing = self.store.kernels()
        if not existing.empty and self.store.manifest().get("plan_complete"):
            order = existing.sort_values("added", kind="stable")
            stored = list(zip(order["key"], order["source"]))
            have = set(order["key"])
            new = [(k, s) for k, s in self._fresh_plan() if k not in have]
            self._store_plan(new)
            return stored + new
        uniq = self._fresh_plan()
        self._store_plan(uniq)
        m = self.store.manifest()
        m["plan_complete"] = True
        self.store.write_manifest(m)
        return uniq

    def _fresh_plan(self) -> list[tuple[str, str]]:
        from hwlat.profilers.sampling import dir_kernels, prior_kernels, space_kernels

        rules = self.rules
        plan: list[tuple[str, str]] = []
        if self.models_dir:
            plan += [(k, "models") for k in dir_kernels(self.models_dir, rules)]
        prior = [(k, "prior") for k in prior_kernels(rules, self.prior, seed=self.seed)]
        space_keys = []
        for sp in self.space_objs:
            space_keys += [(k, f"space:{sp.name}") for k in space_kernels(sp, rules, seed=self.seed)]
        # interleave: a broad prior early so every kernel type gets a regressor, then alternate
        head, prior = prior[:PRIOR_HEAD], prior[PRIOR_HEAD:]
        plan += head
        while prior or space_keys:
            plan += space_keys[:3 * CHUNK]
            space_keys = space_keys[3 * CHUNK:]
            plan += prior[:CHUNK]
            prior = prior[CHUNK:]
        seen, uniq = set(), []
        for k, s in plan:
            if k not in seen:
                seen.add(k)
                uniq.append((k, s))
        return uniq

    def _store_plan(self, plan: list[tuple[str, str]]) -> None:
        rows = _kernel_rows(plan)
        # insert in order with increasing timestamps so the stored plan keeps its order
        for i in range(0, len(rows), 500):
            self.store.add_kernels(rows[i:i + 500])
            time.sleep(0.002)

    def measure_kernels(self, plan, bar) -> None:
        done = self.store.done_passes()
        passes = self.protocol.passes
        todo = list(dict.fromkeys(k for k, _ in plan if len(done.get(k, set())) < passes))
        rng = np.random.default_rng(self.seed + len(done))
        baseline = self.store.reference_median()
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            if time.monotonic() - self._last_checkpoint > CHECKPOINT_S:
                self.checkpoint()
            for p in range(passes):
                keys = [k for k in chunk if p not in done.get(k, set())]
                if not keys:
                    continue
                if self.left() < self.reserve_s:
                    self.summary.budget_exhausted = True
                    return
                rng.shuffle(keys)
                for attempt in range(3):
                    ref = self._reference_ms()
                    if baseline is None and ref is not None:
                        baseline = ref
                    if ref is None or baseline is None or ref <= SLOW_SPELL * baseline:
                        break
                    self.summary.repeated_passes += 1
                    time.sleep(1.0)   # let a slow spell pass before taking the pass
                if not self.backend.models_after_kernels:
                    self.measure_arch_step(1)
                results = self._measure_iter(keys)
                for r in results:
                    self.store.add_measurement(r.key, p, r.measurement, error=r.error, worker=r.worker,
                                               session=self.session_id)
                    self._check_interrupt()
                    done.setdefault(r.key, set()).add(p)
                    self.summary.measurements += 1
                    self.summary.errors += r.error is not None
                    bar(advance=1.0 / passes)
                    if self.left() < self.reserve_s:
                        self.summary.budget_exhausted = True
                        return

    def _measure_iter(self, keys):
        from hwlat.profilers.base import BuildInput

        builder = self.backend.builder(self.config, self.store.path)
        runner = self.backend.runner(self.config)
        try:
            for i in range(0, len(keys), 16):
                builds = builder.build([BuildInput(k, kernel_model(k)) for k in keys[i:i + 16]])
                yield from runner.run(builds, self.protocol)
        finally:
            runner.close()

    def prepare_archs(self) -> None:
        """Build the calibration architectures; their passes are measured between kernel chunks so
        that whole models and kernels see the same host conditions."""
        self.arch_builds, self.arch_queue, self.cal_keys = {}, [], []
        self.arch_times: dict[str, list[float]] = {}
        if self.arch_samples <= 0:
            return
        from hwlat.ir import detect_kernels, load_onnx, torch_to_onnx
        from hwlat.profilers.base import BuildInput
        from hwlat.search import spaces as _spaces

        have = self.store.model_measurements()
        done = set(zip(have["name"], have["pass"])) if not have.empty else set()
        per_space = max(1, self.arch_samples // max(len(self.space_objs), 1))
        builder = self.backend.builder(self.config, self.store.path)
        # networks of other spaces calibrate too: one space alone cannot separate the physical
        # terms of the whole-model correction (weights vs activations streamed), and a correction
        # fitted on one family mispredicts the others
        todo_spaces = [(sp, per_space) for sp in self.space_objs]
        # a profile of models alone (no space) still gets a whole-model correction: it is fitted
        # on networks of the extra spaces, never on the user's models (those validate it)
        todo_spaces += [(_spaces.get(n), min(c, self.arch_samples)) for n, c in CALIBRATION_EXTRA.items()
                        if n not in {sp.name for sp in self.space_objs}]
        for sp, count in todo_spaces:
            for i, a in enumerate(sp.calibration_sample(count, seed=self.seed + 1000)):
                name = f"{sp.name}-cal-{i:03d}"
                todo = [p for p in range(self.protocol.passes) if (name, p) not in done]
                if not todo:
                    continue
                proto = load_onnx(torch_to_onnx(sp.build(a), sp.input_shape(a)), canonical=False)
                proto.graph.name = name
                # the calibration networks' own kernels are measured too, so that the correction
                # fitted on them sees the physics of whole networks, not regressor error
                self.cal_keys += detect_kernels(proto, self.rules).keys
                self.arch_builds[name] = (builder.build([BuildInput(name, proto, kind="model")])[0], sp.key(a), sp.name)
                self.arch_queue += [(p, name) for p in todo]
        self.cal_keys = list(dict.fromkeys(self.cal_keys))
        # pass-major order, shuffled within a pass: interleaved passes
        rng = np.random.default_rng(self.seed)
        rng.shuffle(self.arch_queue)
        self.arch_queue.sort(key=lambda t: t[0])

    def measure_arch_step(self, n: int = 1) -> None:
        if not self.arch_queue:
            return
        baseline = self.store.reference_median()
        ref = self._reference_ms()
        if baseline and ref and ref > SLOW_SPELL * baseline:
            self.summary.repeated_passes += 1
            return   # a slow spell: whole models wait for the next chunk
        runner = self.backend.runner(self.config)
        try:
            for _ in range(min(n, len(self.arch_queue))):
                p, name = self.arch_queue.pop(0)
                b, key, family = self.arch_builds[name]
                for r in runner.run([b], self.model_protocol):
                    self.store.add_model_measurement(name, family, p, r.measurement, kernels=[key], error=r.error,
                                                     session=self.session_id)
                    self.summary.models_measured += r.measurement is not None
                    self._check_interrupt()
                    if r.measurement is not None:
                        self._more_passes(name, r.measurement.median_ms)
        finally:
            runner.close()

    def _more_passes(self, name: str, ms: float) -> None:
        """Queue another pass of a calibration network whose passes disagree (a slow spell hit
        some): the store keeps its fastest pass, so one more clean pass is what it needs."""
        times = self.arch_times.setdefault(name, [])
        times.append(ms)
        passes = self.model_protocol.passes
        # only networks whose every pass was taken in this session (a resumed run adds no extras)
        if passes <= len(times) < passes + ARCH_EXTRA_PASSES and \
                (max(times) - min(times)) / float(np.median(times)) > ARCH_AGREE:
            self.arch_queue.append((len(times), name))

    def _on_sigint(self, signum, frame) -> None:
        self._sigint = True
        raise KeyboardInterrupt

    def _check_interrupt(self) -> None:
        """Ctrl-C is remembered, not only raised: a library that turns the KeyboardInterrupt into an
        error of its own (caught as a per-kernel error, or as a failed progress checkpoint) would
        otherwise let the profile run on to the end. The next stored measurement stops it."""
        if getattr(self, "_sigint", False):
            raise KeyboardInterrupt

    def checkpoint(self) -> None:
        """Error on held-out calibration architectures of the predictor the store gives now."""
        from hwlat.predictors.fit import holdout_error

        try:
            err = holdout_error(self.store)
        except Exception as e:  # noqa: BLE001 - a curve point is informative, never fatal
            err = {"error": f"{type(e).__name__}: {e}"}
        self._check_interrupt()
        err.update({"minutes": round((time.monotonic() - self.t0) / 60.0, 2), "kernels": int(len(self.store.lut()))})
        self.summary.curve.append(err)
        self._last_checkpoint = time.monotonic()

    def adaptive(self, bar) -> None:
        """Measure around the kernels the regressors predict worst, until the budget ends."""
        from hwlat.predictors.fit import worst_kernels
        from hwlat.predictors.kernel_model import channel_tile
        from hwlat.profilers.sampling import neighbours, realistic

        tile = channel_tile(self.store.manifest())
        rounds = 0
        while self.left() > self.reserve_s + 20 and rounds < 50:
            lut = self.store.lut()
            # the worst-predicted kernels of real-network shapes: the neighbours of the others
            # would leave that envelope (see ``realistic``)
            worst = [k for k in worst_kernels(lut, n=160, seed=rounds, tile=tile) if realistic(parse_key(k))][:40]
            have = set(lut["key"]) | {k for k, _ in self.extra}
            new = []
            for k in worst:
                new += [x for x in neighbours(k, seed=rounds) if x not in have and x not in new]
            if not new:
                return
            new = list(dict.fromkeys(new))[:CHUNK]
            self.store.add_kernels(_kernel_rows((k, "adaptive") for k in new))
            self.extra += [(k, "adaptive") for k in new]
            bar(total_add=len(new))
            self.measure_kernels([(k, "adaptive") for k in new], bar)
            rounds += 1
            self.checkpoint()

    # -- entry -------------------------------------------------------------------------------
    def run(self) -> ProfileSummary:
        self.summary = ProfileSummary(self.config.name, self.config.backend)
        self.store = DeviceStore.create(self.config, self.lut_dir)
        self.store.lock()
        self._sigint = False
        prev_handler = None
        if threading.current_thread() is threading.main_thread():
            prev_handler = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            _check_config(self.store, self.config)
            m = self.store.manifest()
            m.update({"device": self.config.to_dict(), "versions": self.backend.versions(),
                      "host": host_facts(), "protocol": self.protocol.to_dict()})
            m.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            m["spaces"] = sorted(set(m.get("spaces", [])) | set(self.spaces))
            self.store.write_manifest(m)
            # time kept back for whole-model measurements and fitting
            self.reserve_s = min(0.15 * self.budget_s, 25.0)
            with _progress(self.progress) as prog:
                task = prog.add_task("calibrating", total=None)
                if self.detect_fusion and "fusion_rules" not in self.store.manifest():
                    from hwlat.profilers.fusion_detect import detect_rules

                    rules = detect_rules(self.backend, self.config, self.store.path, self.protocol,
                                         budget_s=min(60.0, 0.1 * self.budget_s))
                    m = self.store.manifest()
                    m["fusion_rules"] = rules.to_dict()
                    self.store.write_manifest(m)
                fr = self.store.manifest().get("fusion_rules")
                self.rules = FusionRules.from_dict(fr) if fr else self.backend.default_fusion_rules(self.config.precision)
                self.calibrate()
                prog.update(task, description="planning kernels")
                plan = self.plan()
                self.summary.kernels_planned = len(plan)
                done = self.store.done_passes()
                prog.update(task, description="building calibration architectures")
                self.extra = []
                self.prepare_archs()
                if self.backend.models_after_kernels:
                    # every pass of the calibration networks waits for the end: keep time for them
                    self.reserve_s = max(self.reserve_s, min(0.25 * self.budget_s, ARCH_PASS_S * len(self.arch_queue)))
                have = {k for k, _ in plan}
                new = [k for k in self.cal_keys if k not in have]
                if new:
                    self.store.add_kernels(_kernel_rows((k, "calibration") for k in new))
                plan = calibration_first(plan, self.cal_keys)
                self.summary.kernels_planned = len(plan)
                done = self.store.done_passes()
                prog.update(task, description=f"measuring {self.config.name}", total=len(plan),
                            completed=sum(min(len(done.get(k, ())), self.protocol.passes) for k, _ in plan)
                            / self.protocol.passes)

                def bar(advance=0.0, total_add=0):
                    if total_add:
                        prog.update(task, total=prog.tasks[0].total + total_add if hasattr(prog, "tasks") else None)
                    prog.update(task, advance=advance)

                self.measure_kernels(plan, bar)
                if self.summary.budget_exhausted is False:
                    self.checkpoint()
                    if self.adaptive_enabled:
                        prog.update(task, description="adaptive sampling")
                        self.adaptive(bar)
                prog.update(task, description="measuring whole architectures")
                while self.arch_queue and self.left() > 10:
                    self.measure_arch_step(1)
                prog.update(task, description="fitting predictor")
            self.fit()
        except KeyboardInterrupt:
            self.summary.interrupted = True
            with contextlib.suppress(Exception):
                self.store.export_lut()
        finally:
            if prev_handler is not None:
                signal.signal(signal.SIGINT, prev_handler)
            self.summary.minutes = (time.monotonic() - self.t0) / 60.0
            self.summary.kernels_measured = int(len(self.store.lut())) if self.store.conn else 0
            self.store.close()
        return self.summary

    def fit(self) -> None:
        from hwlat.predictors.fit import fit_device

        self.summary.fit = fit_device(self.store)


@contextlib.contextmanager
def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        class _Null:
            def add_task(self, *a, **k):
                return 0

            def update(self, *a, **k):
                pass

        yield _Null()
        return
    import sys

    from rich.console import Console

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(file=sys.stderr), transient=False) as p:
        yield p
