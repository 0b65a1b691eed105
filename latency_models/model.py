"""A per-device latency and energy model: one price for any network, from learned parts.

A network is priced op by op (see ``latency_models.ops``). Each op kind has a few physical
features (calls, MACs, elements moved, weights read, and whether its channels fit the
device's vector width, :mod:`latency_models.features`); the device model's learned parts are
estimators of their own (:mod:`latency_models.estimators`):

- a linear op model: per precision, non-negative coefficients that turn the features into
  milliseconds, fitted on measured units (blocks or whole networks) by non-negative least
  squares on relative error, plus a per-network overhead;
- a lookup of units measured exactly (a layer, a block, a network);
- for a device profiled with a bundle (``latency_models.profile bundle=``), whose layers were
  also measured one by one: a layer model (LightGBM trees correcting a linear op model
  fitted on the layers), a composition of layer prices into a network's latency, and a
  network correction of a whole architecture's composed price.

:meth:`DeviceModel.price` composes them, for an architecture, an ``arch.json``, an ONNX
graph or file, or an op list, and says which path priced it. Where a device has few
measurements, :meth:`DeviceModel.transfer` keeps the structure of a richer device's model
and fits one scale per op kind (and a new overhead), shrunk towards 1 so that 10-20
networks suffice.

Energy is measured where the source has it (a per-op energy regressor fitted like latency),
simulated where the source is a simulator, and otherwise modelled as the device's active
power times latency (mJ = W x ms). Every prediction says which.

Stored as plain JSON with a format version and a content hash that studies record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from latency_models.estimators import (
    Composition,
    DeviceModelError,
    LayerModel,
    Lookup,
    NetworkCorrection,
    OpModel,
    check_targets,
)
from latency_models.features import (
    FEATURE_NAMES,
    N_FEATURES,
    SLOT_KINDS,
    count_changes,
    is_extrapolated,
    low_precision,
    precision_transitions,
)
from latency_models.model_file import FORMAT, FORMAT_VERSION, content_hash, upgrade
from latency_models.networks import network_of
from latency_models.ops import KINDS, Op
from latency_models.prediction import (
    ENERGY_SOURCES,
    LATENCY_SOURCES,
    Prediction,
    Predictions,
)
from spaces.files import write_text

__all__ = ["DeviceModel", "DeviceModelError"]

@dataclass
class DeviceModel:
    """A device's latency and energy model: settings, and the learned parts that
    :meth:`price` composes. Fit with :meth:`fit` (and, for a profiled device,
    :meth:`fit_layers` and :meth:`fit_network_model`) or :meth:`transfer`, store with
    :meth:`save`, load with :meth:`load`. Change it through these methods (they clear its
    memoized prices and hash).

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
        ops: the linear op model (:class:`~latency_models.estimators.OpModel`).
        lookup: measured units (:class:`~latency_models.estimators.Lookup`).
        layers: the layer model of a profiled device, or None.
        composition: how its layer prices add up to a network's, or None (prices add).
        correction: the network correction of a profiled device, or None.
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
    ops: Optional[OpModel] = None
    lookup: Lookup = field(default_factory=Lookup)
    layers: Optional[LayerModel] = None
    composition: Optional[Composition] = None
    correction: Optional[NetworkCorrection] = None

    def __post_init__(self) -> None:
        if self.latency_source not in LATENCY_SOURCES:
            raise ValueError(f"latency_source must be one of {LATENCY_SOURCES}")
        if self.energy_source not in ENERGY_SOURCES:
            raise ValueError(f"energy_source must be one of {ENERGY_SOURCES}")
        if self.ops is None:
            self.ops = self._op_model()

    def _op_model(self, align: int | None = None) -> OpModel:
        return OpModel(self.device, self.align if align is None else align, self.fallback,
                       self.native_bits)

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, samples: list[list[Op]], latency_ms, energy_mj=None,
            with_overhead: bool = True) -> DeviceModel:
        """Fit the linear op model on measured units (see :meth:`OpModel.fit`); returns
        self."""
        self.ops = self._op_model().fit(samples, latency_ms, energy_mj, with_overhead)
        return self

    def transfer(self, source: DeviceModel, samples: list[list[Op]], latency_ms,
                 prior: float = 0.05, units: list[list[list[Op]]] | None = None,
                 archs: list | None = None) -> DeviceModel:
        """Calibrate ``source``'s model to this device with a few measured units.

        One scale per op kind and precision and a new overhead are fitted (non-negative,
        relative error); each scale is pulled towards 1 with weight ``prior`` so kinds the
        few samples barely exercise keep the source's cost. Where ``source`` has a layer
        model (a profiled device) and ``units`` gives each sample's layers (the samples are
        then whole networks), the layer model is kept and only its composition into networks
        is refitted on the samples: the architecture path keeps the source's relative layer
        costs. The source's measured layers are not carried over (they are the source's
        times). Where the source also has a network correction and ``archs`` gives each
        sample's architecture, the correction is kept (what composing layers misses is a
        property of the runtime more than of the machine's speed) and the composition is
        fitted to the samples divided by its factor. Returns self.
        """
        self.ops = self._op_model(source.align).transfer(source.ops, samples, latency_ms,
                                                         prior)
        y = np.asarray(latency_ms, dtype=float)
        self.align = source.align
        self.latency_source = "transferred"
        self.meta = dict(self.meta, transferred_from={
            "device": source.device, "hash": source.hash, "samples": len(y),
            "scales": self.ops.scales_})
        if units is not None and source.layers is not None and source.composition is not None:
            if len(units) != len(y):
                raise DeviceModelError(f"transfer: {len(units)} unit lists for {len(y)} "
                                       "samples")
            self.layers = source.layers  # the same trees (parsed once)
            self.correction = None
            self._fit_composition(units, y)
            kept = "kept; composition refitted on the samples"
            if archs is not None and source.correction is not None \
                    and source.correction.trees_:
                if len(archs) != len(y):
                    raise DeviceModelError(f"transfer: {len(archs)} architectures for "
                                           f"{len(y)} samples")
                for _ in range(2):  # the factor depends on the composed price, and back
                    self.correction = None
                    self._changed()
                    composed = np.array([self._predict_units(u).latency_ms for u in units])
                    factor = source.correction.predict(archs, composed)
                    self._fit_composition(units, y / factor)
                self.correction = source.correction
                kept += "; network correction kept"
            self.meta = dict(self.meta, transferred_from=dict(
                self.meta["transferred_from"], layer_model=kept))
            self._changed()
        return self

    def add_measurements(self, samples: list[list[Op]], latency_ms, energy_mj=None) -> None:
        """Record measured units (layers, blocks or whole networks) for exact lookup."""
        self.lookup.partial_fit(samples, latency_ms, energy_mj)
        self._changed()

    def fit_layers(self, layers: list[list[Op]], layer_ms, networks: list[list[list[Op]]],
                   network_ms) -> DeviceModel:
        """Fit the layer model on layers measured alone and the composition on networks
        measured whole (each given as its units); the layers join the lookup table.
        Returns self.
        """
        y = check_targets("layer latency", layer_ms, len(layers))
        yn = check_targets("network latency", network_ms, len(networks))
        self.layers = LayerModel(self.device, self.align, self.fallback).fit(layers, y)
        self.add_measurements(layers, y)
        self._fit_composition(networks, yn)
        return self

    def _fit_composition(self, networks: list[list[list[Op]]], network_ms) -> None:
        """Fit how priced layers add up to measured networks."""
        self.composition = None  # layer prices alone while the composition is fitted
        parts = [(*self._layer_sums(units), len(units), precision_transitions(units))
                 for units in networks]
        self.composition = Composition().fit(parts, network_ms)

    def fit_network_model(self, archs: list, composed_ms, measured_ms, folds: int = 5,
                          seed: int = 1) -> dict:
        """Fit the network correction (:class:`NetworkCorrection`) on architectures priced
        out of fold and measured whole. Returns the cross-validation's shares within +-10%
        by rounds (empty where too few networks share one stage count)."""
        self.correction = NetworkCorrection(folds, seed).fit(archs, composed_ms, measured_ms)
        return self.correction.cv_within_10pct_

    def network_factor(self, archs: list, composed_ms) -> np.ndarray:
        """The network correction's factor for each architecture (1 where it has none or
        does not apply)."""
        if self.correction is None:
            return np.ones(len(archs))
        return self.correction.predict(archs, composed_ms)

    def _layer_sums(self, units: list[list[Op]]) -> tuple[float, float]:
        """Priced units of a network, summed apart for float units and 8-bit-or-below ones
        (int8 layers compose differently: quantize/dequantize work at their boundaries)."""
        prices = [(self._unit(u)[0], low_precision(u)) for u in units]
        low = sum(ms for ms, is_low in prices if is_low)
        return sum(ms for ms, _ in prices) - low, low

    # ---- prediction ---------------------------------------------------------------------
    def _unit(self, ops: list[Op]) -> tuple[float, float | None, bool, set, tuple]:
        """One unit without the network overhead: ms, mJ, looked up, stand-ins, and (the
        linear price of its ops outside the measured ranges, its linear price)."""
        hit = self.lookup.predict(ops)
        composed = self.composition is not None  # layer prices are whole layer-alone times
        if hit is not None:
            if hit[1] is not None:
                mj = max(0.0, hit[1] - self.ops.overhead_mj_)
            else:  # energy not measured for this unit: the energy regressor's, if any
                mj = self.ops.predict(ops)[1] if self.ops.energy_coef_ else None
            ms = hit[0] if composed else max(0.0, hit[0] - self.ops.overhead_ms_)
            return ms, mj, True, set(), (0.0, ms)
        ms, mj, standins, out_ms = self.ops.predict(ops)
        reach = (out_ms, ms)  # both linear prices, before the layer model replaces ms
        if self.layers is not None and any(op.kind in SLOT_KINDS for op in ops):
            ms = self.layers.predict(ops)  # a layer; the input preprocessing stays linear
        return ms, mj, False, standins, reach

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
        ms, mj, n_hit, standins, out_ms, linear_ms = 0.0, 0.0, 0, set(), 0.0, 0.0
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
            u_ms, u_mj, hit, u_standins, u_reach = got
            if self.composition is not None and ops:
                lows.append(low_precision(ops))
                low_ms += u_ms if lows[-1] else 0.0
            ms += u_ms
            mj = None if (mj is None or u_mj is None) else mj + u_mj
            n_hit += hit
            standins |= u_standins
            out_ms, linear_ms = out_ms + u_reach[0], linear_ms + u_reach[1]
        if self.composition is not None:
            ms = self.composition.predict(ms - low_ms, low_ms, len(units),
                                          count_changes(lows)) - self.ops.overhead_ms_
        return ms, mj, n_hit, len(units), standins, is_extrapolated(out_ms, linear_ms)

    def price(self, network: object, precision: int | None = None) -> Prediction:
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
            precision: 8 prices an ONNX graph or file as fully 8-bit (what TFLite's integer
                quantization runs of a float graph); None as it is.
        """
        return self.price_many([network], precision)[0]

    def price_many(self, networks: list, precision: int | None = None) -> Predictions:
        """:meth:`price` of each network; architectures are priced together (the network
        correction in one batch; vectorized where that gives the same prices)."""
        from latency_models.ops import Op
        from spaces.arch import Arch

        if networks and all(isinstance(n, Arch) for n in networks):
            return self._price_archs(list(networks))
        resolved, paths = [], []
        for net in networks:
            if isinstance(net, (str, os.PathLike)) or type(net).__name__ == "ModelProto":
                net, path = network_of(net, precision)
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
        hit = self.lookup.predict(ops)
        if hit is not None:
            ms = hit[0]
            mj = hit[1]
            return self._finish(ms - self.ops.overhead_ms_, None if mj is None else
                                mj - self.ops.overhead_mj_, 1, 1, set(), False)
        ms, mj, standins, out_ms = self.ops.predict(ops)
        return self._finish(ms, mj, 0, 1, standins, is_extrapolated(out_ms, ms))

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
            hit = self.lookup.predict([op for u in units for op in u])
            if hit is not None:
                out[i] = self._finish(hit[0] - self.ops.overhead_ms_, None if hit[1] is None
                                      else hit[1] - self.ops.overhead_mj_, 1, 1, set(), False)
                continue
            keys = [("input", arch.in_chans, arch.input_size, arch.resolution),
                    *arch.layers(pruned=True)]
            composed.append(i)
            parts.append(self._compose(units, cache_keys=keys))
        factors = self.network_factor([archs[i] for i in composed],
                                      [p[0] + self.ops.overhead_ms_ for p in parts])
        for i, p, f in zip(composed, parts, factors):
            out[i] = self._finish(*p, factor=float(f))
        return out

    def _finish(self, ms: float, mj: float | None, n_hit: int, n_units: int, standins: set,
                extrapolated: bool, factor: float = 1.0) -> Prediction:
        """The prediction from composed unit prices; ``factor``: the network correction of
        the whole network's latency (:meth:`network_factor`)."""
        ms = (ms + self.ops.overhead_ms_) * factor
        borrowed = self.ops.borrowed_
        if n_hit == n_units:
            latency = "measured"
        elif standins:
            latency = ("transferred" if all(str(b) in borrowed for b in standins)
                       else "modelled")
        elif self.latency_source != "measured":
            latency = self.latency_source
        else:
            latency = "regressed"
        prov = {"latency": latency, "extrapolated": extrapolated,
                "measured_share": round(n_hit / n_units, 4)}
        if factor != 1.0:
            prov["network_correction"] = round(factor, 4)
        if standins:
            prov["note"] = "; ".join(
                f"{b}-bit ops priced by {borrowed[str(b)]} (no {b}-bit measurements for this "
                "device)" if str(b) in borrowed else
                f"{b}-bit ops priced as {self.fallback[str(b)]}-bit (no {b}-bit measurements "
                "for this device)" for b in sorted(standins))
        if mj is None:
            mj, energy = ms * self.power_w, "modelled"
        else:
            mj, energy = mj + self.ops.overhead_mj_, self.energy_source
        prov.update(energy=energy, device=self.device, model_hash=self.hash)
        return Prediction(ms, mj, prov)

    # ---- storage ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The stored form: settings, then each learned part's fitted state under the keys
        of format version 2 (a part that was not fitted adds nothing, so that models without
        it keep their hashes)."""
        correction = self.correction.to_dict() if self.correction is not None else {}
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "device": self.device,
            "units": {"latency": "ms", "energy": "mJ", "power": "W",
                      "features": "millions of MACs / elements / weights, calls, flags"},
            "kinds": list(KINDS), "features": FEATURE_NAMES, "align": self.align,
            "native_bits": list(self.native_bits),
            "latency_source": self.latency_source, "energy_source": self.energy_source,
            "power_w": self.power_w, "power_source": self.power_source,
            "fallback": self.fallback, **self.ops.to_dict(), "lookup": self.lookup.table_,
            "meta": self.meta, "layer_model": "", "compose": [],
            **(self.layers.to_dict() if self.layers is not None else {}),
            **(self.composition.to_dict() if self.composition is not None else {}),
            **({"network_model": correction} if correction else {}),
        }

    def __setattr__(self, name: str, value) -> None:
        # Any change of a setting or a learned part invalidates the memoized prices and hash.
        object.__setattr__(self, name, value)
        if not name.startswith("_"):
            self._changed()

    def _changed(self) -> None:
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_hash", None)

    @property
    def hash(self) -> str:
        """Content hash of the model (studies record it to never mix two models)."""
        if self._hash is None:
            self._hash = content_hash(self.to_dict())
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
        data = upgrade(data, path)
        if data.get("format_version") != FORMAT_VERSION:
            raise DeviceModelError(
                f"{path} is device-model format version {data.get('format_version')}, this "
                f"code reads version {FORMAT_VERSION}; refit it with `python -m "
                "latency_models.fit`")
        if (data.get("layer_model") and not data.get("layer_linear")) or len(
                data.get("compose") or []) not in (0, 5):
            raise DeviceModelError(
                f"device model file {path} was written by an earlier edgenas (its layer model "
                "has no linear base, or its composition another number of terms); refit it "
                "with `python -m latency_models.fit`")
        try:
            settings = dict(device=data["device"], align=int(data["align"]),
                            fallback=data.get("fallback", {}))
            lookup = Lookup()
            lookup.table_ = data.get("lookup", {})
            model = cls(power_w=float(data["power_w"]),
                        power_source=data.get("power_source", ""),
                        native_bits=[int(b) for b in data.get("native_bits", [])],
                        latency_source=data["latency_source"],
                        energy_source=data["energy_source"], meta=data.get("meta", {}),
                        ops=OpModel.from_dict(data, native_bits=data.get("native_bits", []),
                                              **settings),
                        lookup=lookup,
                        layers=(LayerModel.from_dict(data, **settings)
                                if data.get("layer_model") else None),
                        composition=(Composition.from_dict(data) if data.get("compose")
                                     else None),
                        correction=(NetworkCorrection.from_dict(data["network_model"])
                                    if data.get("network_model") else None),
                        **settings)
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceModelError(f"device model file {path} is missing or has a bad field: "
                                   f"{exc}") from None
        if data["kinds"] != list(KINDS) or data.get("features") != FEATURE_NAMES or any(
                len(c) != N_FEATURES for c in list(model.ops.coef_.values())
                + list(model.ops.energy_coef_.values())):
            raise DeviceModelError(f"device model file {path} was fitted for other op kinds "
                                   f"or features ({data['kinds']}); refit it")
        if data.get("hash") not in (None, model.hash):
            raise DeviceModelError(f"device model file {path} was edited after fitting (its "
                                   "hash does not match its content); refit it")
        return model
