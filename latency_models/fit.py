"""Fit a device model from measurements, print its held-out accuracy, write its config.

    # a device profiled with a bundle (this machine: latency_models/data/host-bundle)
    python -m latency_models.fit device=host bundle=latency_models/data/host-bundle \
        power_w=15 out=latency_models/data/host.json
    # networks measured here by `python -m latency_models.profile out=FILE.csv`
    python -m latency_models.fit device=mine measurements=FILE.csv power_w=15
    # Samsung Note10, from Once-for-All's lookup tables (squeeze-excitation, hard-swish)
    python -m latency_models.fit device=note10 ofa=latency_models/data/ofa_note10_lut \
        power_w=3.5 out=latency_models/data/note10.json
    # BitFusion accelerator, from APQ's simulated 4/6/8-bit table (latency and energy)
    python -m latency_models.fit device=bitfusion apq=latency_models/data/apq_bitfusion_lut.json \
        power_w=1 bits=[8,6,4] out=latency_models/data/bitfusion.json
    # Pixel 4 big core (Cortex-A76, TFLite, 1 thread): 70 real CNNs in fp32 and int8
    python -m latency_models.fit device=pixel4 \
        cnn=latency_models/data/mobile_cnn/tflite_cnn_e2e.csv core='pixel4|1large' \
        power_w=2 out=latency_models/data/pixel4.json
    # Raspberry Pi 4, from HW-NAS-Bench's FBNet block table
    python -m latency_models.fit device=rpi4 \
        fbnet=latency_models/data/hwnasbench_fbnet_blocks.csv \
        column=raspi4_latency power_w=5.25 out=latency_models/data/rpi4.json
    # Jetson TX2 with its measured energy
    python -m latency_models.fit device=jetson_tx2 fbnet=... column=edgegpu_latency \
        energy=edgegpu_energy power_w=6 out=latency_models/data/jetson_tx2.json
    # a new board with a few measurements, borrowing the structure of a richer device
    python -m latency_models.fit device=myboard measurements=results.csv \
        base=latency_models/data/rpi4.json power_w=4

Held-out accuracy is 5-fold cross-validation over the measured units (networks or blocks),
predicted by the regressor alone (no lookup of the held-out unit). Besides the model JSON the
command writes ``conf/device/NAME.yaml`` (``conf=`` to put it elsewhere), so that
``python -m search +device=NAME`` finds the new device.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from latency_models.estimators import nnls
from latency_models.model import DeviceModel, DeviceModelError
from latency_models.ops import Op, arch_ops, arch_units, signature
from latency_models.sources import (
    MeasurementError,
    read_apq_lut,
    read_bundle,
    read_cnn,
    read_fbnet,
    read_ofa_luts,
    read_profile_archs,
)
from spaces.cli import HydraApp, arg
from spaces.files import write_text

__all__ = ["accuracy", "COMMAND", "cross_validate", "cross_validate_bundle", "device_yaml", "fit",
           "fit_bundle", "FitConfig", "flops_fit", "main", "precision_settings",
           "priced_out_of_fold", "SOURCES",
           "spearman", "TransferFit"]


@dataclass
class FitConfig:
    """``python -m latency_models.fit``: one source of measurements, the device's name and
    power."""

    device: str = arg(help="the new device's name")
    power_w: float = arg(help="the device's active power in watts (energy = power x latency "
                              "where not measured)")
    bundle: Optional[str] = arg(None, "source: a profiling bundle measured on the device "
                                      "(run_on_device.py)")
    measurements: Optional[str] = arg(None, "source: a CSV from `python -m "
                                            "latency_models.profile out=FILE.csv`")
    fbnet: Optional[str] = arg(None, "source: HW-NAS-Bench's FBNet block table (with "
                                     "column=)")
    column: str = arg("raspi4_latency", "fbnet: the latency column")
    energy: Optional[str] = arg(None, "fbnet: the energy column, where the table has one")
    ofa: Optional[str] = arg(None, "source: a folder of Once-for-All latency lookup tables")
    apq: Optional[str] = arg(None, "source: APQ's BitFusion table (simulated latency and "
                                   "energy)")
    cnn: Optional[str] = arg(None, "source: real CNNs measured end to end in fp32 and int8 "
                                   "(latency_models/data/mobile_cnn/tflite_cnn_e2e.csv), "
                                   "with core=")
    core: str = arg("pixel4|1large", "cnn: the DEVICE|CORES columns (e.g. pixel4|1small)")
    cnn_ops: Optional[str] = arg(None, "cnn: the networks' ops (default: ops.csv.gz beside "
                                       "the CSV; made by scripts/cnn_zoo.py)")
    base: Optional[str] = arg(None, "a richer device's model JSON to transfer from (few "
                                    "measurements)")
    power_source: str = arg("", "where power_w comes from, in words (shown in outputs)")
    power_log: Optional[str] = arg(None, "a power meter's CSV (timestamp,watts) logged while "
                                         "measuring")
    out: Optional[str] = arg(None, "the model JSON to write (null: conf/device/NAME.json)")
    conf: Optional[str] = arg(None, "the device YAML to write (null: conf/device/NAME.yaml)")
    bits: list[int] = arg([32, 8], "bit-widths the search may use on it")
    description: Optional[str] = arg(None, "a line describing the device (null: its name)")


COMMAND = HydraApp(
    module="latency_models.fit",
    summary="Fit a device's latency (and energy) model from its measurements, print its\n"
            "held-out accuracy (5-fold), and write the model JSON and conf/device/NAME.yaml,\n"
            "so that `python -m search +device=NAME` finds the device. Give one source.",
    schema=FitConfig,
    examples=["device=mypi bundle=pi-bundle power_w=5",
              "device=mine measurements=host_measurements.csv power_w=15",
              "device=myboard measurements=results.csv base=latency_models/data/rpi4.json "
              "power_w=4",
              "device=s10_a75 cnn=latency_models/data/mobile_cnn/tflite_cnn_e2e.csv "
              "core='s10|1med' power_w=1.5"],
    usage_args="device=NAME (bundle=DIR | measurements=FILE.csv | ...) power_w=WATTS",
)
SOURCES = ("bundle", "measurements", "fbnet", "ofa", "apq", "cnn")


def precision_settings(samples: list[list[Op]], source: str) -> tuple[list[int], dict]:
    """(the bit-widths a device runs exactly, precision -> its stand-in where never measured)
    for a model fitted on ``samples`` from ``source`` (one of :data:`SOURCES`).

    Precisions never measured are priced as fp32 and labelled "modelled" (never silently).
    An integer accelerator (``apq``) runs every width it has exactly, float as 8-bit.
    TFLite (``cnn``) runs int8 and fp32 exactly, and the fit is monotone (per unit of each
    feature an op never costs more at 8 bits than at 32): the same held-out accuracy on the
    real CNNs, and no int8 layer priced dearer than fp32 far below the sizes measured (the
    unconstrained fit priced the 28-px space's int8 layers 1.7 times fp32's).
    """
    measured = sorted({op.bits for s in samples for op in s})
    if source == "apq":
        return measured, {"32": 8, "16": 8}
    return (measured if source == "cnn" else []), {"8": 32, "16": 32}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation, ties ranked by their average (FLOPs often tie)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def flops_fit(macs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The FLOPs-only baseline: (a, b) of y = a * MMACs + b, non-negative, relative error."""
    x = np.stack([np.asarray(macs, float) / 1e6, np.ones(len(y))], axis=1)
    a, b = nnls(x / np.asarray(y, float)[:, None], np.ones(len(y)))
    return float(a), float(b)


def accuracy(pred: np.ndarray, y: np.ndarray, digits: int | None = None) -> dict:
    """Shares within +-10% and +-20%, mean absolute percentage error and Spearman of
    predictions (rounded to ``digits`` where given)."""
    err = np.abs(np.asarray(pred) - y) / y
    out = {"within_10pct": float(np.mean(err <= 0.10)),
           "within_20pct": float(np.mean(err <= 0.20)), "mape": float(np.mean(err)),
           "spearman": spearman(pred, y)}
    if digits is not None:
        out = {k: round(v, digits) for k, v in out.items()}
    return dict(out, n=int(len(y)))


def cross_validate(make: callable, samples: list[list[Op]], ys, folds: int = 5,
                   seed: int = 0, energy=None, groups=None, evaluate=None) -> dict:
    """Held-out accuracy of ``make().fit`` (latency, and energy when ``energy`` is given).

    ``groups`` keeps units of one group (a network and its layers) in the same fold;
    ``evaluate`` (booleans) scores only those units (the networks), by the regressor alone.
    """
    y = np.asarray(ys, dtype=float)
    e = None if energy is None else np.asarray(energy, dtype=float)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    names = np.unique(g)
    order = names[np.random.default_rng(seed).permutation(len(names))]
    pred, pred_e = np.zeros_like(y), np.zeros_like(y)
    for k in range(folds):
        test = np.flatnonzero(np.isin(g, order[k::folds]))
        train = np.setdiff1d(np.arange(len(y)), test)
        model = make().fit([samples[i] for i in train], y[train],
                           energy_mj=None if e is None else e[train])
        for i in test:
            p = model.price(samples[i])
            pred[i], pred_e[i] = p.latency_ms, p.energy_mj
    sel = np.ones(len(y), bool) if evaluate is None else np.asarray(evaluate, bool)
    out = dict(accuracy(pred[sel], y[sel]), folds=folds)
    if e is not None:
        out["energy"] = accuracy(pred_e[sel], e[sel])
    return out


def fit_bundle(make: callable, bundle: dict, networks=None, energy=None,
               correct: bool = True) -> DeviceModel:
    """A device model from a measured bundle: the linear op model on the whole networks (the
    ONNX path), the layer model and composition on the layers and networks (the
    architecture path), every unit in the lookup table, and (``correct``) the network
    correction, fitted on the networks priced out of fold. ``networks`` restricts it to
    those network ids (cross-validation)."""
    from latency_models.ops import arch_units
    from spaces.arch import Arch

    samples, units = bundle["samples"], bundle["units"]
    ys = np.asarray(bundle["latency_ms"])
    keep = [i for i, u in enumerate(units) if networks is None or u["network"] in networks]
    nets = [i for i in keep if units[i]["unit"] == "network"]
    layers = [i for i in keep if units[i]["unit"] == "layer"]
    model = make().fit([samples[i] for i in nets], ys[nets],
                       energy_mj=None if energy is None else np.asarray(energy)[nets])
    composed = [i for i in nets if units[i]["precision"] != "fp16"]
    if layers and composed:
        model.fit_layers([samples[i] for i in layers], ys[layers],
                         [arch_units(Arch.from_json(units[i]["arch_json"])) for i in composed],
                         ys[composed])
        if correct:
            ids = {units[i]["network"] for i in keep}
            archs, priced, measured = priced_out_of_fold(make, bundle, ids, energy=energy,
                                                         correct=False)
            model.fit_network_model(archs, priced, measured)
    model.add_measurements([samples[i] for i in nets], ys[nets],
                           None if energy is None else np.asarray(energy)[nets])
    return model


def priced_out_of_fold(make: callable, bundle: dict, networks: set, folds: int = 5,
                       seed: int = 0, energy=None, correct: bool = True
                       ) -> tuple[list, np.ndarray, np.ndarray]:
    """The fp32 and int8 networks among ``networks``, each priced from its architecture (as
    the search does) by a model fitted on the other folds of whole networks, with their
    layers: (architectures, predicted ms, measured ms)."""
    from spaces.arch import Arch

    units, ys = bundle["units"], np.asarray(bundle["latency_ms"])
    ids = np.array(sorted(networks))
    order = ids[np.random.default_rng(seed).permutation(len(ids))]
    archs, pred, truth = [], [], []
    for k in range(folds):
        test = set(order[k::folds].tolist())
        model = fit_bundle(make, bundle, networks=set(ids.tolist()) - test, energy=energy,
                           correct=correct)
        for i, u in enumerate(units):
            if u["network"] in test and u["unit"] == "network" and u["precision"] != "fp16":
                archs.append(Arch.from_json(u["arch_json"]))
                pred.append(model.price(archs[-1]).latency_ms)
                truth.append(ys[i])
    return archs, np.array(pred), np.array(truth)


def cross_validate_bundle(make: callable, bundle: dict, folds: int = 5, seed: int = 0,
                          energy=None) -> dict:
    """Held-out accuracy on a bundle's networks: folds of whole networks (with their layers);
    held-out fp32 and int8 networks priced from their architecture as the search does, by
    the layers measured in other networks, the layer model, the composition and the network
    correction (fitted within the other folds)."""
    ids = {u["network"] for u in bundle["units"]}
    _, pred, truth = priced_out_of_fold(make, bundle, ids, folds, seed, energy)
    return dict(accuracy(pred, truth), folds=folds)


def device_yaml(name: str, model_ref: str, bits: list[int], description: str,
                provenance: str, by: str = "latency_models.fit") -> str:
    return (f"# Written by python -m {by}\nname: {name}\n"
            f"description: {description}\nmodel: {model_ref}\nbits: {bits}\n"
            f"provenance: {provenance}\n")


def main(argv: list[str] | None = None) -> int:
    return COMMAND.run(fit, argv)


def fit(cfg: FitConfig) -> int:
    """Fit, print and write the device model ``cfg`` asks for. Returns the exit status."""
    from latency_models.devices import MODEL_DIR

    args = {k: v for k, v in vars(cfg).items() if v is not None}
    sources = [k for k in SOURCES if k in args]
    problems = []
    if len(sources) != 1:
        problems.append(f"give exactly one source of measurements ({', '.join(SOURCES)}); "
                        f"got {len(sources)}")
    if not cfg.power_w > 0:
        problems.append(f"power_w={cfg.power_w} must be a positive number of watts")
    if not cfg.bits:
        problems.append("bits=[] must list at least one bit-width")
    if problems:
        print(f"error: {'; '.join(problems)}. {COMMAND.usage()}", file=sys.stderr)
        return 2
    name, power_w, bits = cfg.device, cfg.power_w, list(cfg.bits)
    out = Path(cfg.out or f"conf/device/{name}.json")
    groups, evaluate, device_info, simulated = None, None, {}, False
    try:
        energy = None
        if "bundle" in args:
            bundle = read_bundle(args["bundle"])
            samples, ys = bundle["samples"], bundle["latency_ms"]
            groups = [u["network"] for u in bundle["units"]]
            evaluate = [u["unit"] == "network" for u in bundle["units"]]
            device_info = dict(bundle["device"], bundle=bundle["bundle_id"])
            source = f"bundle {args['bundle']}"
            energy = bundle["energy_mj"]  # the device's RAPL counter, where it had one
            args["measurements"] = str(bundle["results"])
        elif "apq" in args:
            samples, ys, energy, _ = read_apq_lut(args["apq"])
            source = f"APQ BitFusion table {args['apq']} (simulated)"
            simulated = True
        elif "cnn" in args:
            samples, ys, groups = read_cnn(args["cnn"], cfg.core, args.get("cnn_ops"))
            source = f"{args['cnn']} core {cfg.core} (fp32 and int8, whole networks)"
        elif "ofa" in args:
            samples, ys, _ = read_ofa_luts(args["ofa"])
            source = f"Once-for-All lookup tables in {args['ofa']}"
        elif "fbnet" in args:
            column = cfg.column
            samples, ys, _, energy = read_fbnet(args["fbnet"], column, args.get("energy"))
            source = f"{args['fbnet']} column {column}"
        else:
            profiled, ys = read_profile_archs(args["measurements"])
            samples = [arch_ops(a) for a in profiled]
            source = args["measurements"]
        if "power_log" in args:
            from latency_models.power import energy_from_log

            energy = energy_from_log(args["measurements"], args["power_log"])
        base = DeviceModel.load(args["base"]) if "base" in args else None
    except (MeasurementError, DeviceModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    native_bits, fallback = precision_settings(samples, "apq" if simulated else sources[0])
    energy_source = "modelled" if energy is None else ("simulated" if simulated else
                                                       "measured")
    power_source = cfg.power_source

    def make() -> DeviceModel:
        return DeviceModel(device=name, power_w=power_w, power_source=power_source,
                           fallback=fallback, energy_source=energy_source,
                           latency_source="simulated" if simulated else "measured",
                           native_bits=native_bits)

    if base is None and "bundle" in args:
        cv = cross_validate_bundle(make, bundle, energy=energy)
        model = fit_bundle(make, bundle, energy=energy)
    elif base is None:
        cv = cross_validate(make, samples, ys, energy=energy, groups=groups, evaluate=evaluate)
        model = make().fit(samples, ys, energy_mj=energy)
    else:
        # A profiled base (layer model) keeps its layer model when the measurements are whole
        # networks of the search space: only the composition is refitted.
        units = archs = None
        if base.layers is not None and "measurements" in args and "bundle" not in args:
            archs = profiled
            units = [arch_units(a, tuple(base.native_bits)) for a in archs]
        cv = cross_validate(lambda: TransferFit(make(), base, samples, units, archs), samples,
                            ys, groups=groups, evaluate=evaluate)
        model = make().transfer(base, samples, ys, units=units, archs=archs)
    if ("measurements" in args and "bundle" not in args) or "cnn" in args:
        model.add_measurements(samples, ys, energy)  # a network measured whole: looked up
    model.meta = dict(model.meta, source=source, held_out=cv, n_samples=len(ys))
    if device_info:
        model.meta["measured_on"] = device_info
    model.save(out)
    print(f"{name}: {len(ys)} units from {source}"
          + (f", transferred from {base.device}" if base else ""))
    print(f"held-out (5-fold): {cv['within_10pct']:.1%} within +-10%, MAPE {cv['mape']:.1%}, "
          f"Spearman {cv['spearman']:.3f}"
          + (f"; energy {cv['energy']['within_10pct']:.1%} within +-10%" if "energy" in cv
             else ""))
    if base is None and "bundle" in args:
        nm = model.correction.to_dict() if model.correction is not None else {}
        print(f"network correction: {nm['rounds']} rounds on {nm['networks']} networks "
              f"(their share within +-10%, cross-validated: {nm['cv_within_10pct']['0']:.1%} "
              f"uncorrected, {nm['cv_within_10pct'][str(nm['rounds'])]:.1%} corrected)" if nm
              else "network correction: none (too few networks, or it did not help in "
              "cross-validation)")
    print(f"wrote {out} (hash {model.hash})")
    conf = Path(cfg.conf or f"conf/device/{name}.yaml")
    try:
        model_ref = str(out.resolve().relative_to(MODEL_DIR))
    except ValueError:
        model_ref = str(out)
    write_text(conf, device_yaml(name, model_ref, bits, cfg.description or name,
                                 f"fitted from {source}; energy {energy_source}"))
    print(f"wrote {conf}: run `python -m search +device={name}` from this folder")
    return 0


class TransferFit:
    """Cross-validation adapter: ``fit`` transfers ``base`` with the training fold. With
    ``units`` (each sample's layers), the held-out networks are priced as the search prices
    an architecture: by the kept layer model and the refitted composition."""

    def __init__(self, model: DeviceModel, base: DeviceModel, samples=None, units=None,
                 archs=None) -> None:
        self.model, self.base = model, base
        self.units = None if units is None else {
            signature(ops): u for ops, u in zip(samples, units)}
        self.archs = None if archs is None else {
            signature(ops): a for ops, a in zip(samples, archs)}

    def fit(self, samples, ys, energy_mj=None):
        units = None if self.units is None else [self.units[signature(s)] for s in samples]
        archs = None if self.archs is None else [self.archs[signature(s)] for s in samples]
        self.model.transfer(self.base, samples, ys, units=units, archs=archs)
        return self

    def price(self, ops: list[Op]):
        if self.archs is not None:  # as the search prices it: layers, composition, correction
            return self.model.price(self.archs[signature(ops)])
        if self.units is None:
            return self.model.price(ops)
        return self.model.price(self.units[signature(ops)])


if __name__ == "__main__":
    sys.exit(main())
