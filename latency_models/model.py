"""A per-device latency and energy model: measured lookups plus a learned op-level regressor.

A network is priced op by op (see ``latency_models.ops``). Each op kind has a few physical
features (calls, MACs, elements moved, weights read, and whether its channels fit the
device's vector width); per precision the device model holds non-negative coefficients that
turn them into milliseconds, fitted on measured units (blocks or whole networks) by
non-negative least squares on relative error, plus a fitted per-network overhead.
Units measured exactly (a layer, a block, a network) are looked up instead of regressed.

Where a device was profiled with a bundle (``latency_models.profile bundle=``), its layers
were also measured one by one. Layer-alone times add up to a network's time almost exactly
(on this machine a linear fit of the sum explains 100% of fp32 networks within +-10%), but
they are not linear in the ops' features: kernels change with channel counts and int8 adds
quantize/dequantize work. For such devices a linear op model fitted on the layers prices
each layer and a gradient-boosted tree model (LightGBM, stored in its text format inside the
JSON) corrects that price from the layer's op descriptors; measured layers are looked up,
and a fitted composition (a scale for float layers, one for 8-bit layers, a cost per layer,
a constant and a cost per change between float and 8-bit layers) turns layer prices into
the network's latency (:meth:`DeviceModel.fit_layers`).

Where a device has few measurements, :meth:`DeviceModel.transfer` keeps the structure of a
richer device's model and fits one scale per op kind (and a new overhead) to the target's
measurements, shrunk towards 1 so that 10-20 networks suffice.

Energy is measured where the source has it (a per-op energy regressor fitted like latency),
simulated where the source is a simulator, and otherwise modelled as the device's active
power times latency (mJ = W x ms). Every prediction says which.

Stored as plain JSON with a format version and a content hash that studies record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from latency_models.ops import KINDS, Op, signature
from spaces.files import write_text

__all__ = ["DeviceModel", "DeviceModelError", "ENERGY_SOURCES", "ENERGY_WORDS", "FEATURE_NAMES",
           "FEATURES", "featurize", "FORMAT", "FORMAT_VERSION", "kind_matrix", "LATENCY_SOURCES",
           "LATENCY_WORDS", "LAYER_MODEL_PARAMS", "LAYER_MODEL_ROUNDS", "N_FEATURES",
           "network_features", "NETWORK_MODEL_MIN", "NETWORK_MODEL_PARAMS", "NETWORK_MODEL_ROUNDS",
           "network_of", "nnls", "OFFSETS", "op_features", "op_ranges", "outside",
           "precision_transitions", "Prediction", "Predictions", "unit_features", "UNIT_SLOTS"]

FORMAT = "edgenas-device-model"
FORMAT_VERSION = 2
_CONV = ("calls", "macs", "elems", "weights", "misaligned")
FEATURES = {"conv": _CONV, "dwconv": _CONV, "pwconv": _CONV, "fc": _CONV,
            "pool": ("calls", "elems", "window_macs"), "add": ("calls", "elems"),
            "eltwise": ("calls", "elems")}
OFFSETS = {}
_n = 0
for _kind in KINDS:
    OFFSETS[_kind] = _n
    _n += len(FEATURES[_kind])
N_FEATURES = _n
FEATURE_NAMES = [f"{k}.{f}" for k in KINDS for f in FEATURES[k]]
LATENCY_SOURCES = ("measured", "simulated", "transferred")
ENERGY_SOURCES = ("measured", "simulated", "modelled")
# What a prediction's provenance words mean, for people (outputs keep the words themselves).
LATENCY_WORDS = {
    "measured": "looked up from measurements of the same layers on the device",
    "regressed": "predicted by the model learned from the device's measurements",
    "transferred": "another device's model calibrated to this one with a few measurements",
    "simulated": "from a simulator's table, not a device",
    "modelled": "a precision the device has no measurements for, priced as another",
}
ENERGY_WORDS = {
    "measured": "fitted per op to the device's energy measurements",
    "simulated": "from a simulator's per-op table, not measured",
    "modelled": "the device's power (an assumption, see its conf/device file) x latency, "
                "not measured",
}


class DeviceModelError(ValueError):
    """A device model file that cannot be used."""


def op_features(op: Op, align: int = 8) -> list[float]:
    """The features of one op (MACs, elements and weights in millions)."""
    if op.kind in ("conv", "dwconv", "pwconv", "fc"):
        # Vectorized kernels (onnxruntime's NCHWc, NEON) need channels in multiples of the
        # vector width; pruned widths often are not, and then take a slower path.
        misaligned = float(op.cout % align != 0 or (op.kind in ("pwconv", "fc")
                                                    and op.cin % align != 0))
        return [1.0, op.macs / 1e6, op.elems / 1e6, op.weights / 1e6, misaligned]
    if op.kind == "pool":
        return [1.0, op.elems / 1e6, op.macs / 1e6]
    return [1.0, op.elems / 1e6]


def featurize(ops: list[Op], bits: int, align: int = 8) -> np.ndarray:
    """Summed features of the ops that run at precision ``bits`` (one vector per network)."""
    x = np.zeros(N_FEATURES)
    for op in ops:
        if op.bits != bits:
            continue
        i = OFFSETS[op.kind]
        f = op_features(op, align)
        x[i:i + len(f)] += f
    return x


_SLOT_KINDS = {"conv": 1, "dwconv": 2, "pwconv": 3, "fc": 4}
UNIT_SLOTS = 5  # convolutions described one by one (an inverted-residual block has up to 5)


def unit_features(ops: list[Op], align: int = 8) -> np.ndarray:
    """Features of one unit (a layer) for the layer model: the summed op features at 32, 16
    and 8 bits, then each of the first ``UNIT_SLOTS`` convolutions' kind, channels, kernel,
    stride, input size, precision and channel remainders."""
    x = [featurize(ops, b, align) for b in (32, 16, 8)]
    convs = [op for op in ops if op.kind in _SLOT_KINDS][:UNIT_SLOTS]
    slots = np.zeros(9 * UNIT_SLOTS)
    for i, op in enumerate(convs):
        slots[9 * i:9 * i + 9] = (_SLOT_KINDS[op.kind], op.cin, op.cout, op.kernel, op.stride,
                                  op.size, op.bits, op.cin % align, op.cout % align)
    return np.concatenate(x + [slots])


def _low_precision(ops: list[Op]) -> bool:
    """Whether a unit runs at 8 bits or fewer (the layer model composes those apart)."""
    return any(op.bits <= 8 for op in ops)


def precision_transitions(units: list[list[Op]]) -> int:
    """Precision changes between consecutive units of a network (float to 8 bits or back).

    A layer measured alone in int8 quantizes its input and dequantizes its output. Inside a
    network, a run of int8 layers does that once, at its ends, so a network's int8 layers cost
    less than their sum by the boundaries they share.
    """
    return _changes([_low_precision(u) for u in units if u])


def _changes(low: list[bool]) -> int:
    """How often consecutive flags differ (see :func:`precision_transitions`)."""
    return sum(x != y for x, y in zip(low, low[1:]))


def network_features(arch, composed_ms: float) -> list[float] | None:
    """Whole-network features of the network correction (see ``DeviceModel.network_model_``):
    the input resolution, stem, head and classifier, per stage its block, depth, expansion,
    kernel, width, pruning, squeeze-excitation, activation and share of 8-bit layers, the
    MACs and parameters, and the log of the composed price. None for an architecture
    without stages."""
    if not getattr(arch, "stages", None):
        return None
    f = [arch.resolution, arch.stem_chs, arch.head_chs, arch.stem_bits, arch.head_bits,
         arch.classifier_bits]
    for st in arch.stages:
        f += [st.block == "ir", st.depth, st.expansion, st.kernel, st.out_chs, st.prune_ratio,
              st.se_ratio, st.act == "hswish", float(np.mean([b <= 8 for b in st.bits]))]
    return f + [arch.macs() / 1e6, arch.params() / 1e3, float(np.log(max(composed_ms, 1e-9)))]


NETWORK_MODEL_PARAMS = {"objective": "regression", "learning_rate": 0.03, "num_leaves": 7,
                        "min_data_in_leaf": 20, "feature_fraction": 0.8,
                        "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
                        "num_threads": 1, "deterministic": True, "seed": 0, "verbose": -1}
NETWORK_MODEL_ROUNDS = (0, 50, 100, 200, 300, 400, 600, 800)  # chosen by cross-validation
NETWORK_MODEL_MIN = 50  # networks needed to fit it


LAYER_MODEL_PARAMS = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15,
                      "min_data_in_leaf": 5, "feature_fraction": 0.8, "bagging_fraction": 0.8,
                      "bagging_freq": 1, "num_threads": 1, "deterministic": True, "seed": 0,
                      "verbose": -1}
LAYER_MODEL_ROUNDS = 600


def kind_matrix(coef: np.ndarray) -> np.ndarray:
    """Per feature, the one-hot op kind it belongs to: (N_FEATURES, len(KINDS))."""
    m = np.zeros((N_FEATURES, len(KINDS)))
    for j, kind in enumerate(KINDS):
        m[OFFSETS[kind]:OFFSETS[kind] + len(FEATURES[kind]), j] = 1.0
    return m * coef[:, None]


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares (Lawson-Hanson)."""
    from scipy.optimize import nnls as scipy_nnls

    return scipy_nnls(a, b, maxiter=50 * a.shape[1])[0]


def op_ranges(samples: list[list[Op]]) -> dict:
    """Per "kind/bits": [min MACs, max MACs, min elems, max elems] of single measured ops."""
    ranges: dict[str, list[float]] = {}
    for ops in samples:
        for op in ops:
            key = f"{op.kind}/{op.bits}"
            lo_m, hi_m, lo_e, hi_e = ranges.get(key, [op.macs, op.macs, op.elems, op.elems])
            ranges[key] = [min(lo_m, op.macs), max(hi_m, op.macs), min(lo_e, op.elems),
                           max(hi_e, op.elems)]
    return ranges


def outside(op: Op, ranges: dict, bits: int | None = None) -> bool:
    """Whether an op lies outside what was measured (its kind never, or smaller or larger)."""
    r = ranges.get(f"{op.kind}/{op.bits if bits is None else bits}")
    return r is None or not (r[0] <= op.macs <= r[1] and r[2] <= op.elems <= r[3])


def _check_targets(name: str, values, n: int) -> np.ndarray:
    y = np.asarray(values, dtype=float)
    if len(y) != n or n == 0:
        raise ValueError(f"fit needs one {name} per sample and at least one sample")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f"{name} values must be positive finite numbers")
    return y


def network_of(source) -> tuple:
    """(what to price, which path) for an ONNX graph or file, or an ``arch.json``: the
    architecture the graph records (``spaces.onnx_io.ARCH_KEY``) or the one in the
    ``arch.json`` beside the file (at 32 bits for an fp32 graph), where its ops are the
    graph's; else the graph's ops.

    Raises:
        DeviceModelError: a file that does not exist or is not an ONNX graph.
    """
    import onnx

    from latency_models.ops import arch_ops, onnx_ops, signature
    from spaces.arch import Arch, all_bits
    from spaces.onnx_io import recorded_arch

    path = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".json":
            return Arch.from_json(path.read_text()), "arch"
        try:
            source = onnx.load(str(path))
            onnx.checker.check_model(source)
        except FileNotFoundError:
            raise DeviceModelError(f"{path} does not exist") from None
        except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError, ...
            raise DeviceModelError(f"{path} is not a valid ONNX model "
                                   f"({exc.__class__.__name__}); pass an .onnx file, an "
                                   "arch.json or a folder") from None
    ops = onnx_ops(source)
    candidates = [recorded_arch(source)]
    beside = None if path is None else path.with_name("arch.json")
    if beside is not None and beside.is_file():
        try:
            arch = Arch.from_json(beside.read_text())
            candidates += [arch, all_bits(arch, 32)]
        except ValueError:
            pass  # not an architecture: the graph is priced by its ops
    sig = signature(ops)
    for arch in candidates:
        if arch is not None and signature(arch_ops(arch)) == sig:
            return arch, "onnx:arch"
    return ops, "onnx:ops"


@dataclass(slots=True)
class Prediction:
    latency_ms: float
    energy_mj: float
    provenance: dict = field(default_factory=dict)


class Predictions(Sequence):
    """The prices of many networks (:meth:`DeviceModel.price_many`): a sequence of
    :class:`Prediction` (each made when it is read), with every latency and energy at once as
    arrays (``latency_ms``, ``energy_mj``) for bulk screening."""

    def __init__(self, latency_ms, energy_mj, provenance: Callable[[int], dict]) -> None:
        self.latency_ms = np.asarray(latency_ms, dtype=float)
        self.energy_mj = np.asarray(energy_mj, dtype=float)
        self._provenance = provenance

    @classmethod
    def of(cls, preds: list[Prediction]) -> Predictions:
        return cls([p.latency_ms for p in preds], [p.energy_mj for p in preds],
                   lambda i: preds[i].provenance)

    def __len__(self) -> int:
        return len(self.latency_ms)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Prediction(float(self.latency_ms[i]), float(self.energy_mj[i]),
                          self._provenance(i))


@dataclass
class DeviceModel:
    """Fit with :meth:`fit` or :meth:`transfer`, store with :meth:`save`, load with :meth:`load`.

    Attributes:
        device: device name.
        power_w: active power used to model energy where it was not measured.
        power_source: where ``power_w`` comes from.
        fallback: precision -> precision used in its place when it was never measured.
        align: the device's vector width in channels (the ``misaligned`` feature).
        native_bits: bit-widths the device runs exactly (an accelerator's 4/6/8 bits); other
            widths run as an ONNX export does (int8 at 8 bits and below, else float).
        latency_source: "measured", "simulated" (the data came from a simulator) or
            "transferred" (scaled from another device's model with a few measurements).
        energy_source: "measured", "simulated", or "modelled" (power x latency).
        meta: provenance text, source files, licenses, held-out accuracy.
        coef_: per precision ("32", "8"), latency coefficients (ms per unit feature).
        energy_coef_: per precision, energy coefficients (mJ per unit feature), when measured.
        overhead_ms_, overhead_mj_: the fitted per-network overhead.
        ranges_: per op kind and precision, the measured range of MACs and elements.
        lookup_: unit signature -> [latency ms, energy mJ or None] of measured units.
        layer_model_: LightGBM text model of a layer measured alone ("" if none): of
            log(ms / linear price) where ``layer_linear_`` is set, else of log(ms).
        layer_linear_: {"coef": per precision coefficients, "overhead_ms": ms}, the linear
            op model fitted on the layers alone; the trees correct its price (a linear base
            extrapolates to layers larger or smaller than those measured, which trees
            cannot). Empty in files written before it (trees of log(ms) alone).
        compose_: [a, a8, b, c, t] turning layer prices into a network's: a * (sum of float
            layers) + a8 * (sum of 8-bit layers) + b * layers + c + t * (precision changes
            between consecutive layers). Files written before ``t`` have 4 terms (t = 0).
        network_model_: {"model": LightGBM text model, "stages": n, "rounds": r, "cv": ...}:
            a correction of the composed price of a whole architecture, log(measured /
            composed), from :func:`network_features` ("" model where none was fitted). Fitted
            on a bundle's networks priced out of fold (:meth:`fit_network_model`), with the
            rounds that cross-validation on them chose; it learns what adding up layers
            measured alone misses (how consecutive layers share memory and layouts).
            Empty in files written before it and for devices without networks to fit it.
    """

    device: str
    power_w: float
    power_source: str = ""
    fallback: dict = field(default_factory=dict)
    align: int = 8
    native_bits: list = field(default_factory=list)
    latency_source: str = "measured"
    energy_source: str = "modelled"
    meta: dict = field(default_factory=dict)
    coef_: dict = field(default_factory=dict)
    energy_coef_: dict = field(default_factory=dict)
    overhead_ms_: float = 0.0
    overhead_mj_: float = 0.0
    ranges_: dict = field(default_factory=dict)
    lookup_: dict = field(default_factory=dict)
    layer_model_: str = ""
    layer_linear_: dict = field(default_factory=dict)
    compose_: list = field(default_factory=list)
    network_model_: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latency_source not in LATENCY_SOURCES:
            raise ValueError(f"latency_source must be one of {LATENCY_SOURCES}")
        if self.energy_source not in ENERGY_SOURCES:
            raise ValueError(f"energy_source must be one of {ENERGY_SOURCES}")

    # ---- fitting ------------------------------------------------------------------------
    def _design(self, samples: list[list[Op]], precisions: list[int]) -> np.ndarray:
        return np.stack([np.concatenate([featurize(ops, b, self.align) for b in precisions])
                         for ops in samples])

    def fit(self, samples: list[list[Op]], latency_ms, energy_mj=None,
            with_overhead: bool = True) -> DeviceModel:
        """Fit the coefficients of every precision present in the samples; returns self.

        Each sample is a whole measured unit (a network or a block) and may mix precisions.
        Rows are weighted by 1/target so the fit minimises relative error. ``energy_mj``,
        when given, fits the energy coefficients the same way. On a device with
        ``native_bits`` every coefficient is non-decreasing in the bit-width (an op never
        costs more at fewer bits), fitted as non-negative increments from the lowest width.
        """
        y = _check_targets("latency", latency_ms, len(samples))
        precisions = sorted({op.bits for ops in samples for op in ops})
        x = self._design(samples, precisions)
        n = N_FEATURES
        monotone = bool(self.native_bits)
        if monotone:  # block j holds the features of every width at or above the j-th
            x = np.hstack([x[:, j * n:].reshape(len(y), -1, n).sum(axis=1)
                           for j in range(len(precisions))])
        x = np.hstack([x, np.ones((len(y), 1 if with_overhead else 0))])

        def coefficients(sol: np.ndarray) -> dict:
            blocks = [sol[i * n:(i + 1) * n] for i in range(len(precisions))]
            if monotone:
                blocks = list(np.cumsum(blocks, axis=0))
            return {str(b): [float(v) for v in blocks[i]] for i, b in enumerate(precisions)}

        sol = nnls(x / y[:, None], np.ones_like(y))
        self.coef_ = coefficients(sol)
        self.overhead_ms_ = float(sol[-1]) if with_overhead else 0.0
        if energy_mj is not None:
            e = _check_targets("energy", energy_mj, len(samples))
            sol = nnls(x / e[:, None], np.ones_like(e))
            self.energy_coef_ = coefficients(sol)
            self.overhead_mj_ = float(sol[-1]) if with_overhead else 0.0
        self.ranges_ = op_ranges(samples)
        return self

    def transfer(self, source: DeviceModel, samples: list[list[Op]], latency_ms,
                 prior: float = 0.05, units: list[list[list[Op]]] | None = None
                 ) -> DeviceModel:
        """Calibrate ``source``'s model to this device with a few measured units.

        One scale per op kind and precision and a new overhead are fitted (non-negative,
        relative error); each scale is pulled towards 1 with weight ``prior`` so kinds the
        few samples barely exercise keep the source's cost. Where ``source`` has a layer
        model (a profiled device) and ``units`` gives each sample's layers (the samples are
        then whole networks), the layer model is kept and only its composition into networks
        is refitted on the samples: the architecture path keeps the source's relative layer
        costs. The source's measured layers are not carried over (they are the source's
        times). Returns self.
        """
        y = _check_targets("latency", latency_ms, len(samples))
        precisions = sorted(int(b) for b in source.coef_)
        blocks, names = [], []
        for b in precisions:
            coef = np.asarray(source.coef_[str(b)])
            f = np.stack([featurize(ops, b, source.align) for ops in samples])
            blocks.append(f @ kind_matrix(coef))  # (n, kinds): source ms per kind
            names += [(str(b), j) for j in range(len(KINDS))]
        a = np.hstack(blocks + [np.ones((len(y), 1))]) / y[:, None]
        rows = np.hstack([prior * np.eye(len(names)), np.zeros((len(names), 1))])
        a = np.vstack([a, rows])
        b_vec = np.concatenate([np.ones(len(y)), prior * np.ones(len(names))])
        sol = nnls(a, b_vec)
        self.coef_ = {}
        for b in precisions:
            coef = np.asarray(source.coef_[str(b)], dtype=float).copy()
            for j, kind in enumerate(KINDS):
                scale = sol[names.index((str(b), j))]
                coef[OFFSETS[kind]:OFFSETS[kind] + len(FEATURES[kind])] *= scale
            self.coef_[str(b)] = [float(v) for v in coef]
        self.overhead_ms_ = float(sol[-1])
        self.align = source.align
        self.ranges_ = source.ranges_
        self.latency_source = "transferred"
        self.meta = dict(self.meta, transferred_from={
            "device": source.device, "hash": source.hash, "samples": len(y),
            "scales": {f"{KINDS[j]}/{b}": round(float(sol[i]), 4)
                       for i, (b, j) in enumerate(names)}})
        if units is not None and source.layer_model_ and source.compose_:
            if len(units) != len(y):
                raise DeviceModelError(f"transfer: {len(units)} unit lists for {len(y)} "
                                       "samples")
            self.layer_model_ = source.layer_model_
            self.layer_linear_ = source.layer_linear_
            self._booster = getattr(source, "_booster", None)  # the same trees, parsed once
            self._fit_compose(units, y)
            self.meta = dict(self.meta, transferred_from=dict(
                self.meta["transferred_from"],
                layer_model="kept; composition refitted on the samples"))
        return self

    def add_measurements(self, samples: list[list[Op]], latency_ms, energy_mj=None) -> None:
        """Record measured units (layers, blocks or whole networks) for exact lookup."""
        energies = [None] * len(samples) if energy_mj is None else list(energy_mj)
        for ops, ms, mj in zip(samples, latency_ms, energies):
            self.lookup_[signature(ops)] = [float(ms), None if mj is None else float(mj)]
        self._cache, self._hash = {}, None

    def fit_layers(self, layers: list[list[Op]], layer_ms, networks: list[list[list[Op]]],
                   network_ms) -> DeviceModel:
        """Fit the layer model on layers measured alone and the composition on networks
        measured whole (each given as its units); the layers join the lookup table.
        Returns self.
        """
        import lightgbm

        y = _check_targets("layer latency", layer_ms, len(layers))
        yn = _check_targets("network latency", network_ms, len(networks))
        x = np.stack([unit_features(ops, self.align) for ops in layers])
        linear = DeviceModel(self.device, self.power_w, align=self.align).fit(layers, y)
        self.layer_linear_ = {"coef": linear.coef_, "overhead_ms": linear.overhead_ms_}
        base = np.array([self._layer_base(ops) for ops in layers])
        booster = lightgbm.train(LAYER_MODEL_PARAMS, lightgbm.Dataset(x, np.log(y / base)),
                                 num_boost_round=LAYER_MODEL_ROUNDS)
        self.layer_model_ = booster.model_to_string()
        self._booster = booster
        self.add_measurements(layers, y)
        self._fit_compose(networks, yn)
        return self

    def _fit_compose(self, networks: list[list[list[Op]]], network_ms: np.ndarray) -> None:
        """Fit how priced layers add up to measured networks (relative least squares on the
        float and low-precision sums, the number of units, a constant and the number of
        precision changes between consecutive units)."""
        self.compose_ = []  # layer prices alone while the composition is fitted
        sums = np.array([self._layer_sums(units) for units in networks])  # (n, 2)
        a = np.hstack([sums, np.array([[len(u), 1.0, precision_transitions(u)]
                                       for u in networks])])
        self.compose_ = [float(v) for v in np.linalg.lstsq(
            a / network_ms[:, None], np.ones(len(network_ms)), rcond=None)[0]]

    def fit_network_model(self, archs: list, composed_ms, measured_ms, folds: int = 5,
                          seed: int = 1) -> dict:
        """Fit the network correction on architectures priced out of fold (``composed_ms``:
        each priced by a model that never saw it or its layers) and measured whole. The
        number of boosting rounds is chosen by ``folds``-fold cross-validation on them (the
        share within +-10%); where no rounds beat none, or too few networks share one stage
        count, no correction is stored. Returns the cross-validation's shares by rounds."""
        import lightgbm

        composed = np.asarray(composed_ms, float)
        measured = _check_targets("network latency", measured_ms, len(archs))
        feats = [network_features(a, c) for a, c in zip(archs, composed)]
        counts: dict[int, int] = {}
        for f, a in zip(feats, archs):
            if f is not None:
                counts[len(a.stages)] = counts.get(len(a.stages), 0) + 1
        self.network_model_ = {}
        if not counts or max(counts.values()) < NETWORK_MODEL_MIN:
            return {}
        stages = max(counts, key=counts.get)
        keep = [i for i, (f, a) in enumerate(zip(feats, archs))
                if f is not None and len(a.stages) == stages]
        x = np.array([feats[i] for i in keep], float)
        r = np.log(measured[keep] / composed[keep])
        order = np.random.default_rng(seed).permutation(len(keep))
        top = max(NETWORK_MODEL_ROUNDS)
        shares = {g: [] for g in NETWORK_MODEL_ROUNDS}
        for k in range(folds):
            test = order[k::folds]
            train = np.setdiff1d(order, test)
            booster = lightgbm.train(NETWORK_MODEL_PARAMS, lightgbm.Dataset(x[train], r[train]),
                                     num_boost_round=top)
            for g in NETWORK_MODEL_ROUNDS:
                fix = booster.predict(x[test], num_iteration=g) if g else 0.0
                err = np.exp(fix - r[test]) - 1  # corrected / measured - 1
                shares[g].append(float(np.mean(np.abs(err) < 0.1)))
        cv = {str(g): round(float(np.mean(v)), 4) for g, v in shares.items()}
        best = max(NETWORK_MODEL_ROUNDS, key=lambda g: (float(np.mean(shares[g])), -g))
        if best:
            booster = lightgbm.train(NETWORK_MODEL_PARAMS, lightgbm.Dataset(x, r),
                                     num_boost_round=best)
            self.network_model_ = {"model": booster.model_to_string(), "stages": stages,
                                   "rounds": best, "networks": len(keep),
                                   "cv_within_10pct": cv}
        return cv

    def network_factor(self, archs: list, composed_ms) -> np.ndarray:
        """The network correction's factor for each architecture (1 where it has none or
        does not apply: no correction fitted, or another number of stages)."""
        out = np.ones(len(archs))
        if not self.network_model_:
            return out
        booster = self._parsed("_network_booster", self.network_model_["model"])
        rows = [i for i, a in enumerate(archs)
                if len(getattr(a, "stages", ()) or ()) == self.network_model_["stages"]]
        if rows:
            x = np.array([network_features(archs[i], float(composed_ms[i])) for i in rows])
            out[rows] = np.exp(booster.predict(x))
        return out

    def _layer_sums(self, units: list[list[Op]]) -> tuple[float, float]:
        """Priced units of a network, summed apart for float units and 8-bit-or-below ones
        (int8 layers compose differently: quantize/dequantize work at their boundaries)."""
        prices = [(self._unit(u)[0], _low_precision(u)) for u in units]
        low = sum(ms for ms, is_low in prices if is_low)
        return sum(ms for ms, _ in prices) - low, low

    def _layer_base(self, ops: list[Op]) -> float:
        """The linear price of a layer that the layer model's trees correct."""
        coef = self.layer_linear_["coef"]
        ms = float(self.layer_linear_["overhead_ms"])
        for bits in {op.bits for op in ops}:
            key, _ = self.coefficient_set(bits, coef)
            ms += float(featurize(ops, bits, self.align) @ np.asarray(coef[key]))
        return max(ms, 1e-6)

    def _parsed(self, attr: str, model_str: str):
        """The LightGBM booster of ``model_str``, parsed once and kept in ``attr`` (which
        :meth:`__setattr__` clears when the model text changes)."""
        booster = getattr(self, attr, None)
        if booster is None:
            import lightgbm

            booster = lightgbm.Booster(model_str=model_str)
            setattr(self, attr, booster)
        return booster

    def _layer_price(self, ops: list[Op]) -> float:
        booster = self._parsed("_booster", self.layer_model_)
        log_ratio = booster.predict(unit_features(ops, self.align)[None, :])[0]
        return float(np.exp(log_ratio)) * self._layer_base(ops)

    # ---- prediction ---------------------------------------------------------------------
    def coefficient_set(self, bits: int, coef: dict | None = None) -> tuple[str, bool]:
        """The coefficient set of ``coef`` (default: ``coef_``) that prices ``bits`` and
        whether it stands in for it."""
        coef = self.coef_ if coef is None else coef
        key = str(bits)
        if key in coef:
            return key, False
        if key in self.fallback and str(self.fallback[key]) in coef:
            return str(self.fallback[key]), True
        raise DeviceModelError(
            f"device {self.device!r} has no latency model for {bits}-bit ops and no "
            f"fallback; its model covers {sorted(coef)} bits")

    def _regress(self, ops: list[Op]) -> tuple[float, float | None, set, bool]:
        """Latency, measured-or-simulated energy (None when modelled), the stand-in
        precisions used and the extrapolation flag of ops priced by the regressor."""
        ms, mj, standins, extrapolated = 0.0, 0.0, set(), False
        for bits in sorted({op.bits for op in ops}):
            key, standin = self.coefficient_set(bits)
            x = featurize(ops, bits, self.align)
            part = float(x @ np.asarray(self.coef_[key]))
            if standin and part > 0:  # a stand-in that priced nothing changed nothing
                standins.add(bits)
            ms += part
            if self.energy_coef_:
                mj += float(x @ np.asarray(self.energy_coef_[key]))
            extrapolated |= any(outside(op, self.ranges_, int(key)) for op in ops
                                if op.bits == bits)
        return ms, (mj if self.energy_coef_ else None), standins, extrapolated

    def _unit(self, ops: list[Op]) -> tuple[float, float | None, bool, set, bool]:
        """One unit without the network overhead: ms, mJ, looked up, stand-ins, extrapolated."""
        hit = self.lookup_.get(signature(ops))
        composed = bool(self.compose_)  # layer prices are whole layer-alone times
        if hit is not None:
            if hit[1] is not None:
                mj = max(0.0, hit[1] - self.overhead_mj_)
            else:  # energy not measured for this unit: the energy regressor's, if any
                mj = self._regress(ops)[1] if self.energy_coef_ else None
            return (hit[0] if composed else max(0.0, hit[0] - self.overhead_ms_)), mj, True, \
                set(), False
        ms, mj, standins, extrapolated = self._regress(ops)
        if self.layer_model_ and any(op.kind in _SLOT_KINDS for op in ops):
            ms = self._layer_price(ops)  # a layer; the input preprocessing stays linear
        return ms, mj, False, standins, extrapolated

    def _predict_units(self, units: list[list[Op]], cache_keys: list | None = None
                      ) -> Prediction:
        """Latency (ms) and energy (mJ) of a network given as its units (e.g. layers).

        Each unit is looked up where it was measured and regressed otherwise; the network
        overhead is added once. ``cache_keys`` (hashable, one per unit) memoize unit prices,
        which the search uses: most layers recur across trials.
        """
        return self._finish(*self._compose(units, cache_keys))

    def _compose(self, units: list[list[Op]], cache_keys: list | None = None) -> tuple:
        """The units priced and composed: the arguments of :meth:`_finish` (ms without the
        network overhead)."""
        ms, mj, n_hit, standins, extrapolated = 0.0, 0.0, 0, set(), False
        low_ms, lows = 0.0, []  # lows: whether each (non-empty) unit runs at 8 bits or fewer
        for i, ops in enumerate(units):
            key = None if cache_keys is None else cache_keys[i]
            got = self._cache.get(key) if key is not None else None
            if got is None:
                got = self._unit(ops)
                if key is not None:
                    if len(self._cache) > 200_000:
                        self._cache.clear()
                    self._cache[key] = got
            u_ms, u_mj, hit, u_standins, u_ext = got
            if self.compose_ and ops:
                lows.append(_low_precision(ops))
                low_ms += u_ms if lows[-1] else 0.0
            ms += u_ms
            mj = None if (mj is None or u_mj is None) else mj + u_mj
            n_hit += hit
            standins |= u_standins
            extrapolated |= u_ext
        if self.compose_:
            a, a8, b, c, t = self.compose_
            ms = (a * (ms - low_ms) + a8 * low_ms + b * len(units) + c
                  + t * _changes(lows) - self.overhead_ms_)
        return ms, mj, n_hit, len(units), standins, extrapolated

    def price(self, network) -> Prediction:
        """Latency (ms) and energy (mJ) of one network, whatever form it comes in: the one
        way every command prices a network. ``provenance["path"]`` says which way it went.

        Args:
            network: an architecture (``path: "arch"``: layer by layer, measured layers
                looked up, composed, then the network correction); an ONNX graph, or the
                path of an ``.onnx`` file or an ``arch.json`` (a graph that records the
                architecture it runs, or lies beside the ``arch.json`` it was exported from,
                is priced as that architecture: ``"onnx:arch"``; any other graph by its ops:
                ``"onnx:ops"``); a flat op list (``"ops"``); or a list of units, each an op
                list (``"units"``).
        """
        return self.price_many([network])[0]

    def price_many(self, networks: list) -> Predictions:
        """:meth:`price` of each network; architectures are priced together (the network
        correction in one batch; vectorized where that gives the same prices)."""
        from latency_models.ops import Op
        from spaces.arch import Arch

        if networks and all(isinstance(n, Arch) for n in networks):
            return self._price_archs(list(networks))
        resolved, paths = [], []
        for net in networks:
            if isinstance(net, (str, os.PathLike)) or type(net).__name__ == "ModelProto":
                net, path = network_of(net)
            elif isinstance(net, Arch):
                path = "arch"
            elif isinstance(net, list) and all(isinstance(o, Op) for o in net):
                path = "ops"
            elif isinstance(net, list) and all(isinstance(u, list) for u in net):
                path = "units"
            else:
                raise DeviceModelError(f"cannot price a {type(net).__name__}: give an "
                                       "architecture, an ONNX graph or file, an arch.json, "
                                       "or a list of ops")
            resolved.append(net)
            paths.append(path)
        out: list[Prediction | None] = [None] * len(networks)
        archs = [i for i, p in enumerate(paths) if p in ("arch", "onnx:arch")]
        for i, pred in zip(archs, self._price_archs([resolved[i] for i in archs])):
            out[i] = pred
        for i, p in enumerate(paths):
            if p in ("ops", "onnx:ops"):
                out[i] = self._predict_ops(resolved[i])
            elif p == "units":
                out[i] = self._predict_units(resolved[i])
        for pred, p in zip(out, paths):
            pred.provenance["path"] = p
        return Predictions.of(out)

    def _price_archs(self, archs: list) -> Predictions:
        """Architectures priced layer by layer (:meth:`_predict_each`), or, for many of them on
        a device priced by its linear regressor alone, the same prices vectorized."""
        from latency_models import fast

        if len(archs) < 16 or not fast.exact_for(self):
            preds = self._predict_each(archs)
            for p in preds:
                p.provenance["path"] = "arch"
            return Predictions.of(preds)
        got = fast.predict_archs(self, archs)
        energy = (got["energy_mj"] if got["energy_mj"] is not None
                  else got["latency_ms"] * self.power_w)
        extrapolated = got["extrapolated"]
        # archs with the same stand-in precisions share one provenance, copied when read
        stand_bits = sorted(got["standins"])
        codes = np.zeros(len(archs), np.int64)
        for j, b in enumerate(stand_bits):
            codes |= got["standins"][b].astype(np.int64) << j
        base = {}
        for code in np.unique(codes).tolist():
            key = {b for j, b in enumerate(stand_bits) if code >> j & 1}
            base[code] = dict(self._finish(1.0, None if got["energy_mj"] is None else 1.0, 0,
                                           1, key, False).provenance, path="arch")

        def provenance(i: int) -> dict:
            return dict(base[int(codes[i])], extrapolated=bool(extrapolated[i]))

        return Predictions(got["latency_ms"], energy, provenance)

    def _predict_ops(self, ops: list[Op]) -> Prediction:
        """Latency (ms) and energy (mJ) of one network given as a flat op list."""
        hit = self.lookup_.get(signature(ops))
        if hit is not None:
            ms = hit[0]
            mj = hit[1]
            return self._finish(ms - self.overhead_ms_, None if mj is None else
                                mj - self.overhead_mj_, 1, 1, set(), False)
        ms, mj, standins, extrapolated = self._regress(ops)
        return self._finish(ms, mj, 0, 1, standins, extrapolated)

    def _predict_each(self, archs: list) -> list[Prediction]:
        """Each architecture layer by layer: layers measured alone (a profiling bundle's)
        looked up, the others regressed (prices memoized per layer), composed; the network
        correction applied to all of them in one batch. A network measured whole is its
        measurement."""
        from latency_models.ops import arch_units

        out: list[Prediction | None] = [None] * len(archs)
        composed, parts = [], []
        for i, arch in enumerate(archs):
            units = arch_units(arch, tuple(self.native_bits))
            hit = self.lookup_.get(signature([op for u in units for op in u])) \
                if self.lookup_ else None
            if hit is not None:
                out[i] = self._finish(hit[0] - self.overhead_ms_, None if hit[1] is None
                                      else hit[1] - self.overhead_mj_, 1, 1, set(), False)
                continue
            keys = [("input", arch.in_chans, arch.input_size, arch.resolution),
                    *arch.layers(pruned=True)]
            composed.append(i)
            parts.append(self._compose(units, cache_keys=keys))
        factors = self.network_factor([archs[i] for i in composed],
                                      [p[0] + self.overhead_ms_ for p in parts])
        for i, p, f in zip(composed, parts, factors):
            out[i] = self._finish(*p, factor=float(f))
        return out

    def _finish(self, ms: float, mj: float | None, n_hit: int, n_units: int, standins: set,
                extrapolated: bool, factor: float = 1.0) -> Prediction:
        """The prediction from composed unit prices; ``factor``: the network correction of
        the whole network's latency (:meth:`network_factor`)."""
        ms = (ms + self.overhead_ms_) * factor
        if n_hit == n_units:
            latency = "measured"
        elif standins:
            latency = "modelled"
        elif self.latency_source != "measured":
            latency = self.latency_source
        else:
            latency = "regressed"
        prov = {"latency": latency, "extrapolated": extrapolated,
                "measured_share": round(n_hit / n_units, 4)}
        if factor != 1.0:
            prov["network_correction"] = round(factor, 4)
        if standins:
            prov["note"] = "; ".join(f"{b}-bit ops priced as {self.fallback[str(b)]}-bit (no "
                                     f"{b}-bit measurements for this device)"
                                     for b in sorted(standins))
        if mj is None:
            mj, energy = ms * self.power_w, "modelled"
        else:
            mj, energy = mj + self.overhead_mj_, self.energy_source
        prov.update(energy=energy, device=self.device, model_hash=self.hash)
        return Prediction(ms, mj, prov)

    # ---- storage ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "device": self.device,
            "units": {"latency": "ms", "energy": "mJ", "power": "W",
                      "features": "millions of MACs / elements / weights, calls, flags"},
            "kinds": list(KINDS), "features": FEATURE_NAMES, "align": self.align,
            "native_bits": list(self.native_bits),
            "latency_source": self.latency_source, "energy_source": self.energy_source,
            "power_w": self.power_w, "power_source": self.power_source,
            "fallback": self.fallback, "coef": self.coef_, "energy_coef": self.energy_coef_,
            "overhead_ms": self.overhead_ms_, "overhead_mj": self.overhead_mj_,
            "ranges": self.ranges_, "lookup": self.lookup_, "meta": self.meta,
            "layer_model": self.layer_model_, "compose": self.compose_,
            # only where set, so that models without it keep their hashes
            **({"layer_linear": self.layer_linear_} if self.layer_linear_ else {}),
            **({"network_model": self.network_model_} if self.network_model_ else {}),
        }

    def __setattr__(self, name: str, value) -> None:
        # Any change of a parameter or fitted state invalidates the memoized prices and hash.
        object.__setattr__(self, name, value)
        if name == "layer_model_":
            object.__setattr__(self, "_booster", None)
        if name == "network_model_":
            object.__setattr__(self, "_network_booster", None)
        if not name.startswith("_"):
            object.__setattr__(self, "_cache", {})
            object.__setattr__(self, "_hash", None)

    @property
    def hash(self) -> str:
        """Content hash of the model (studies record it to never mix two models)."""
        if self._hash is None:
            text = json.dumps(self.to_dict(), sort_keys=True)
            self._hash = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._hash

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(dict(self.to_dict(), hash=self.hash), indent=1,
                                    sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeviceModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DeviceModelError(f"device model file {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DeviceModelError(f"device model file {path} is not valid JSON ({exc}); "
                                   "refit it with `python -m latency_models.fit`") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DeviceModelError(f"{path} is not an edgenas device model (no "
                                   f"'format': '{FORMAT}')")
        if data.get("format_version") != FORMAT_VERSION:
            raise DeviceModelError(
                f"{path} is device-model format version {data.get('format_version')}, this "
                f"code reads version {FORMAT_VERSION}; refit it with `python -m "
                "latency_models.fit`")
        try:
            model = cls(device=data["device"], power_w=float(data["power_w"]),
                        power_source=data.get("power_source", ""),
                        fallback=data.get("fallback", {}), align=int(data["align"]),
                        native_bits=[int(b) for b in data.get("native_bits", [])],
                        latency_source=data["latency_source"],
                        energy_source=data["energy_source"], meta=data.get("meta", {}),
                        coef_=data["coef"], energy_coef_=data.get("energy_coef", {}),
                        overhead_ms_=float(data["overhead_ms"]),
                        overhead_mj_=float(data.get("overhead_mj", 0.0)),
                        ranges_=data["ranges"], lookup_=data.get("lookup", {}),
                        layer_model_=data.get("layer_model", ""),
                        layer_linear_=data.get("layer_linear", {}),
                        compose_=data.get("compose", []),
                        network_model_=data.get("network_model", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceModelError(f"device model file {path} is missing or has a bad field: "
                                   f"{exc}") from None
        if data["kinds"] != list(KINDS) or data.get("features") != FEATURE_NAMES or any(
                len(c) != N_FEATURES for c in list(model.coef_.values())
                + list(model.energy_coef_.values())):
            raise DeviceModelError(f"device model file {path} was fitted for other op kinds "
                                   f"or features ({data['kinds']}); refit it")
        if (model.layer_model_ and not model.layer_linear_) or len(model.compose_) not in (0, 5):
            raise DeviceModelError(
                f"device model file {path} was written by an earlier edgenas (its layer model "
                "has no linear base, or its composition another number of terms); refit it "
                "with `python -m latency_models.fit`")
        if data.get("hash") not in (None, model.hash):
            raise DeviceModelError(f"device model file {path} was edited after fitting (its "
                                   "hash does not match its content); refit it")
        return model
