"""Read device measurements into op lists (the units a device model is fitted on).

The project's own profiler CSV (``latency_models.profile``): one whole network per row.

HW-NAS-Bench's FBNet block table (``hwnasbench_fbnet_blocks.csv``): each row is one block
measured alone. A ``ConvBlock`` is 1x1 expand, kxk depthwise, 1x1 project, BN and ReLU, with a
residual addition when input and output match; ``ConvNorm`` a conv with BN; ``FC`` a fully
connected layer; ``AvgP`` global pooling; ``Skip`` with equal shapes an identity, which the
measuring framework timed as a copy of the tensor. Grouped (group 2) blocks and
channel-changing skips are not in our space and are left out.
"""

from __future__ import annotations

import csv
import gzip
import os

from latency_models.ops import Op, arch_ops, conv_op, gpool_op
from spaces.arch import Arch, ArchError, conv_out_size

__all__ = ["bundle_file", "BUNDLE_FORMAT", "BUNDLE_VERSION", "CNN_OPS_COLUMNS", "cnn_cores",
           "COLUMNS", "fbnet_row_ops", "read_cnn",
           "MeasurementError", "ofa_entry_ops", "read_apq_lut", "read_bundle", "read_fbnet",
           "read_ofa_luts", "read_profile", "read_profile_archs", "read_profile_units",
           "read_rows"]

# What ``latency_models.profile`` writes and :func:`read_bundle` reads. Version 2: networks
# exported as_trained (in version 1 shared zero biases kept many int8 convolutions in float).
BUNDLE_FORMAT = "edgenas-profile-bundle"
BUNDLE_VERSION = 2

COLUMNS = ("op", "H", "cin", "cout", "exp", "kernel", "stride", "group")


class MeasurementError(ValueError):
    """A measurement file that cannot be used."""


def fbnet_row_ops(row: dict) -> list[Op] | None:
    """Ops of one FBNet table row, or None for rows outside our space."""
    op = row["op"]
    h, cin, cout = int(row["H"]), int(row["cin"]), int(row["cout"])
    k = int(row["kernel"] or 1)
    s = int(row["stride"] or 1)
    g = int(row["group"] or 1)
    if g != 1:
        return None
    ho = conv_out_size(h, k, s)
    if op == "ConvBlock":
        mid = cin * int(row["exp"])
        ops = [conv_op("pwconv", cin, mid, 1, h, h, 32), Op("eltwise", 0, 2 * mid * h * h),
               conv_op("dwconv", mid, mid, k, h, ho, 32, groups=mid, stride=s),
               Op("eltwise", 0, 2 * mid * ho * ho), conv_op("pwconv", mid, cout, 1, ho, ho, 32)]
        if cin == cout and s == 1:
            ops.append(Op("add", 0, 3 * cout * ho * ho))
        return ops
    if op == "ConvNorm":
        return [conv_op("pwconv" if k == 1 else "conv", cin, cout, k, h, ho, 32, stride=s)]
    if op == "FC":
        return [Op("fc", cin * cout, cin + cout, 32, cin, cout, 1, 1, 1)]
    if op == "AvgP":
        return [gpool_op(cin, h)]
    if op == "Skip":
        # An identity; the measuring framework copied the tensor (time grows with its size).
        return [Op("eltwise", 0, 2 * cin * h * h)] if (cin == cout and s == 1) else None
    return None


def _open_text(path: str | os.PathLike):
    """A text file for reading, gunzipped on the fly when its name ends in ``.gz``."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return open(path, newline="", encoding="utf-8")


def bundle_file(folder, name: str):
    """``folder/name``, or ``folder/name.gz`` where only the gzipped copy exists (a bundle
    kept in a repository, such as the shipped host bundle, may be stored compressed)."""
    plain = folder / name
    packed = folder / f"{name}.gz"
    return packed if not plain.is_file() and packed.is_file() else plain


def read_rows(path: str | os.PathLike, required: tuple[str, ...]) -> list[dict]:
    """The rows of a measurement CSV (or gzipped CSV, ``.csv.gz``) that has at least one row
    and the ``required`` columns."""
    try:
        with _open_text(path) as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise MeasurementError(f"measurement file {path} does not exist") from None
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as exc:
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
    archs, ys = read_profile_archs(path)
    return [arch_ops(a) for a in archs], ys


def read_profile_archs(path: str | os.PathLike) -> tuple[list[Arch], list[float]]:
    """The architecture and median latency (ms) of each row of a ``latency_models.profile``
    CSV (what :func:`read_profile` and :func:`read_profile_units` derive their ops from)."""
    archs, ys = [], []
    for i, row in enumerate(read_rows(path, ("arch_json", "median_ms"))):
        try:
            archs.append(Arch.from_json(row["arch_json"]))
            ys.append(float(row["median_ms"]))
        except (ArchError, ValueError) as exc:
            raise MeasurementError(f"{path} row {i + 2}: {exc}") from None
        if not ys[-1] > 0:
            raise MeasurementError(f"{path} row {i + 2}: median_ms {ys[-1]} is not a "
                                   "positive time in milliseconds")
    return archs, ys


def read_profile_units(path: str | os.PathLike, native_bits: tuple[int, ...] = ()
                       ) -> list[list[list[Op]]]:
    """Each network of a ``latency_models.profile`` CSV as its layers (the units a layer
    model prices), in the order of :func:`read_profile`."""
    from latency_models.ops import arch_units

    return [arch_units(a, native_bits) for a in read_profile_archs(path)[0]]


def _positive(path, i: int, column: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise MeasurementError(f"{path} row {i + 2}: {column} = {value!r} is not a "
                               "number") from None
    if not v >= 0 or v != v:
        raise MeasurementError(f"{path} row {i + 2}: {column} = {v} is not a positive "
                               "number (times in milliseconds, energy in millijoules)")
    return v


def read_fbnet(path: str | os.PathLike, column: str, energy: str | None = None
               ) -> tuple[list[list[Op]], list[float], list[str], list[float] | None]:
    """Op lists, latencies (ms), keys and energies (mJ, when ``energy`` names a column) of
    the usable rows of the FBNet block table."""
    rows = read_rows(path, COLUMNS + (column,) + ((energy,) if energy else ()))
    samples, ys, keys, es = [], [], [], []
    for i, row in enumerate(rows):
        ops = fbnet_row_ops(row)
        if ops is None:
            continue
        ms = _positive(path, i, column, row[column])
        mj = _positive(path, i, energy, row[energy]) if energy else 1.0
        if row["op"] == "Skip" and (ms == 0 or mj == 0):
            continue  # an identity that the runtime elides (the TX2 GPU reports 0)
        if ms == 0 or mj == 0:
            raise MeasurementError(f"{path} row {i + 2}: a zero measurement for a block that "
                                   "does work; remove the row or re-measure it")
        samples.append(ops)
        ys.append(ms)
        keys.append(row.get("key", str(i)))
        es.append(mj)
    if not samples:
        raise MeasurementError(f"{path} has no usable rows for column {column}")
    return samples, ys, keys, (es if energy else None)


def read_bundle(folder: str | os.PathLike) -> dict:
    """The measured units of a profiling bundle (``latency_models.profile bundle=``).

    Returns a dict with ``samples`` (op lists), ``latency_ms``, ``units`` (the manifest entry
    of each, with ``unit`` "network" or "layer", ``network``, ``precision``), ``device``
    (what ``device.json`` recorded), ``results`` (the path of ``results.csv``) and
    ``energy_mj`` (per file, when the device's energy counter measured every file; else None).
    ``manifest.json`` and ``results.csv`` may be stored gzipped (``.gz``).
    """
    import json
    from pathlib import Path

    folder = Path(folder)
    manifest_path = bundle_file(folder, "manifest.json")
    try:
        with _open_text(manifest_path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise MeasurementError(f"{folder} has no manifest.json; pass the folder written by "
                               "`python -m latency_models.profile bundle=DIR`") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise MeasurementError(f"{manifest_path} is not valid JSON ({exc}): the file is damaged "
                               "or cut short; copy it again from the folder that "
                               "`python -m latency_models.profile bundle=DIR` wrote") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise MeasurementError(f"{folder}/manifest.json is not an edgenas profiling bundle")
    if manifest.get("version") == 1:
        raise MeasurementError(
            f"{folder} is a version 1 bundle: its untrained networks shared zero biases, so "
            "many of their 8-bit convolutions did not run as int8 and its int8 times do not "
            "match deployed models; write a new bundle (`python -m latency_models.profile "
            "bundle=DIR`) and measure it on the device")
    if manifest.get("version") != BUNDLE_VERSION:
        raise MeasurementError(f"{folder} is bundle version {manifest.get('version')}; this "
                               f"code reads version {BUNDLE_VERSION}: write a new bundle and "
                               "measure it")
    results = bundle_file(folder, "results.csv")
    if not results.is_file():
        raise MeasurementError(f"{folder} has no results.csv: run `python3 run_on_device.py` "
                               "in the bundle folder on the device, then copy results.csv and "
                               "device.json back into it")
    rows = read_rows(results, ("file", "median_ms"))
    by_file = {m["file"]: m for m in manifest["models"]}
    samples, ys, units, energy = [], [], [], []
    for i, row in enumerate(rows):
        entry = by_file.get(row["file"])
        if entry is None:
            raise MeasurementError(f"{results} row {i + 2}: {row['file']} is not in this "
                                   "bundle's manifest (results from another bundle?)")
        ms = _positive(results, i, "median_ms", row["median_ms"])
        if ms == 0:
            raise MeasurementError(f"{results} row {i + 2}: median_ms is 0; re-measure")
        samples.append([Op(*v) for v in entry["ops"]])
        ys.append(ms)
        units.append(entry)
        mj = row.get("energy_mj") or ""
        energy.append(_positive(results, i, "energy_mj", mj) if mj else None)
    missing = len(by_file) - len(rows)
    if missing:
        raise MeasurementError(f"{results} has {len(rows)} rows for {len(by_file)} files of "
                               "the manifest; the measurement did not finish: run "
                               "run_on_device.py again (it resumes)")
    try:
        device = json.loads((folder / "device.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        device = {}
    # Energy measured on the device (its RAPL counter) when every file has it.
    measured = all(e is not None and e > 0 for e in energy)
    return {"samples": samples, "latency_ms": ys, "units": units, "device": device,
            "results": results, "bundle_id": manifest.get("id", ""),
            "energy_mj": energy if measured else None}


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Once-for-All's channel rounding (as in its MobileNetV3 squeeze-excitation)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def ofa_entry_ops(name: str) -> list[Op] | None:
    """Ops of one Once-for-All (Note10) lookup-table entry, or None for an unknown entry.

    ``expanded_conv``: 1x1 expand (absent when ``expand`` equals the input channels), kxk
    depthwise, optional squeeze-excitation (global pool, 1x1 to expand/4 rounded to 8, ReLU,
    1x1 back, hard-sigmoid, scale), 1x1 project, residual add when ``idskip``; activations
    ReLU or hard-swish (``hs``). ``Conv`` is the stem (3x3, stride 2, hard-swish), ``Conv_1``
    the final 1x1 expand (hard-swish), ``AvgPool2D`` global pooling, ``Conv_2`` the 1x1
    feature mix on the pooled vector (hard-swish), ``Logits`` the classifier.
    """
    parts = dict(p.split(":", 1) for p in name.split("-")[1:])
    head = name.split("-", 1)[0]
    try:
        hi, _, ci = (int(v) for v in parts["input"].split("x"))
        out = [int(v) for v in parts["output"].split("x")]
    except (KeyError, ValueError):
        return None
    if head == "Logits":
        return [Op("fc", ci * out[0], ci + out[0], 32, ci, out[0], 1, 1, 1)]
    ho, co = out[0], out[2]
    if head == "AvgPool2D":
        return [gpool_op(ci, hi)]
    if head in ("Conv", "Conv_1", "Conv_2"):
        k = 3 if head == "Conv" else 1
        s = hi // ho if ho else 1
        return [conv_op("conv" if k == 3 else "pwconv", ci, co, k, hi, ho, 32, stride=s),
                Op("eltwise", 0, 2 * co * ho * ho)]
    if head != "expanded_conv":
        return None
    mid, k, s = int(parts["expand"]), int(parts["kernel"]), int(parts["stride"])
    ops = []
    if mid != ci:
        ops += [conv_op("pwconv", ci, mid, 1, hi, hi, 32), Op("eltwise", 0, 2 * mid * hi * hi)]
    ops += [conv_op("dwconv", mid, mid, k, hi, ho, 32, groups=mid, stride=s),
            Op("eltwise", 0, 2 * mid * ho * ho)]
    if parts.get("se") == "1":
        rd = _make_divisible(mid // 4)
        ops += [gpool_op(mid, ho), conv_op("pwconv", mid, rd, 1, 1, 1, 32),
                Op("eltwise", 0, 2 * rd), conv_op("pwconv", rd, mid, 1, 1, 1, 32),
                Op("eltwise", 0, 2 * mid), Op("eltwise", 0, 2 * mid * ho * ho + mid)]
    ops.append(conv_op("pwconv", mid, co, 1, ho, ho, 32))
    if parts.get("idskip") == "1":
        ops.append(Op("add", 0, 3 * co * ho * ho))
    return ops


def read_ofa_luts(folder: str | os.PathLike) -> tuple[list[list[Op]], list[float], list[str]]:
    """Op lists, mean latencies (ms) and keys of every entry of Once-for-All's lookup tables
    (``{R}_lookup_table.yaml``, one per input resolution R)."""
    from pathlib import Path

    import yaml

    files = sorted(Path(folder).glob("*_lookup_table.yaml"))
    if not files:
        raise MeasurementError(f"{folder} has no *_lookup_table.yaml files (Once-for-All "
                               "latency lookup tables)")
    samples, ys, keys = [], [], []
    for path in files:
        try:
            table = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise MeasurementError(f"{path} is not valid YAML ({exc})") from None
        for name, entry in (table or {}).items():
            ops = ofa_entry_ops(name)
            if ops is None:
                raise MeasurementError(f"{path}: entry {name!r} is not one this reader knows")
            try:
                ms = float(entry["mean"])
            except (KeyError, TypeError, ValueError):
                raise MeasurementError(f"{path}: entry {name!r} has no numeric 'mean'") \
                    from None
            if not ms > 0:
                raise MeasurementError(f"{path}: entry {name!r} has mean {ms}, not a positive "
                                       "time in milliseconds")
            samples.append(ops)
            ys.append(ms)
            keys.append(f"{path.name.split('_')[0]}:{name}")
    return samples, ys, keys


def read_apq_lut(path: str | os.PathLike) -> tuple[list[list[Op]], list[float], list[float],
                                                   list[str]]:
    """Op lists, latencies (ms), energies (mJ) and keys of APQ's BitFusion table.

    Keys are ``(cin, cout, input_size, kernel, stride, padding, groups)-W{w}A{a}``: one
    pointwise or depthwise convolution at ``w``-bit weights and ``a``-bit activations. The
    search gives a layer one bit-width for both, so the rows with ``w == a`` are read (the op
    runs at that width); ``head``/``tail`` (whole network ends of another space) are skipped.
    The table is simulated (APQ, CVPR 2020), not measured.
    """
    import json
    import re

    try:
        table = json.loads(open(path).read())
    except FileNotFoundError:
        raise MeasurementError(f"lookup table {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MeasurementError(f"lookup table {path} is not valid JSON ({exc})") from None
    pattern = re.compile(r"^\((\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)-W(\d+)A(\d+)$")
    samples, ys, es, keys = [], [], [], []
    for key, entry in table.items():
        m = pattern.match(key)
        if m is None:
            if key in ("head", "tail"):
                continue
            raise MeasurementError(f"{path}: key {key!r} is not (cin, cout, size, kernel, "
                                   "stride, padding, groups)-W<bits>A<bits>")
        cin, cout, size, k, s, _, groups, w, a = (int(v) for v in m.groups())
        if w != a:
            continue
        try:
            ms, mj = float(entry["latency"]), float(entry["energy"])
        except (KeyError, TypeError, ValueError):
            raise MeasurementError(f"{path}: entry {key!r} needs numeric latency and energy") \
                from None
        if not (ms > 0 and mj > 0):
            raise MeasurementError(f"{path}: entry {key!r} has a latency or energy that is not "
                                   "positive")
        ho = conv_out_size(size, k, s)
        kind = "dwconv" if groups > 1 else ("pwconv" if k == 1 else "conv")
        samples.append([conv_op(kind, cin, cout, k, size, ho, w, groups=groups, stride=s)])
        ys.append(ms)
        es.append(mj)
        keys.append(key)
    if not samples:
        raise MeasurementError(f"{path} has no entries with equal weight and activation bits")
    return samples, ys, es, keys


# ---- real CNNs measured end to end (mobile_cnn: TFLite on phone cores) ------------------------
CNN_OPS_COLUMNS = ("network", "precision", "kind", "macs", "elems", "bits", "cin", "cout",
                   "kernel", "stride", "size", "groups")
_CNN_PRECISIONS = {"float": 32, "quant": 8}  # the measurement file's words, our bits


def cnn_cores(path: str | os.PathLike) -> list[str]:
    """The ``device|cores`` of a measurement file with both fp32 and int8 means."""
    return _cores(read_rows(path, ("model",))[0].keys())


def _cores(header) -> list[str]:
    cores = {c.rsplit("|", 2)[0] for c in header if c.count("|") == 3}
    return sorted(c for c in cores
                  if all(f"{c}|{p}|mean" in header for p in _CNN_PRECISIONS))


def _cnn_ops(path) -> dict:
    """(network, bits) -> its op list, from a ``scripts/cnn_zoo.py`` ops file."""
    out: dict = {}
    for i, row in enumerate(read_rows(path, CNN_OPS_COLUMNS)):
        try:
            op = Op(row["kind"], *(int(row[c]) for c in CNN_OPS_COLUMNS[3:]))
            out.setdefault((row["network"], int(row["precision"])), []).append(op)
        except ValueError as exc:
            raise MeasurementError(f"{path} row {i + 2}: {exc}") from None
    return out


def read_cnn(path: str | os.PathLike, core: str, ops_path: str | os.PathLike | None = None
             ) -> tuple[list[list[Op]], list[float], list[str]]:
    """Whole networks measured end to end in fp32 and int8 on one set of cores: op lists,
    latencies (ms) and each sample's network (to keep a network's two precisions in one
    cross-validation fold).

    Args:
        path: a CSV with a ``model`` column and ``DEVICE|CORES|float|mean`` and
            ``DEVICE|CORES|quant|mean`` columns in microseconds (the ``mobile_cnn_latency``
            layout; ``quant`` is the fully 8-bit model).
        core: ``DEVICE|CORES``, e.g. ``pixel4|1large``.
        ops_path: the networks' ops (``scripts/cnn_zoo.py``); default ``ops.csv.gz`` beside
            ``path``.
    """
    rows = read_rows(path, ("model",))
    cores = _cores(rows[0].keys())
    if core not in cores:
        known = ", ".join(cores) or "none (not the DEVICE|CORES|PRECISION|STAT column layout)"
        raise MeasurementError(
            f"{path} has no fp32 and int8 columns for core={core!r} (expected "
            f"'{core}|float|mean' and '{core}|quant|mean', latencies in microseconds); "
            f"its cores: {known}")
    ops_path = ops_path or os.path.join(os.path.dirname(str(path)), "ops.csv.gz")
    if not os.path.isfile(ops_path):
        raise MeasurementError(f"{ops_path} does not exist: the networks' ops; make it with "
                               "`python scripts/cnn_zoo.py` (needs pytorchcv) or pass "
                               "cnn_ops=FILE")
    ops = _cnn_ops(ops_path)
    samples, ys, groups = [], [], []
    for i, row in enumerate(rows):
        for word, bits in _CNN_PRECISIONS.items():
            column = f"{core}|{word}|mean"
            if not (row.get(column) or "").strip():
                continue  # not measured on this core
            us = _positive(path, i, column, row[column])
            if us == 0:
                raise MeasurementError(f"{path} row {i + 2}: {column} is 0, not a latency")
            if (row["model"], bits) not in ops:
                raise MeasurementError(f"{path} row {i + 2}: network {row['model']!r} has no "
                                       f"{bits}-bit ops in {ops_path}; regenerate it with "
                                       "`python scripts/cnn_zoo.py`")
            samples.append(ops[(row["model"], bits)])
            ys.append(us / 1000.0)
            groups.append(row["model"])
    if not samples:
        raise MeasurementError(f"{path} has no measurements for core={core!r}")
    return samples, ys, groups
