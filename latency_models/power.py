"""Energy from a power-meter log aligned with a profiling run.

A USB power meter or a lab supply logs ``timestamp,watts`` rows (Unix seconds) while the
on-device script measures; every measured model records the wall-clock windows of its timed
runs (``windows``: ``start:end;start:end;...``, one per round). The energy of one inference is
the mean power inside those windows times the median latency (mJ = W x ms). Fewer than
``min_samples`` power readings inside a model's windows is an error: the meter samples too
slowly for it, so measure with ``run_on_device.py --window 3``.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from latency_models.sources import MeasurementError, read_rows

__all__ = ["energy_from_log", "read_power_log", "write_power_log"]


def read_power_log(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (s) and watts of a power log, sorted by time."""
    rows = read_rows(path, ("timestamp", "watts"))
    try:
        t = np.array([float(r["timestamp"]) for r in rows])
        w = np.array([float(r["watts"]) for r in rows])
    except ValueError as exc:
        raise MeasurementError(f"power log {path}: {exc}; columns timestamp (Unix seconds) "
                               "and watts must be numbers") from None
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1000):
        raise MeasurementError(f"power log {path}: watts must lie between 0 and 1000 (is the "
                               "column in milliwatts? divide it by 1000)")
    order = np.argsort(t)
    return t[order], w[order]


def energy_from_log(measurements: str | os.PathLike, power_log: str | os.PathLike,
                    min_samples: int = 3) -> list[float]:
    """Energy (mJ) per inference of each row of a measurement CSV, from a power log."""
    t, w = read_power_log(power_log)
    rows = read_rows(measurements, ("median_ms", "windows"))
    out = []
    for i, row in enumerate(rows):
        try:
            ms = float(row["median_ms"])
            windows = [tuple(float(v) for v in w.split(":")) for w in row["windows"].split(";")]
        except ValueError:
            raise MeasurementError(f"{measurements} row {i + 2}: median_ms and windows "
                                   "(start:end;start:end in Unix seconds) must be numbers") \
                from None
        inside = np.zeros(len(t), bool)
        for start, end in windows:
            inside |= (t >= start) & (t <= end)
        if inside.sum() < min_samples:
            raise MeasurementError(
                f"{measurements} row {i + 2}: the power log {power_log} has "
                f"{int(inside.sum())} readings inside this model's timed windows (needs "
                f"{min_samples}); check that both clocks agree, or measure with "
                "`run_on_device.py --window 3`")
        out.append(float(np.mean(w[inside]) * ms))
    return out


def write_power_log(path: str | os.PathLike, t: np.ndarray, w: np.ndarray) -> None:
    """Write a power log (used by tests and by meters read from Python)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "watts"])
        writer.writerows(zip(t.tolist(), w.tolist()))
