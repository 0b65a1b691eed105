"""A per-device latency and energy model: measured lookups plus a learned op-level regressor.

Latency of a network = sum over its ops of ``a_kind * macs + b_kind * elems + c_kind`` with
non-negative coefficients fitted per precision (relative error, so small and large networks
count alike), plus a fitted per-network overhead. Networks measured exactly are looked up.

Energy is modelled: the device's active power times latency (mJ = W x ms), labelled
``modelled`` unless a later model measures it.

Stored as plain JSON with a format version and a content hash that studies record.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latency_models.ops import KINDS, Op, signature
from spaces.files import write_text

FORMAT = "edgenas-device-model"
FORMAT_VERSION = 1
FEATURES = ("macs", "elems", "count")


class DeviceModelError(ValueError):
    """A device model file that cannot be used."""


def featurize(ops: list[Op], bits: int) -> np.ndarray:
    """Feature vector of the ops at precision ``bits``: (macs, elems, count) per kind, in
    millions of MACs and elements so the coefficients are of similar size."""
    x = np.zeros(len(KINDS) * len(FEATURES))
    for op in ops:
        if op.bits != bits:
            continue
        i = KINDS.index(op.kind) * len(FEATURES)
        x[i:i + 3] += (op.macs / 1e6, op.elems / 1e6, 1.0)
    return x


def nnls(a: np.ndarray, b: np.ndarray, iters: int = 2000) -> np.ndarray:
    """Non-negative least squares (scipy's Lawson-Hanson when present, else projected GD)."""
    try:
        from scipy.optimize import nnls as scipy_nnls

        return scipy_nnls(a, b, maxiter=50 * a.shape[1])[0]
    except ImportError:  # pragma: no cover - scipy ships with the project's dependencies
        x = np.zeros(a.shape[1])
        step = 1.0 / (np.linalg.norm(a, 2) ** 2 + 1e-12)
        for _ in range(iters):
            x = np.maximum(0.0, x - step * (a.T @ (a @ x - b)))
        return x


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


def outside(op: Op, ranges: dict) -> bool:
    """Whether an op lies outside what was measured (its kind never, or smaller or larger)."""
    r = ranges.get(f"{op.kind}/{op.bits}")
    return r is None or not (r[0] <= op.macs <= r[1] and r[2] <= op.elems <= r[3])


@dataclass
class Prediction:
    latency_ms: float
    energy_mj: float
    provenance: dict = field(default_factory=dict)


@dataclass
class DeviceModel:
    """Fit with :meth:`fit` (per precision), store with :meth:`save`, load with :meth:`load`.

    Attributes:
        device: device name.
        power_w: active power used to model energy.
        coef_: per precision ("32", "8"), the fitted coefficients (ms per unit feature).
        overhead_ms_: the fitted per-network overhead.
        ranges_: per op kind and precision, the measured range of MACs and elements.
        fallback: precision -> precision used in its place when it was never measured.
        lookup_: op-list signature -> measured latency (ms) of whole networks.
        meta: provenance text, source files, licenses, held-out accuracy.
    """

    device: str
    power_w: float
    power_source: str = ""
    fallback: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    coef_: dict = field(default_factory=dict)
    overhead_ms_: float = 0.0
    ranges_: dict = field(default_factory=dict)
    lookup_: dict = field(default_factory=dict)

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, samples: list[list[Op]], latency_ms: list[float],
            with_overhead: bool = True) -> DeviceModel:
        """Fit the coefficients of every precision present in the samples; returns self.

        Each sample is a whole measured unit (a network or a block) and may mix precisions.
        Rows are weighted by 1/latency so the fit minimises relative error.
        """
        y = np.asarray(latency_ms, dtype=float)
        if len(samples) != len(y) or len(y) == 0:
            raise ValueError("fit needs one latency per sample and at least one sample")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("latencies must be positive finite numbers (milliseconds)")
        precisions = sorted({op.bits for ops in samples for op in ops})
        n = len(KINDS) * len(FEATURES)
        x = np.hstack([np.stack([featurize(ops, b) for ops in samples]) for b in precisions]
                      + [np.ones((len(y), 1 if with_overhead else 0))])
        w = 1.0 / y
        sol = nnls(x * w[:, None], y * w)
        self.coef_ = {str(b): [float(v) for v in sol[i * n:(i + 1) * n]]
                      for i, b in enumerate(precisions)}
        self.ranges_ = op_ranges(samples)
        self.overhead_ms_ = float(sol[-1]) if with_overhead else 0.0
        return self

    def add_measurements(self, samples: list[list[Op]], latency_ms: list[float]) -> None:
        """Record measured whole networks for exact lookup."""
        for ops, ms in zip(samples, latency_ms):
            self.lookup_[signature(ops)] = float(ms)

    # ---- prediction ---------------------------------------------------------------------
    def _price(self, ops: list[Op], bits: int) -> tuple[float, str, bool]:
        """Latency of the ops at one precision, the provenance, and an extrapolation flag."""
        key = str(bits)
        provenance = "regressed"
        if key not in self.coef_:
            if key not in self.fallback:
                raise DeviceModelError(
                    f"device {self.device!r} has no latency model for {bits}-bit ops and no "
                    f"fallback; its model covers {sorted(self.coef_)} bits")
            key = str(self.fallback[key])
            provenance = "modelled"
        x = featurize(ops, bits)
        coef = np.asarray(self.coef_[key])
        extrapolated = any(outside(Op(op.kind, op.macs, op.elems, int(key)), self.ranges_)
                           for op in ops if op.bits == bits)
        return float(x @ coef), provenance, extrapolated

    def predict(self, ops: list[Op]) -> Prediction:
        """Latency (ms) and energy (mJ) of one network given as an op list."""
        sig = signature(ops)
        if sig in self.lookup_:
            ms = self.lookup_[sig]
            prov = {"latency": "measured", "extrapolated": False}
        else:
            total, sources, extrapolated = 0.0, set(), False
            precisions = sorted({op.bits for op in ops})
            for bits in precisions:
                ms_b, src, ext = self._price(ops, bits)
                total += ms_b
                sources.add(src)
                extrapolated |= ext
            ms = total + self.overhead_ms_
            prov = {"latency": "modelled" if "modelled" in sources else "regressed",
                    "extrapolated": extrapolated}
            if "modelled" in sources:
                prov["note"] = "; ".join(
                    f"{k}-bit ops priced as {v}-bit (no {k}-bit measurements for this device)"
                    for k, v in sorted(self.fallback.items()) if any(op.bits == int(k)
                                                                     for op in ops))
        prov.update(energy="modelled", device=self.device, model_hash=self.hash)
        return Prediction(ms, ms * self.power_w, prov)

    # ---- storage ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        body = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "device": self.device,
            "units": {"latency": "ms", "energy": "mJ", "power": "W",
                      "features": "millions of MACs / elements, count"},
            "kinds": list(KINDS), "features": list(FEATURES),
            "power_w": self.power_w, "power_source": self.power_source,
            "fallback": self.fallback, "coef": self.coef_, "overhead_ms": self.overhead_ms_,
            "ranges": self.ranges_, "lookup": self.lookup_, "meta": self.meta,
        }
        return body

    @property
    def hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

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
                        fallback=data.get("fallback", {}), meta=data.get("meta", {}),
                        coef_=data["coef"], overhead_ms_=float(data["overhead_ms"]),
                        ranges_=data["ranges"], lookup_=data.get("lookup", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceModelError(f"device model file {path} is missing or has a bad field: "
                                   f"{exc}") from None
        n = len(KINDS) * len(FEATURES)
        if data["kinds"] != list(KINDS) or any(len(c) != n for c in model.coef_.values()):
            raise DeviceModelError(f"device model file {path} was fitted for other op kinds "
                                   f"({data['kinds']}); refit it")
        if data.get("hash") not in (None, model.hash):
            raise DeviceModelError(f"device model file {path} was edited after fitting (its "
                                   "hash does not match its content); refit it")
        return model
