"""TVM targets in dict form, and the toolchain that turns a compiled module into a file.

TVM 0.27 accepts targets only as dicts (``{"kind": "llvm", "mcpu": "znver4"}``); the old CLI
strings (``"llvm -mcpu=..."``) are refused by TVM itself, so users' strings are converted here.
A device's target is ``DeviceConfig.target``: a dict, a JSON string, a short name (``"llvm"``,
``"hexagon"``, a TVM tag such as ``"nvidia/geforce-rtx-3090"``) or a CLI-style string.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from hwlat.errors import HwlatError

# architecture names LLVM triples use -> the names `platform.machine()` reports for them
_ARCH_ALIASES = {"x86_64": {"x86_64", "amd64"}, "aarch64": {"aarch64", "arm64"}, "arm": {"armv7l", "armv8l"},
                 "riscv64": {"riscv64"}, "i386": {"i386", "i686"}}


def host_target(threads: int | None = None) -> dict:
    """The host CPU as LLVM sees it (mcpu from LLVM's own host detection)."""
    from tvm.target import codegen

    t = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}
    if threads:
        t["num-cores"] = int(threads)
    return t


def _parse_cli(text: str) -> dict:
    """``"llvm -mcpu=x -mattr=+a,+b -num-cores=4"`` -> dict form."""
    parts = text.split()
    out: dict = {"kind": parts[0]}
    for p in parts[1:]:
        if not p.startswith("-") or "=" not in p:
            raise HwlatError(f"cannot read TVM target option '{p}' in '{text}': use -key=value "
                             f"(e.g. 'llvm -mcpu=cortex-a76') or the dict form")
        k, v = p.lstrip("-").split("=", 1)
        if k in ("mattr", "keys", "libs"):
            out[k] = [x for x in v.split(",") if x]
        elif v.lstrip("-").isdigit():
            out[k] = int(v)
        else:
            out[k] = v
    return out


def resolve_target(target, threads: int | None = None) -> dict:
    """A validated dict-form target (default: the host CPU). Bad input raises HwlatError."""
    import tvm

    if target is None or target == "" or target == "host":
        t = host_target()
    elif isinstance(target, dict):
        t = dict(target)
    elif isinstance(target, str):
        s = target.strip()
        if s.startswith("{"):
            try:
                t = json.loads(s)
            except ValueError as e:
                raise HwlatError(f"--target is not valid JSON ({e}): {s!r}") from None
        elif " " in s:
            t = _parse_cli(s)
        elif s == "llvm":
            t = host_target()
        else:
            t = {"kind": s} if s in _kinds() else None
            if t is None:
                try:  # a TVM tag, e.g. "nvidia/geforce-rtx-3090"
                    t = _export(tvm.target.Target(s))
                    t.pop("keys", None)
                except Exception:  # noqa: BLE001 - reported below with the valid kinds
                    raise HwlatError(f"unknown TVM target '{s}': use a kind ({', '.join(sorted(_kinds()))}), "
                                     f"a TVM tag, or a dict such as "
                                     f'{{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}}'
                                     ) from None
    else:
        raise HwlatError(f"TVM target must be a dict or a string (got {type(target).__name__})")
    if not isinstance(t, dict) or "kind" not in t:
        raise HwlatError(f"TVM target {target!r} has no 'kind' (e.g. {{\"kind\": \"llvm\"}})")
    if t["kind"] == "hexagon":
        t = _hexagon_defaults(t)
    if t["kind"] == "llvm" and "mtriple" not in t and "mcpu" not in t:
        t = {**host_target(), **t}    # plain "llvm" means this CPU, with its vector units
    if t["kind"] in ("llvm", "hexagon") and threads and "num-cores" not in t:
        # MetaSchedule sizes parallel loops from num-cores; the device's thread count is the truth
        t["num-cores"] = int(threads)
    try:
        tvm.target.Target(t)
    except Exception as e:  # noqa: BLE001 - TVM raises ValueError/TVMError; both mean bad input
        raise HwlatError(f"invalid TVM target {json.dumps(t)}: {str(e).splitlines()[0]}") from None
    if "mcpu" in t and t["kind"] in ("llvm", "hexagon"):
        from tvm.target import codegen

        triple = t.get("mtriple") or ("hexagon" if t["kind"] == "hexagon" else codegen.llvm_get_system_triple())
        if not codegen.llvm_is_valid_cpu(t["mcpu"], triple):
            raise HwlatError(f"LLVM does not know mcpu '{t['mcpu']}' for triple '{triple}': "
                             f"see `llc -mtriple={triple} -mcpu=help`")
    return t


def _kinds() -> set:
    import tvm

    return set(tvm.target.Target.list_kinds())


def _export(target) -> dict:
    """A Target as a plain JSON-able dict (TVM returns its own Array/Map types)."""
    def plain(v):
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if hasattr(v, "items"):
            return {str(k): plain(x) for k, x in v.items()}
        if hasattr(v, "export"):
            return _export(v)
        try:
            return [plain(x) for x in v]
        except TypeError:
            return str(v)

    d = {str(k): plain(v) for k, v in dict(target.export()).items()}
    return {k: v for k, v in d.items() if v not in ("", None, []) and k != "tag"}


def _hexagon_defaults(t: dict) -> dict:
    """Fill a Hexagon target from TVM's ``qcom/hexagon-vNN`` tag (HVX features, VTCM size)."""
    import tvm

    mcpu = str(t.get("mcpu", "hexagonv68"))
    tag = "qcom/hexagon-" + mcpu.replace("hexagon", "")
    try:
        base = _export(tvm.target.Target({"tag": tag}))
    except Exception:  # noqa: BLE001 - an unknown version keeps what the user gave
        return t
    base.pop("keys", None)
    base.pop("num-cores", None)
    return {**base, **t}


def target_arch(t: dict) -> str:
    """The CPU architecture the code runs on ('x86_64', 'aarch64', 'hexagon', ...)."""
    if t.get("kind") == "hexagon":
        return "hexagon"
    triple = t.get("mtriple")
    if not triple:
        return platform.machine()
    return triple.split("-")[0]


def is_host(t: dict) -> bool:
    if t.get("kind") != "llvm":
        return False
    arch = target_arch(t)
    return platform.machine() in _ARCH_ALIASES.get(arch, {arch})


def target_json(t: dict) -> str:
    return json.dumps(t, sort_keys=True)


# -- export ---------------------------------------------------------------------------------

def toolchain(t: dict, options: dict | None = None) -> tuple[str, object | None, str]:
    """(suffix, fcompile, description) to export a module compiled for ``t``.

    A shared library when a linker for the target exists (host compiler, a cross compiler named
    after the triple or given as ``options["cc"]``, the Android NDK via ``TVM_NDK_CC``); else a
    ``.tar`` of object files that the device links when it loads it.
    """
    from tvm.support import cc as _cc

    options = options or {}
    if options.get("cc"):
        return ".so", _cc.cross_compiler(options["cc"], options=list(options.get("cc_options", []))), options["cc"]
    triple = t.get("mtriple", "")
    if t.get("kind") == "llvm" and "android" in triple and os.environ.get("TVM_NDK_CC"):
        from tvm.support import ndk

        return ".so", ndk.create_shared, f"NDK {os.environ['TVM_NDK_CC']}"
    if is_host(t):
        host_cc = _cc.get_cc()
        if host_cc:
            return ".so", None, host_cc
    elif t.get("kind") == "llvm" and triple:
        arch = target_arch(t)
        for name in (f"{triple}-g++", f"{arch}-linux-gnu-g++", f"{triple}-gcc", f"{arch}-linux-gnu-gcc"):
            exe = shutil.which(name)
            if exe:
                return ".so", _cc.cross_compiler(exe), exe
    from tvm.support import tar

    return ".tar", tar.tar, "tar (no linker for this target here: the device links it on load)"


def export(executable, stem: Path, t: dict, options: dict | None = None) -> Path:
    """Write ``executable`` as ``<stem>.so`` (or ``.tar``); atomic so a reader never sees half."""
    suffix, fcompile, _ = toolchain(t, options)
    path = Path(str(stem) + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    kwargs = {"fcompile": fcompile} if fcompile is not None else {}
    executable.export_library(str(tmp), **kwargs)
    os.replace(tmp, path)
    return path


def export_for_tuning(mod, target: dict, options: dict | None = None) -> str:
    """MetaSchedule's f_export: candidates exported with the device's own toolchain."""
    import tempfile

    suffix, fcompile, _ = toolchain(target, options)
    path = os.path.join(tempfile.mkdtemp(prefix="hwlat-ms-"), "cand" + suffix)
    kwargs = {"fcompile": fcompile} if fcompile is not None else {}
    mod.export_library(path, **kwargs)
    return path


# -- tensor intrinsics ------------------------------------------------------------------------

_INTRIN_BY_ARCH = {"x86_64": ("x86",), "i386": ("x86",), "aarch64": ("arm_cpu",), "arm": ("arm_cpu",),
                   "riscv64": ("riscv_cpu",), "riscv32": ("riscv_cpu",), "hexagon": ("hexagon",),
                   "cuda": ("cuda",), "rocm": ("rocm",), "metal": ("metal",)}
_ALL_INTRIN = ("cuda", "arm_cpu", "x86", "rocm", "hexagon", "riscv_cpu")


def load_tensor_intrinsics(target: dict | None = None) -> None:
    """Register the tensor intrinsics MetaSchedule needs for ``target`` only.

    ``import tvm.s_tir.tensor_intrin`` (done by MetaSchedule's TuneContext and its builder
    workers) parses every intrinsic of every vendor, the CUDA ones alone taking 45-80 s of CPU on
    this class of machine; a tuning worker that pays it per batch times out. Registering the
    package without running its ``__init__`` and importing the target's own module makes the
    later blanket import a no-op. With no target, or an unknown one, every module is imported.
    """
    name = "tvm.s_tir.tensor_intrin"
    kind = (target or {}).get("kind")
    key = target_arch(target) if kind in ("llvm", "hexagon") else kind
    subs = _INTRIN_BY_ARCH.get(key, _ALL_INTRIN)
    if name not in sys.modules:
        import tvm.s_tir

        spec = importlib.util.find_spec(name)
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[name] = pkg
        tvm.s_tir.tensor_intrin = pkg
    for s in subs:
        importlib.import_module(f"{name}.{s}")
