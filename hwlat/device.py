"""Device configuration: one backend plus its options on one piece of hardware."""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hwlat.errors import HwlatError

SCHEMA_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


@dataclass
class DeviceConfig:
    """What identifies a measurement target. Stored as the ``device`` part of ``device.json``."""

    name: str
    backend: str
    threads: int = 1
    precision: str = "fp32"                 # fp32 | int8 | fp16 (backend permitting)
    target: dict | str | None = None        # TVM target (dict form) or backend-specific target
    rpc_tracker: str | None = None          # "host:port" of a TVM RPC tracker
    rpc_key: str | None = None
    rpc_address: str | None = None          # "host:port" of a single RPC server (no tracker)
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_device_name(self.name)
        if self.threads < 1:
            raise HwlatError(f"--threads must be at least 1 (got {self.threads})")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise HwlatError(f"unknown precision '{self.precision}': use fp32, fp16 or int8")

    @property
    def remote(self) -> bool:
        return bool(self.rpc_tracker or self.rpc_address)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DeviceConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def validate_device_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise HwlatError(
            f"invalid device name {name!r}: use letters, digits, '.', '_' or '-' (e.g. x86-ort-1t)"
        )
    return name


def host_facts() -> dict:
    """CPU model, cores, OS: stored with every device and measurement session."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = line.split(":", 1)[1].split()
                    flags = " ".join(x for x in fl if x.startswith(("avx", "fma", "sse4", "neon", "amx")))
                    break
    except OSError:
        pass
    return {
        "l2_bytes": _cache_bytes(2),
        "l3_bytes": _cache_bytes(3),
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def _cache_bytes(level: int) -> int | None:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in sorted(base.glob("index*")):
            if (idx / "level").read_text().strip() == str(level) and (idx / "type").read_text().strip() != "Instruction":
                text = (idx / "size").read_text().strip().upper()
                mult = {"K": 1024, "M": 1024 ** 2}.get(text[-1], 1)
                return int(text.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise HwlatError(f"cannot read {path}: {e}") from None


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
