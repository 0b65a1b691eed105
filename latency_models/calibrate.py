"""``python -m latency_models.calibrate +device=NAME name=NEW [networks=100] [threads=1]``

Calibrates a device model to the machine it runs on, in about a minute: exports ``networks``
architectures sampled from the default space (fp32 and mixed int8), measures them here with
onnxruntime side by side in interleaved rounds, and transfers ``+device``'s model to these
measurements (:meth:`DeviceModel.transfer`: one scale per op kind and precision, the layer
model kept, its composition refitted, its network correction kept). Writes
``./conf/device/NEW.yaml``, the model ``./conf/device/NEW.json`` and the measurements
``./conf/device/NEW.measurements.csv``, so that ``python -m search +device=NEW`` prices for
this machine. ``+device=host`` calibrates the project's x86 model to your computer; on a
Raspberry Pi, ``+device=rpi4`` calibrates the Pi model to that Pi.

A machine that is busy or throttling measures the same file at different speeds from one
round to the next: the command says so from the spread of its measurements and writes
nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from latency_models.devices import DEVICE_GROUP, DeviceConfig, known_devices
from latency_models.estimators import DeviceModelError
from spaces.arch import all_bits
from spaces.cli import HydraApp, arg
from spaces.files import SAFE_NAME

__all__ = ["busy_share", "calibrate", "CalibrateConfig", "CalibrationError", "COMMAND",
           "main", "pinned", "steadiness"]


class CalibrationError(ValueError):
    """A calibration that cannot run or whose measurements cannot be trusted."""


@dataclass
class CalibrateConfig:
    """``python -m latency_models.calibrate``: the model to start from, the new device's
    name, and how much to measure."""

    device: DeviceConfig = field(default_factory=DeviceConfig)  # +device=NAME (conf/device/)
    name: str = arg(help="the new device's name (./conf/device/NAME.yaml)")
    networks: int = arg(100, "networks to measure (each in fp32 and, where it has 8-bit "
                             "layers, mixed int8)")
    threads: int = arg(1, "onnxruntime threads, as the device model you will search with")
    rounds: int = arg(15, "interleaved rounds of measurement (median over them)")
    runs: int = arg(20, "runs of each network per round")
    seed: int = arg(7, "the networks' sampling seed")
    max_spread: float = arg(0.08, "refuse when a network's time varies more than this "
                                  "between rounds (median over networks; a quiet machine: "
                                  "about 0.02)")
    max_drift: float = arg(0.08, "refuse when the last rounds ran this much slower than the "
                                 "first (throttling)")


COMMAND = HydraApp(
    module="latency_models.calibrate",
    summary="Calibrate a device model to this machine: measure networks of the search space\n"
            "here (about a minute), transfer +device's model to them, and write\n"
            "./conf/device/NAME.yaml (and NAME.json, NAME.measurements.csv), so that\n"
            "`python -m search +device=NAME` prices for this machine.",
    schema=CalibrateConfig,
    usage_args="+device=NAME name=NEW",
    **DEVICE_GROUP,
    examples=["+device=host name=mylaptop", "+device=rpi4 name=mypi networks=60"],
)


def busy_share(seconds: float = 0.5) -> float | None:
    """The share of this machine's CPU time other programs used over ``seconds`` (None where
    ``/proc/stat`` cannot be read)."""
    def sample() -> tuple[int, int] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values[:8]) - idle, sum(values[:8])

    def own() -> float:
        t = os.times()
        return t.user + t.system

    first, own0 = sample(), own()
    time.sleep(seconds)
    second, own1 = sample(), own()
    if first is None or second is None or second[1] <= first[1]:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (second[0] - first[0]) - (own1 - own0) * tick
    return max(0.0, busy / (second[1] - first[1]))


def steadiness(round_ms: list[list[float]]) -> tuple[float, float]:
    """(spread, drift) of measurements taken in interleaved rounds: the median over files
    of (p90 - p10) / median of a file's round medians, and the median over files of how
    much slower its last third of rounds ran than its first third (minus 1)."""
    spreads, drifts = [], []
    for rounds in round_ms:
        r = np.asarray(rounds, float)
        if len(r) < 3 or not np.median(r) > 0:
            continue
        p10, p90 = np.percentile(r, [10, 90])
        spreads.append((p90 - p10) / np.median(r))
        third = max(1, len(r) // 3)
        drifts.append(np.median(r[-third:]) / np.median(r[:third]) - 1)
    if not spreads:
        return 0.0, 0.0
    return float(np.median(spreads)), float(np.median(drifts))


@contextmanager
def pinned(threads: int) -> Iterator[None]:
    """One thread runs on one core (as the shipped host model was measured): the scheduler
    moving it between cores adds noise. Restored afterwards."""
    if threads != 1 or not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def _targets(name: str) -> dict[str, Path]:
    folder = Path.cwd() / "conf" / "device"
    return {"yaml": folder / f"{name}.yaml", "model": folder / f"{name}.json",
            "csv": folder / f"{name}.measurements.csv"}


def _check(cfg: CalibrateConfig) -> None:
    problems = []
    if not SAFE_NAME.match(cfg.name or ""):
        problems.append(f"name={cfg.name!r} may only hold letters, digits, '.', '_' and '-' "
                        "(it names files)")
    elif cfg.name in known_devices() or any(p.exists() for p in _targets(cfg.name).values()):
        found = [str(p) for p in _targets(cfg.name).values() if p.exists()]
        problems.append(f"a device named {cfg.name!r} exists already ("
                        + (", ".join(found) if found else "a shipped device")
                        + "); choose another name, or delete "
                        + ("those files" if found else "nothing: shipped devices stay")
                        + " to calibrate it again")
    if min(cfg.networks, cfg.threads, cfg.rounds, cfg.runs) < 1 or cfg.rounds < 3:
        problems.append("networks, threads and runs must be at least 1 and rounds at least 3")
    if cfg.networks < 30:
        problems.append(f"networks={cfg.networks} is too few to calibrate on (at least 30; "
                        "100 take about a minute)")
    if problems:
        raise CalibrationError("; ".join(problems) + ".")


def _unsteady(spread: float, drift: float, busy: float | None, cfg: CalibrateConfig) -> str:
    cause = []
    if drift > cfg.max_drift:
        cause.append(f"the last rounds ran {drift:.0%} slower than the first, as a machine "
                     "that heats up and throttles does (let it cool, plug a laptop in, or "
                     "give a Raspberry Pi a heatsink or fan)")
    if spread > cfg.max_spread:
        cause.append(f"the same network's time varied by {spread:.0%} between rounds (median "
                     f"over networks; a quiet machine: about 2%), as on a machine busy with "
                     "other programs"
                     + (f" (they used {busy:.0%} of the CPU just before)" if busy else ""))
    if not cause:
        return ""
    return ("this machine did not run steadily enough to calibrate on: " + "; ".join(cause)
            + ". Close other programs (browsers, builds, other searches), wait for the "
            "machine to be idle and run the command again. Nothing was written.")


def calibrate(cfg: CalibrateConfig) -> int:
    """Measure, transfer and write the device ``cfg.name``. Returns the exit status."""
    from latency_models.fit import TransferFit, accuracy, cross_validate, device_yaml
    from latency_models.model import DeviceModel
    from latency_models.ops import arch_ops, arch_units
    from latency_models.profile import cpu_name, profile
    from latency_models.sources import MeasurementError, read_profile_archs
    from spaces.files import write_text

    try:
        _check(cfg)
        base = DeviceModel.load(cfg.device.model_path())
    except (CalibrationError, DeviceModelError, OSError) as exc:
        print(f"error: {exc} {COMMAND.usage()}", file=sys.stderr)
        return 2
    targets = _targets(cfg.name)
    busy = busy_share()
    if busy is not None and busy > 0.5:
        print(f"note: other programs used {busy:.0%} of the CPU just now; the measurements "
              "are checked for it when they are done", flush=True)
    start = time.time()
    rounds: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp, pinned(cfg.threads):
        measured = Path(tmp) / "measurements.csv"
        profile(n=cfg.networks, seed=cfg.seed, out=str(measured), threads=cfg.threads,
                rounds=cfg.rounds, runs=cfg.runs, round_ms=rounds, announce=False)
        spread, drift = steadiness(rounds)
        problem = _unsteady(spread, drift, busy, cfg)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        try:
            measured_archs, ys = read_profile_archs(measured)
        except MeasurementError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        csv_text = measured.read_text()
    ys = np.asarray(ys)
    samples = [arch_ops(a) for a in measured_archs]
    before = np.array([base.price(a).latency_ms for a in measured_archs])
    archs, units = measured_archs, [arch_units(a, tuple(base.native_bits))
                                    for a in measured_archs]
    if base.layers is None:
        units = archs = None  # a device fitted from blocks: its op model is scaled
    # a network's fp32 and int8 files fall in the same fold
    groups = np.cumsum([a.bits == all_bits(a, 32).bits for a in measured_archs])
    cv = cross_validate(lambda: TransferFit(DeviceModel(cfg.name, base.power_w),
                                            base, samples, units, archs), samples, ys,
                        groups=list(groups))
    # energy: power x the calibrated latency (a transfer keeps no energy regressor)
    model = DeviceModel(cfg.name, base.power_w, power_source=base.power_source,
                        fallback=dict(base.fallback), native_bits=list(base.native_bits),
                        energy_source="modelled")
    model.transfer(base, samples, ys, units=units, archs=archs)
    model.add_measurements(samples, ys)
    uncalibrated = accuracy(before, ys)
    model.meta = dict(model.meta, source="python -m latency_models.calibrate",
                      measured_on={"cpu": cpu_name(), "cores": os.cpu_count(),
                                   "threads": cfg.threads},
                      held_out=cv, n_samples=len(ys), steadiness={
                          "spread": round(spread, 4), "drift": round(drift, 4)})
    # The model and the measurements first; the YAML, which makes the device visible, last.
    try:
        model.save(targets["model"])
        write_text(targets["csv"], csv_text)
        write_text(targets["yaml"], device_yaml(
            cfg.name, f"conf/device/{cfg.name}.json", list(cfg.device.bits),
            f"{cpu_name()}, onnxruntime CPU execution provider, {cfg.threads} "
            f"thread{'s' if cfg.threads > 1 else ''}; "
            f"calibrated from {cfg.device.name}",
            f"{cfg.device.name} calibrated here with {cfg.networks} networks (python -m "
            f"latency_models.calibrate); energy {model.energy_source}",
            by="latency_models.calibrate"))
    except OSError as exc:
        for path in targets.values():
            path.unlink(missing_ok=True)
        print(f"error: cannot write {targets['yaml'].parent} ({exc}); nothing was written",
              file=sys.stderr)
        return 1
    ratio = float(np.median(ys / before))
    print(f"measured {len(ys)} files ({cfg.networks} networks, fp32 and mixed int8) in "
          f"{time.time() - start:.0f} s (steady: spread "
          f"{spread:.1%}, drift {drift:+.1%}); this machine runs them {ratio:.2f}x "
          f"{cfg.device.name}'s prediction")
    print(f"{cfg.device.name} as it was: {uncalibrated['within_10pct']:.0%} of them within "
          f"+-10%; calibrated, held out (5-fold): {cv['within_10pct']:.0%} within +-10%, "
          f"MAPE {cv['mape']:.1%}")
    print(f"wrote {targets['yaml']}, {targets['model'].name} and "
          f"{targets['csv'].name}: run `python -m search +device={cfg.name}` from this folder")
    return 0


def main(argv: list[str] | None = None) -> int:
    return COMMAND.run(calibrate, argv)


if __name__ == "__main__":
    sys.exit(main())
