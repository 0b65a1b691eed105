"""What a device model's price is: a network's latency and energy with their provenance
(:class:`Prediction`), many at once (:class:`Predictions`), and the words a provenance uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["ENERGY_SOURCES", "ENERGY_WORDS", "LATENCY_SOURCES", "LATENCY_WORDS", "Prediction",
           "Predictions"]

LATENCY_SOURCES = ("measured", "simulated", "transferred")
ENERGY_SOURCES = ("measured", "simulated", "modelled")
# What a prediction's provenance words mean, for people (outputs keep the words themselves).
LATENCY_WORDS = {
    "measured": "looked up from measurements of the same layers on the device",
    "regressed": "predicted by the model learned from the device's measurements",
    "transferred": "another device's measurements carried over to this one, calibrated "
                   "with a few of its own or scaled by int8/fp32 ratios learned elsewhere",
    "simulated": "from a simulator's table, not a device",
    "modelled": "a precision the device has no measurements for, priced as another",
}
ENERGY_WORDS = {
    "measured": "fitted per op to the device's energy measurements",
    "simulated": "from a simulator's per-op table, not measured",
    "modelled": "the device's power (an assumption, see its conf/device file) x latency, "
                "not measured",
}


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
