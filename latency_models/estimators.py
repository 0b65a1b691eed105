"""The learned parts of a device model, each its own small estimator.

scikit-learn's conventions: the constructor takes settings only and learns nothing; ``fit``
learns, sets attributes whose names end in ``_`` and returns the estimator; ``predict``
prices. ``to_dict`` / ``from_dict`` carry the fitted state as the device-model JSON stores it
(the keys of :meth:`latency_models.model.DeviceModel.to_dict`). :class:`DeviceModel` holds
one of each and composes them in its one ``price``:

- :class:`OpModel`: the linear op model, per precision non-negative coefficients of the ops'
  features (milliseconds, and millijoules where energy was measured) plus an overhead;
- :class:`Lookup`: units measured exactly (a layer, a block, a network), looked up;
- :class:`LayerModel`: a layer's price from its op descriptors (LightGBM trees correcting a
  linear op model fitted on layers measured alone);
- :class:`Composition`: how layer prices add up to a network's latency;
- :class:`NetworkCorrection`: a whole architecture's correction of its composed price.
"""

from __future__ import annotations

import numpy as np

from latency_models.features import (
    FEATURES,
    N_FEATURES,
    OFFSETS,
    featurize,
    in_range,
    kind_matrix,
    kind_ranges,
    network_features,
    op_ranges,
    size_terms,
    unit_features,
)
from latency_models.ops import KINDS, Op, signature

__all__ = ["check_targets", "Composition", "dense_for_grouped", "DeviceModelError",
           "LAYER_MODEL_PARAMS", "LAYER_MODEL_ROUNDS", "LayerModel", "Lookup", "NETWORK_MODEL_MIN",
           "NETWORK_MODEL_PARAMS", "NETWORK_MODEL_ROUNDS", "NetworkCorrection", "nnls",
           "OpModel"]

LAYER_MODEL_PARAMS = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15,
                      "min_data_in_leaf": 5, "feature_fraction": 0.8, "bagging_fraction": 0.8,
                      "bagging_freq": 1, "num_threads": 1, "deterministic": True, "seed": 0,
                      "verbose": -1}
LAYER_MODEL_ROUNDS = 600
NETWORK_MODEL_PARAMS = {"objective": "regression", "learning_rate": 0.03, "num_leaves": 7,
                        "min_data_in_leaf": 20, "feature_fraction": 0.8,
                        "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
                        "num_threads": 1, "deterministic": True, "seed": 0, "verbose": -1}
NETWORK_MODEL_ROUNDS = (0, 50, 100, 200, 300, 400, 600, 800)  # chosen by cross-validation
NETWORK_MODEL_MIN = 50  # networks needed to fit it


class DeviceModelError(ValueError):
    """A device model (or a file of one) that cannot be used."""


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares (Lawson-Hanson)."""
    from scipy.optimize import nnls as scipy_nnls

    return scipy_nnls(a, b, maxiter=50 * a.shape[1])[0]


def check_targets(name: str, values, n: int) -> np.ndarray:
    """``values`` as floats, one per sample, all positive and finite.

    Raises:
        ValueError: another count, none, or a value that is not a positive number.
    """
    y = np.asarray(values, dtype=float)
    if len(y) != n or n == 0:
        raise ValueError(f"fit needs one {name} per sample and at least one sample")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f"{name} values must be positive finite numbers")
    return y


def dense_for_grouped(coef: list[float]) -> list[float]:
    """Coefficients whose grouped-convolution block is the dense convolution's: how a model
    fitted without grouped convolutions prices one (as a dense convolution of its MACs and
    weights; flagged extrapolated, as every op kind a device was not measured on)."""
    out = list(coef)
    g, c, n = OFFSETS["gconv"], OFFSETS["conv"], len(FEATURES["conv"])
    out[g:g + n] = out[c:c + n]
    return out


def _parse_booster(text: str):
    import lightgbm

    return lightgbm.Booster(model_str=text)


class OpModel:
    """The linear op model: per precision ("32", "8", ...), non-negative coefficients that turn
    the summed features of a network's ops at that precision into milliseconds (and, where
    energy was measured, millijoules), plus a per-network overhead. Fitted by non-negative
    least squares on relative error.

    Args:
        device: the device's name (in messages).
        align: the device's vector width in channels (the ``misaligned`` feature).
        fallback: precision -> the precision that prices it where it was never measured.
        native_bits: bit-widths the device runs exactly (an accelerator's); the fit then
            keeps every coefficient non-decreasing in the bit-width.

    Attributes:
        coef_: per precision, latency coefficients (ms per unit feature).
        energy_coef_: per precision, energy coefficients (mJ per unit feature), where measured.
        overhead_ms_, overhead_mj_: the fitted per-network overhead.
        ranges_: per op kind and precision, the measured range of MACs and elements.
        scales_: after :meth:`transfer`, the fitted scale of each op kind and precision.
    """

    def __init__(self, device: str = "", align: int = 8, fallback: dict | None = None,
                 native_bits: tuple[int, ...] = ()) -> None:
        self.device, self.align = device, align
        self.fallback = dict(fallback or {})
        self.native_bits = list(native_bits)
        self.coef_: dict = {}
        self.energy_coef_: dict = {}
        self.overhead_ms_ = 0.0
        self.overhead_mj_ = 0.0
        self.ranges_: dict = {}
        self.borrowed_: dict = {}  # precision -> where its coefficients were transferred from

    def _design(self, samples: list[list[Op]], precisions: list[int]) -> np.ndarray:
        return np.stack([np.concatenate([featurize(ops, b, self.align) for b in precisions])
                         for ops in samples])

    def fit(self, samples: list[list[Op]], latency_ms, energy_mj=None,
            with_overhead: bool = True) -> OpModel:
        """Fit the coefficients of every precision present in the samples.

        Each sample is a whole measured unit (a network or a block) and may mix precisions.
        Rows are weighted by 1/target so the fit minimises relative error. ``energy_mj``,
        when given, fits the energy coefficients the same way. With ``native_bits`` every
        coefficient is non-decreasing in the bit-width (an op never costs more at fewer
        bits), fitted as non-negative increments from the lowest width.
        """
        y = check_targets("latency", latency_ms, len(samples))
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
        self.energy_coef_, self.overhead_mj_ = {}, 0.0
        if energy_mj is not None:
            e = check_targets("energy", energy_mj, len(samples))
            sol = nnls(x / e[:, None], np.ones_like(e))
            self.energy_coef_ = coefficients(sol)
            self.overhead_mj_ = float(sol[-1]) if with_overhead else 0.0
        self.ranges_ = op_ranges(samples)
        measured = {op.bits for ops in samples for op in ops if op.kind == "gconv"}
        for coef in (self.coef_, self.energy_coef_):
            for key in coef:
                if int(key) not in measured:
                    coef[key] = dense_for_grouped(coef[key])
        return self

    def transfer(self, source: OpModel, samples: list[list[Op]], latency_ms,
                 prior: float = 0.05) -> OpModel:
        """Fit as ``source`` scaled to this device: one scale per op kind and precision and
        a new overhead (non-negative, relative error), each scale pulled towards 1 with
        weight ``prior`` so that kinds the few samples barely exercise keep the source's
        cost. Takes the source's alignment and measured ranges."""
        y = check_targets("latency", latency_ms, len(samples))
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
        self.energy_coef_, self.overhead_mj_ = {}, 0.0
        self.align = source.align
        self.ranges_ = source.ranges_
        self.scales_ = {f"{KINDS[j]}/{b}": round(float(sol[i]), 4)
                        for i, (b, j) in enumerate(names)}
        return self

    def coefficient_set(self, bits: int, coef: dict | None = None) -> tuple[str, bool]:
        """The coefficient set of ``coef`` (default: ``coef_``) that prices ``bits`` and
        whether it stands in for it.

        Raises:
            DeviceModelError: no set for ``bits`` and no fallback that has one.
        """
        coef = self.coef_ if coef is None else coef
        key = str(bits)
        if key in coef:
            return key, key in self.borrowed_ and coef is self.coef_
        if key in self.fallback and str(self.fallback[key]) in coef:
            return str(self.fallback[key]), True
        raise DeviceModelError(
            f"device {self.device!r} has no latency model for {bits}-bit ops and no "
            f"fallback; its model covers {sorted(coef)} bits")

    def predict(self, ops: list[Op]) -> tuple[float, float | None, set, float]:
        """Latency (ms, without the overhead), energy (mJ, None where not measured), the
        precisions priced by a stand-in, and the linear price of the ops that lie outside
        the measured ranges (infinite where a kind was never measured; see
        :func:`~latency_models.features.is_extrapolated`)."""
        ms, mj, standins, out_ms = 0.0, 0.0, set(), 0.0
        for bits in sorted({op.bits for op in ops}):
            key, standin = self.coefficient_set(bits)
            x = featurize(ops, bits, self.align)
            coef = np.asarray(self.coef_[key])
            part = float(x @ coef)
            if standin and part > 0:  # a stand-in that priced nothing changed nothing
                standins.add(bits)
            ms += part
            if self.energy_coef_:
                mj += float(x @ np.asarray(self.energy_coef_[key]))
            spans = [(op, kind_ranges(self.ranges_, op.kind, key, self.borrowed_))
                     for op in ops if op.bits == bits]
            far = [op for op, r in spans if not in_range(op, r)]
            if any(r is None for _, r in spans):
                out_ms = np.inf
            elif far:
                x = size_terms(featurize(far, bits, self.align))
                out_ms += max(0.0, float(x @ coef))
        return ms, (mj if self.energy_coef_ else None), standins, out_ms

    def base_price(self, ops: list[Op]) -> float:
        """Latency with the overhead, at least 1 ns: the linear price a layer model's trees
        correct."""
        ms = self.overhead_ms_
        for bits in {op.bits for op in ops}:
            key, _ = self.coefficient_set(bits)
            ms += float(featurize(ops, bits, self.align) @ np.asarray(self.coef_[key]))
        return max(ms, 1e-6)

    def to_dict(self) -> dict:
        return {"coef": self.coef_, "energy_coef": self.energy_coef_,
                "overhead_ms": self.overhead_ms_, "overhead_mj": self.overhead_mj_,
                "ranges": self.ranges_, **({"borrowed": self.borrowed_} if self.borrowed_
                                           else {})}

    @classmethod
    def from_dict(cls, data: dict, **settings) -> OpModel:
        model = cls(**settings)
        model.coef_ = data["coef"]
        model.energy_coef_ = data.get("energy_coef", {})
        model.overhead_ms_ = float(data["overhead_ms"])
        model.overhead_mj_ = float(data.get("overhead_mj", 0.0))
        model.ranges_ = data.get("ranges", {})
        model.borrowed_ = data.get("borrowed", {})
        return model


class Lookup:
    """Units measured exactly (a layer, a block, a whole network), priced by their
    measurement.

    Attributes:
        table_: unit signature -> [latency ms, energy mJ or None].
    """

    def __init__(self) -> None:
        self.table_: dict = {}

    def fit(self, samples: list[list[Op]], latency_ms, energy_mj=None) -> Lookup:
        self.table_ = {}
        return self.partial_fit(samples, latency_ms, energy_mj)

    def partial_fit(self, samples: list[list[Op]], latency_ms, energy_mj=None) -> Lookup:
        """Add measured units (a later measurement of a unit replaces an earlier one)."""
        energies = [None] * len(samples) if energy_mj is None else list(energy_mj)
        for ops, ms, mj in zip(samples, latency_ms, energies):
            self.table_[signature(ops)] = [float(ms), None if mj is None else float(mj)]
        return self

    def predict(self, ops: list[Op]) -> list | None:
        """[ms, mJ or None] of a measured unit, None for one never measured."""
        return self.table_.get(signature(ops)) if self.table_ else None

    def __len__(self) -> int:
        return len(self.table_)


class LayerModel:
    """A layer's latency from its op descriptors: a linear op model fitted on layers measured
    alone gives a base price (it extrapolates to layers larger or smaller than those
    measured, which trees cannot), and gradient-boosted trees (LightGBM, kept in its text
    format) correct it from the layer's descriptors (:func:`unit_features`): kernels change
    with channel counts, and int8 adds quantize/dequantize work.

    Args:
        device: as for :class:`OpModel` (the base's settings).
        align: as for :class:`OpModel`.
        fallback: as for :class:`OpModel`.

    Attributes:
        linear_: the base (:class:`OpModel` fitted on the layers).
        trees_: the LightGBM text model of log(measured / base).
    """

    def __init__(self, device: str = "", align: int = 8, fallback: dict | None = None) -> None:
        self.device, self.align, self.fallback = device, align, dict(fallback or {})
        self._booster = None

    def fit(self, layers: list[list[Op]], layer_ms) -> LayerModel:
        import lightgbm

        y = check_targets("layer latency", layer_ms, len(layers))
        x = np.stack([unit_features(ops, self.align) for ops in layers])
        self.linear_ = OpModel(self.device, self.align, self.fallback).fit(layers, y)
        base = np.array([self.linear_.base_price(ops) for ops in layers])
        booster = lightgbm.train(LAYER_MODEL_PARAMS, lightgbm.Dataset(x, np.log(y / base)),
                                 num_boost_round=LAYER_MODEL_ROUNDS)
        self.trees_ = booster.model_to_string()
        self._booster = booster
        return self

    def predict(self, ops: list[Op]) -> float:
        if self._booster is None:
            self._booster = _parse_booster(self.trees_)
        log_ratio = self._booster.predict(unit_features(ops, self.align)[None, :])[0]
        return float(np.exp(log_ratio)) * self.linear_.base_price(ops)

    def to_dict(self) -> dict:
        return {"layer_model": self.trees_,
                "layer_linear": {"coef": self.linear_.coef_,
                                 "overhead_ms": self.linear_.overhead_ms_}}

    @classmethod
    def from_dict(cls, data: dict, **settings) -> LayerModel:
        """The layer model of a device-model file's ``layer_model`` and ``layer_linear``."""
        model = cls(**settings)
        model.trees_ = data["layer_model"]
        model.linear_ = OpModel.from_dict(data["layer_linear"], **settings)
        return model


class Composition:
    """How priced layers add up to a network's latency: a * (sum of float layers) + a8 * (sum
    of 8-bit layers) + b * layers + c + t * (precision changes between consecutive layers).
    A layer measured alone in int8 quantizes its input and dequantizes its output; inside a
    network a run of int8 layers does that once, at its ends.

    Attributes:
        terms_: [a, a8, b, c, t], fitted by relative least squares.
    """

    def fit(self, parts: np.ndarray, network_ms) -> Composition:
        """``parts``: per network, (float layers' ms, 8-bit layers' ms, layers, changes)."""
        parts = np.asarray(parts, float)
        y = check_targets("network latency", network_ms, len(parts))
        a = np.column_stack([parts[:, 0], parts[:, 1], parts[:, 2], np.ones(len(parts)),
                             parts[:, 3]])
        self.terms_ = [float(v) for v in np.linalg.lstsq(a / y[:, None], np.ones(len(y)),
                                                         rcond=None)[0]]
        return self

    def predict(self, float_ms: float, low_ms: float, layers: int, changes: int) -> float:
        a, a8, b, c, t = self.terms_
        return a * float_ms + a8 * low_ms + b * layers + c + t * changes

    def to_dict(self) -> dict:
        return {"compose": self.terms_}

    @classmethod
    def from_dict(cls, data: dict) -> Composition:
        model = cls()
        model.terms_ = [float(v) for v in data["compose"]]
        return model


class NetworkCorrection:
    """A correction of a whole architecture's composed price, log(measured / composed), from
    :func:`network_features`: what adding up layers measured alone misses (how consecutive
    layers share memory and layouts). Fitted on networks priced out of fold (each by a model
    that never saw it or its layers), with the boosting rounds that ``folds``-fold
    cross-validation on them chose; it applies to architectures with the number of stages
    most of them had.

    Attributes:
        trees_: the LightGBM text model ("" where no rounds beat none or too few networks).
        stages_, rounds_, networks_: where it applies, its rounds, the networks it saw.
        cv_within_10pct_: the cross-validated share within +-10% by rounds.
    """

    def __init__(self, folds: int = 5, seed: int = 1) -> None:
        self.folds, self.seed = folds, seed
        self._booster = None

    def fit(self, archs: list, composed_ms, measured_ms) -> NetworkCorrection:
        import lightgbm

        composed = np.asarray(composed_ms, float)
        measured = check_targets("network latency", measured_ms, len(archs))
        feats = [network_features(a, c) for a, c in zip(archs, composed)]
        counts: dict[int, int] = {}
        for f, a in zip(feats, archs):
            if f is not None:
                counts[len(a.stages)] = counts.get(len(a.stages), 0) + 1
        self.trees_, self.stages_, self.rounds_, self.networks_ = "", 0, 0, 0
        self.cv_within_10pct_: dict = {}
        self._booster = None
        if not counts or max(counts.values()) < NETWORK_MODEL_MIN:
            return self
        stages = max(counts, key=counts.get)
        keep = [i for i, (f, a) in enumerate(zip(feats, archs))
                if f is not None and len(a.stages) == stages]
        x = np.array([feats[i] for i in keep], float)
        r = np.log(measured[keep] / composed[keep])
        order = np.random.default_rng(self.seed).permutation(len(keep))
        top = max(NETWORK_MODEL_ROUNDS)
        shares = {g: [] for g in NETWORK_MODEL_ROUNDS}
        for k in range(self.folds):
            test = order[k::self.folds]
            train = np.setdiff1d(order, test)
            booster = lightgbm.train(NETWORK_MODEL_PARAMS, lightgbm.Dataset(x[train], r[train]),
                                     num_boost_round=top)
            for g in NETWORK_MODEL_ROUNDS:
                fix = booster.predict(x[test], num_iteration=g) if g else 0.0
                err = np.exp(fix - r[test]) - 1  # corrected / measured - 1
                shares[g].append(float(np.mean(np.abs(err) < 0.1)))
        self.cv_within_10pct_ = {str(g): round(float(np.mean(v)), 4) for g, v in shares.items()}
        best = max(NETWORK_MODEL_ROUNDS, key=lambda g: (float(np.mean(shares[g])), -g))
        if best:
            booster = lightgbm.train(NETWORK_MODEL_PARAMS, lightgbm.Dataset(x, r),
                                     num_boost_round=best)
            self.trees_, self.stages_, self.rounds_ = booster.model_to_string(), stages, best
            self.networks_, self._booster = len(keep), booster
        return self

    def predict(self, archs: list, composed_ms) -> np.ndarray:
        """The factor for each architecture's latency (1 where none was fitted or it does
        not apply: another number of stages)."""
        out = np.ones(len(archs))
        if not self.trees_:
            return out
        if self._booster is None:
            self._booster = _parse_booster(self.trees_)
        rows = [i for i, a in enumerate(archs)
                if len(getattr(a, "stages", ()) or ()) == self.stages_]
        if rows:
            x = np.array([network_features(archs[i], float(composed_ms[i])) for i in rows])
            out[rows] = np.exp(self._booster.predict(x))
        return out

    def to_dict(self) -> dict:
        """The stored form (``network_model``): empty where nothing was fitted."""
        if not self.trees_:
            return {}
        return {"model": self.trees_, "stages": self.stages_, "rounds": self.rounds_,
                "networks": self.networks_, "cv_within_10pct": self.cv_within_10pct_}

    @classmethod
    def from_dict(cls, data: dict) -> NetworkCorrection:
        model = cls()
        model.trees_ = data.get("model", "")
        model.stages_ = int(data.get("stages", 0))
        model.rounds_ = int(data.get("rounds", 0))
        model.networks_ = int(data.get("networks", 0))
        model.cv_within_10pct_ = data.get("cv_within_10pct", {})
        return model
