"""The measurement store of one device: ``<lut-dir>/<device>/``.

- ``measurements.sqlite``: every measurement committed as it is made (WAL), so an interrupted
  run loses at most the one in flight and a re-run resumes.
- ``device.json``: backend, options, runtime versions, host facts, protocol, fusion rules,
  calibration, schema version.
- ``lut.csv``: the LUT export (one row per kernel; see :meth:`DeviceStore.lut`), readable with pandas.
- ``predictor/``: fitted regressors (XGBoost JSON) and their manifest.

A lock file (``flock``) refuses a second profiler on the same device: parallel runs on one
device corrupt latency. The lock dies with its process, so a killed run never leaves it stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from hwlat.device import SCHEMA_VERSION, DeviceConfig, read_json, validate_device_name, write_json_atomic
from hwlat.errors import DeviceBusyError, UnknownDeviceError

DB_NAME = "measurements.sqlite"
MANIFEST = "device.json"
LUT_CSV = "lut.csv"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kernels (
    key TEXT PRIMARY KEY, op TEXT NOT NULL, kind TEXT NOT NULL, source TEXT, added REAL
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, pass INTEGER NOT NULL,
    median_ms REAL, p10_ms REAL, p90_ms REAL, runs INTEGER, spread REAL, retries INTEGER,
    error TEXT, worker TEXT, threads INTEGER, session TEXT, ts REAL, layout_ms REAL
);
CREATE INDEX IF NOT EXISTS meas_key ON measurements(key);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, family TEXT, pass INTEGER NOT NULL,
    median_ms REAL, p10_ms REAL, p90_ms REAL, runs INTEGER, kernels TEXT, error TEXT, session TEXT, ts REAL
);
CREATE TABLE IF NOT EXISTS reference (
    id INTEGER PRIMARY KEY AUTOINCREMENT, median_ms REAL, session TEXT, ts REAL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
"""


def default_lut_dir() -> Path:
    """argument > $HWLAT_HOME/devices > ~/.hwlat/devices"""
    home = os.environ.get("HWLAT_HOME")
    return Path(home) / "devices" if home else Path.home() / ".hwlat" / "devices"


def shipped_dir() -> Path:
    try:
        return Path(str(resources.files("hwlat.lut_data")))
    except ModuleNotFoundError:  # an install without package data
        return Path(__file__).resolve().parent.parent / "lut_data"


def resolve_lut_dir(lut_dir=None) -> Path:
    return Path(lut_dir).expanduser() if lut_dir else default_lut_dir()


def find_device_dir(name: str, lut_dir=None) -> Path:
    """The device's folder in the lut dir, else among the devices shipped with the package."""
    validate_device_name(name)
    for base in (resolve_lut_dir(lut_dir), shipped_dir()):
        d = base / name
        if (d / MANIFEST).is_file():
            return d
    known = sorted(list_devices(lut_dir))
    hint = f" known devices: {', '.join(known)}" if known else " no devices are profiled yet"
    raise UnknownDeviceError(
        f"unknown device '{name}' (looked in {resolve_lut_dir(lut_dir)} and the shipped devices);{hint}. "
        f"Profile it with: hwlat profile --backend onnxruntime --device {name}")


def list_devices(lut_dir=None) -> list[str]:
    out = set()
    for base in (resolve_lut_dir(lut_dir), shipped_dir()):
        if base.is_dir():
            out.update(p.name for p in base.iterdir() if (p / MANIFEST).is_file())
    return sorted(out)


def _fast_spread(s) -> float:
    v = np.sort(np.asarray(s, float))
    return float((v[1] - v[0]) / v[0]) if len(v) > 1 else 0.0


class DeviceStore:
    """Open (and with ``create``, make) the store of one device."""

    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._lock_fd: int | None = None
        db = self.path / DB_NAME
        if readonly:
            if not db.is_file():
                self.conn = None
                return
            self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(db), timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            cols = {r[1] for r in self.conn.execute("PRAGMA table_info(measurements)")}
            if "layout_ms" not in cols:      # stores written before layout probing
                self.conn.execute("ALTER TABLE measurements ADD COLUMN layout_ms REAL")
            self.conn.commit()

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def open(cls, name: str, lut_dir=None, *, readonly: bool = True) -> "DeviceStore":
        return cls(find_device_dir(name, lut_dir), readonly=readonly)

    @classmethod
    def create(cls, config: DeviceConfig, lut_dir=None) -> "DeviceStore":
        return cls(resolve_lut_dir(lut_dir) / config.name, readonly=False)

    def lock(self) -> "DeviceStore":
        fd = os.open(str(self.path / ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DeviceBusyError(
                f"device '{self.path.name}' is being profiled by another process (lock {self.path / '.lock'}); "
                f"wait for it to finish: parallel runs on one device corrupt latency") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self.unlock()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- manifest ----------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict:
        try:
            return read_json(self.manifest_path)
        except FileNotFoundError:
            return {}

    def write_manifest(self, data: dict) -> None:
        data = dict(data)
        data["schema_version"] = SCHEMA_VERSION
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(self.manifest_path, data)

    def config(self) -> DeviceConfig:
        m = self.manifest()
        if "device" not in m:
            raise UnknownDeviceError(f"{self.manifest_path} has no device configuration; profile the device again")
        return DeviceConfig.from_dict(m["device"])

    # -- writes (each committed at once) -----------------------------------------------------
    def add_kernels(self, rows: list[tuple[str, str, str, str]]) -> None:
        """rows: (key, op, kind, source); existing keys are kept."""
        now = time.time()
        self.conn.executemany("INSERT OR IGNORE INTO kernels(key, op, kind, source, added) VALUES (?,?,?,?,?)",
                              [(k, o, kd, s, now) for k, o, kd, s in rows])
        self.conn.commit()

    def add_measurement(self, key: str, pass_idx: int, m=None, *, error: str | None = None,
                        worker: str = "local", session: str = "") -> None:
        if m is None:
            row = (key, pass_idx, None, None, None, None, None, None, error, worker, None, session, time.time(), None)
        else:
            row = (key, pass_idx, m.median_ms, m.p10_ms, m.p90_ms, m.runs, m.spread, m.retries, error, worker,
                   m.threads, session, time.time(), m.layout_ms)
        self.conn.execute("INSERT INTO measurements(key, pass, median_ms, p10_ms, p90_ms, runs, spread, retries, "
                          "error, worker, threads, session, ts, layout_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        self.conn.commit()

    def add_model_measurement(self, name: str, family: str, pass_idx: int, m=None, *, kernels: list[str] = (),
                              error: str | None = None, session: str = "") -> None:
        vals = (m.median_ms, m.p10_ms, m.p90_ms, m.runs) if m is not None else (None, None, None, None)
        self.conn.execute("INSERT INTO models(name, family, pass, median_ms, p10_ms, p90_ms, runs, kernels, error, "
                          "session, ts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                          (name, family, pass_idx, *vals, json.dumps(list(kernels)), error, session, time.time()))
        self.conn.commit()

    def add_reference(self, median_ms: float, session: str = "") -> None:
        self.conn.execute("INSERT INTO reference(median_ms, session, ts) VALUES (?,?,?)", (median_ms, session, time.time()))
        self.conn.commit()

    # -- reads -------------------------------------------------------------------------------
    def _df(self, sql: str, params=()) -> pd.DataFrame:
        if self.conn is None:
            return pd.DataFrame()
        return pd.read_sql_query(sql, self.conn, params=params)

    def kernels(self) -> pd.DataFrame:
        return self._df("SELECT * FROM kernels")

    def measurements(self) -> pd.DataFrame:
        return self._df("SELECT * FROM measurements")

    def done_passes(self) -> dict[str, set[int]]:
        """key -> passes with a stored result (errors included: they are not retried blindly)."""
        out: dict[str, set[int]] = {}
        if self.conn is None:
            return out
        for key, p in self.conn.execute("SELECT key, pass FROM measurements"):
            out.setdefault(key, set()).add(p)
        return out

    def model_measurements(self) -> pd.DataFrame:
        return self._df("SELECT * FROM models")

    def reference(self) -> pd.DataFrame:
        return self._df("SELECT * FROM reference")

    def lut(self) -> pd.DataFrame:
        """One row per measured kernel: one of its passes' medians, less the layout conversions
        only the isolated kernel paid (``layout_ms``, see hwlat.protocol.Measurement). Which one is
        the backend's ``pass_estimate``: the fastest pass for ONNX Runtime and LiteRT, the median
        elsewhere.

        Why the fastest pass there: the host's slow spells (about a second, 25-45% slower,
        MEASUREMENT.md) only ever add time, and a spell covers every trial of a measurement, so a
        pass either shows the kernel's cost or an inflated one. In a noisy hour (60% of kernels
        with passes 10% apart) the median kept the inflation: two 10-minute ORT profiles of one
        host then disagreed by more than 10% on 27% of kernels, and on 11% with the fastest pass.
        Refitted on five stored ORT profiles, the whole zoo within +-10% went from 57-95% (mean
        82%) to 89-93% (mean 91%); on a LiteRT one from 77% to 91%. TVM kernels also come out
        40% faster than their median in some passes (module state, not the host), so the fastest
        pass there is an outlier: a TVM store predicted its 4 zoo models 7-29% low with it.
        ``p10_ms``/``p90_ms`` and ``pass_spread`` stay medians and spreads over the passes."""
        cols = ["key", "op", "kind", "latency_ms", "p10_ms", "p90_ms", "passes", "pass_spread", "layout_ms"]
        m = self._df("SELECT key, pass, median_ms, p10_ms, p90_ms, spread, layout_ms FROM measurements "
                     "WHERE error IS NULL")
        if m.empty:
            return pd.DataFrame(columns=cols)
        m["layout_ms"] = m["layout_ms"].fillna(0.0)
        for c in ("median_ms", "p10_ms", "p90_ms"):
            m[c] = m[c] - m["layout_ms"]
        g = m.groupby("key")
        lut = pd.DataFrame({
            "latency_ms": g["median_ms"].min() if self.pass_estimate() == "min" else g["median_ms"].median(),
            "p10_ms": g["p10_ms"].median(),
            "p90_ms": g["p90_ms"].median(),
            "passes": g["pass"].nunique(),
            "pass_spread": g["median_ms"].agg(lambda s: float((s.max() - s.min()) / s.median()) if len(s) > 1 else 0.0),
            "layout_ms": g["layout_ms"].median(),
        }).reset_index()
        kern = self.kernels()[["key", "op", "kind"]] if self.conn is not None else pd.DataFrame()
        lut = lut.merge(kern, on="key", how="left")
        return lut[cols]

    def model_lut(self) -> pd.DataFrame:
        m = self._df("SELECT name, family, pass, median_ms, kernels FROM models WHERE error IS NULL")
        if m.empty:
            return pd.DataFrame(columns=["name", "family", "latency_ms", "median_ms", "passes", "pass_spread",
                                         "fast_spread", "kernels"])
        g = m.groupby(["name", "family"])
        # the same pass estimate as kernels (see lut): the correction fitted on these networks must
        # relate estimates of one kind
        est = g["median_ms"].min() if self.pass_estimate() == "min" else g["median_ms"].median()
        out = pd.DataFrame({"latency_ms": est, "median_ms": g["median_ms"].median(), "passes": g["pass"].nunique(),
                            "pass_spread": g["median_ms"].agg(lambda s: float((s.max() - s.min()) / s.median())),
                            # how far the second-fastest pass is from the fastest: a fastest pass that
                            # another pass confirms is a measurement, whatever slow spells hit the rest
                            "fast_spread": g["median_ms"].agg(_fast_spread),
                            "kernels": g["kernels"].first()}).reset_index()
        return out

    def kernel_pass_ratios(self, min_passes: int = 3) -> np.ndarray:
        """Median over fastest pass of each kernel measured in at least ``min_passes`` passes."""
        m = self._df("SELECT key, median_ms, layout_ms FROM measurements WHERE error IS NULL")
        if m.empty:
            return np.zeros(0)
        m["ms"] = m["median_ms"] - m["layout_ms"].fillna(0.0)
        g = m.groupby("key")["ms"]
        k = pd.DataFrame({"n": g.size(), "med": g.median(), "min": g.min()})
        k = k[(k["n"] >= min_passes) & (k["min"] > 0)]
        return (k["med"] / k["min"]).to_numpy(float)

    def pass_estimate(self) -> str:
        """"min" or "median": which pass of a kernel the LUT keeps, as the device's backend says."""
        from hwlat.profilers import backend_class

        try:
            return backend_class(self.manifest().get("device", {}).get("backend", "")).pass_estimate
        except Exception:  # noqa: BLE001 - a store of no known backend keeps medians
            return "median"

    def export_lut(self) -> Path:
        path = self.path / LUT_CSV
        tmp = path.with_name(path.name + ".tmp")
        self.lut().to_csv(tmp, index=False)
        os.replace(tmp, path)
        return path

    def reference_median(self) -> float | None:
        r = self.reference()
        return float(np.median(r["median_ms"])) if not r.empty else None
