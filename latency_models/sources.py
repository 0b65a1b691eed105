"""Read device measurements into op lists (the units a device model is fitted on).

The project's own profiler CSV (``latency_models.profile``): one whole network per row.

HW-NAS-Bench's FBNet block table (``hwnasbench_fbnet_blocks.csv``): each row is one block
measured alone. A ``ConvBlock`` is 1x1 expand, kxk depthwise, 1x1 project, BN and ReLU, with a
residual addition when input and output match; ``ConvNorm`` a conv with BN; ``FC`` a fully
connected layer; ``AvgP`` global pooling; ``Skip`` with equal shapes an empty block (only the
runtime's per-call overhead). Grouped (group 2) blocks and channel-changing skips are not in
our space and are left out.
"""

from __future__ import annotations

import csv
import os

from latency_models.ops import Op, arch_ops
from spaces.arch import Arch, ArchError, conv_out_size

COLUMNS = ("op", "H", "cin", "cout", "exp", "kernel", "stride", "group")


class MeasurementError(ValueError):
    """A measurement file that cannot be used."""


def _conv(kind: str, cin: int, cout: int, k: int, h: int, s: int, groups: int = 1) -> Op:
    ho = conv_out_size(h, k, s)
    return Op(kind, ho * ho * cout * (cin // groups) * k * k, cin * h * h + cout * ho * ho)


def fbnet_row_ops(row: dict) -> list[Op] | None:
    """Ops of one FBNet table row, or None for rows outside our space."""
    op = row["op"]
    h, cin, cout = int(row["H"]), int(row["cin"]), int(row["cout"])
    k = int(row["kernel"] or 1)
    s = int(row["stride"] or 1)
    g = int(row["group"] or 1)
    if g != 1:
        return None
    if op == "ConvBlock":
        mid = cin * int(row["exp"])
        ho = conv_out_size(h, k, s)
        ops = [_conv("pwconv", cin, mid, 1, h, 1), Op("eltwise", 0, 2 * mid * h * h),
               _conv("dwconv", mid, mid, k, h, s, groups=mid), Op("eltwise", 0, 2 * mid * ho * ho),
               _conv("pwconv", mid, cout, 1, ho, 1)]
        if cin == cout and s == 1:
            ops.append(Op("eltwise", 0, 3 * cout * ho * ho))
        return ops
    if op == "ConvNorm":
        return [_conv("pwconv" if k == 1 else "conv", cin, cout, k, h, s)]
    if op == "FC":
        return [Op("fc", cin * cout, cin + cout)]
    if op == "AvgP":
        return [Op("pool", 0, cin * h * h + cin)]
    if op == "Skip":
        return [] if (cin == cout and s == 1) else None
    return None


def read_rows(path: str | os.PathLike, required: tuple[str, ...]) -> list[dict]:
    """The rows of a measurement CSV that has at least one row and the ``required`` columns."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise MeasurementError(f"measurement file {path} does not exist") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MeasurementError(f"measurement file {path} is not a readable CSV ({exc})") \
            from None
    if not rows:
        raise MeasurementError(f"measurement file {path} is empty")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise MeasurementError(f"measurement file {path} lacks the columns {missing}")
    return rows


def read_profile(path: str | os.PathLike) -> tuple[list[list[Op]], list[float]]:
    """Op lists and median latencies (ms) from a ``latency_models.profile`` CSV."""
    samples, ys = [], []
    for i, row in enumerate(read_rows(path, ("arch_json", "median_ms"))):
        try:
            samples.append(arch_ops(Arch.from_json(row["arch_json"])))
            ys.append(float(row["median_ms"]))
        except (ArchError, ValueError) as exc:
            raise MeasurementError(f"{path} row {i + 2}: {exc}") from None
        if not ys[-1] > 0:
            raise MeasurementError(f"{path} row {i + 2}: median_ms {ys[-1]} is not a "
                                   "positive time in milliseconds")
    return samples, ys


def read_fbnet(path: str | os.PathLike, column: str) -> tuple[list[list[Op]], list[float],
                                                              list[str]]:
    """Op lists, latencies (ms) and keys of the usable rows of the FBNet block table."""
    rows = read_rows(path, COLUMNS + (column,))
    samples, ys, keys = [], [], []
    for i, row in enumerate(rows):
        ops = fbnet_row_ops(row)
        if ops is None:
            continue
        try:
            ms = float(row[column])
        except ValueError:
            raise MeasurementError(f"{path} row {i + 2}: {column} = {row[column]!r} is not a "
                                   "number") from None
        if not ms > 0:
            raise MeasurementError(f"{path} row {i + 2}: {column} = {ms} is not a positive "
                                   "time in milliseconds")
        samples.append(ops)
        ys.append(ms)
        keys.append(row.get("key", str(i)))
    return samples, ys, keys
