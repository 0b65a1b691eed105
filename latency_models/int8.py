"""8-bit layers on a device measured only in fp32, priced from what Arm cores teach.

TFLite's int8 kernels speed convolutions up by different factors per op kind: a dense 3x3
convolution runs about 3.6 times faster on a Cortex-A76, a depthwise one barely at all,
grouped convolutions in between (``scripts/results/latency/int8_transfer.md``). Those ratios
are learned here, pooled over several cores measured in both precisions, as one scale per
convolution kind on each core's own fp32 costs:

    int8 latency of a network = sum over conv kinds k of s_k x (its 8-bit ops' fp32 cost of
                                 kind k) + the rest at its fp32 cost,

fitted by bounded least squares on relative error (each scale at least 0.25: four times the
fp32 throughput is what 128-bit SIMD gives 8-bit lanes over 32-bit ones). :func:`add_int8`
then gives a device model fitted in fp32 alone an 8-bit coefficient set: its fp32
coefficients with the convolution kinds scaled. Its 8-bit prices are labelled
``transferred`` with the source in the prediction's note.
"""

from __future__ import annotations

import numpy as np

from latency_models.estimators import OpModel
from latency_models.features import CONV_KINDS, FEATURES, OFFSETS, featurize, kind_matrix
from latency_models.model import DeviceModel
from latency_models.ops import KINDS, Op

__all__ = ["add_int8", "fp32_model", "int8_scales", "MIN_SCALE", "predict_int8"]

MIN_SCALE = 0.25


def fp32_model(device: str, samples: list[list[Op]], ys) -> DeviceModel:
    """A linear op model fitted on the fp32 samples alone (8-bit ones are left out)."""
    keep = [i for i, s in enumerate(samples) if all(op.bits == 32 for op in s)]
    return DeviceModel(device=device, power_w=1.0).fit([samples[i] for i in keep],
                                                        np.asarray(ys)[keep])


def _design(model: DeviceModel, samples: list[list[Op]]) -> tuple[np.ndarray, np.ndarray]:
    """Per 8-bit sample: its 8-bit convolutions' fp32 cost per conv kind, and the rest (its
    32-bit ops and the overhead) at the model's fp32 prices."""
    coef = np.asarray(model.ops.coef_["32"])
    cols = [KINDS.index(k) for k in CONV_KINDS]
    f8 = np.stack([featurize(s, 8, model.align) for s in samples])
    f32 = np.stack([featurize(s, 32, model.align) for s in samples])
    return (f8 @ kind_matrix(coef))[:, cols], f32 @ coef + model.ops.overhead_ms_


def int8_scales(cores: dict) -> dict:
    """One scale per convolution kind, pooled over ``cores``: name -> (samples, ms), each
    with fp32 and 8-bit samples (``latency_models.sources.read_cnn``)."""
    from scipy.optimize import lsq_linear

    rows, targets = [], []
    for name, (samples, ys) in cores.items():
        model = fp32_model(name, samples, ys)
        low = [i for i, s in enumerate(samples) if any(op.bits == 8 for op in s)]
        parts, rest = _design(model, [samples[i] for i in low])
        y = np.asarray(ys, dtype=float)[low]
        rows.append(parts / y[:, None])
        targets.append(1.0 - rest / y)
    a, b = np.vstack(rows), np.concatenate(targets)
    used = a.any(axis=0)
    sol = np.ones(len(CONV_KINDS))
    if used.any():
        sol[used] = lsq_linear(a[:, used], b, bounds=(MIN_SCALE, np.inf)).x
    return {k: round(float(v), 4) for k, v in zip(CONV_KINDS, sol)}


def predict_int8(model: DeviceModel, samples: list[list[Op]], scales: dict) -> np.ndarray:
    """The 8-bit samples priced by ``model``'s fp32 coefficients and ``scales``."""
    parts, rest = _design(model, samples)
    return parts @ np.array([scales[k] for k in CONV_KINDS]) + rest


def add_int8(model: DeviceModel, scales: dict, source: str) -> DeviceModel:
    """``model`` (fitted in fp32 only) with an 8-bit coefficient set: its fp32 coefficients,
    each convolution kind's scaled by ``scales``; 8-bit prices are labelled ``transferred``
    with ``source``. Returns the model."""
    coef = np.asarray(model.ops.coef_["32"], dtype=float).copy()
    for kind in CONV_KINDS:
        i, n = OFFSETS[kind], len(FEATURES[kind])
        coef[i:i + n] *= scales[kind]
    ops = OpModel.from_dict(model.ops.to_dict(), device=model.device, align=model.align,
                            fallback=model.fallback, native_bits=model.native_bits)
    ops.coef_ = dict(model.ops.coef_, **{"8": [float(v) for v in coef]})
    ops.borrowed_ = {"8": source}
    model.ops = ops
    model.meta = dict(model.meta, int8={"source": source, "scales": scales})
    return model
