"""Price many architectures at once: the regressor of a device model, vectorized.

Pricing an architecture op by op builds a few hundred ``Op`` objects per network. A search
that screens candidates in bulk (random or evolutionary pre-screening, constraint checks over
a whole population) needs more, so this module computes the same features with numpy from
the layers' fields: one row per layer and op slot, no Python objects per op.
``DeviceModel.price_many`` uses it where it gives the model's own prices (:func:`exact_for`);
``tests/test_latency_fast.py`` holds it equal to the reference path
(``latency_models.ops.layer_ops``) on random architectures; a change to ``layer_ops`` that is
not made here fails that test.
"""

from __future__ import annotations

import numpy as np

from latency_models.features import (
    FEATURES,
    N_FEATURES,
    OFFSETS,
    is_extrapolated,
    kind_ranges,
)
from latency_models.model import DeviceModel
from latency_models.ops import KINDS
from spaces.arch import Arch

_FIELDS = ("in_chs", "mid_chs", "out_chs", "rd_chs", "kernel", "stride", "in_size",
           "out_size")
_KIND_CODE = {"stem": 0, "ds": 1, "ir": 2, "head": 3, "classifier": 4}


def _table(archs: list[Arch]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Column arrays of every layer of every network, the network index of each layer, and
    the per-network preprocessing elements (input resize and normalization)."""
    rows, owner, pre = [], [], []
    code = _KIND_CODE
    for n, arch in enumerate(archs):
        layers = arch.layer_fields(pruned=True)  # Layer's fields, in order
        rows += [(*x[2:10], code[x[1]], x[10] == "relu", x[11], x[12]) for x in layers]
        owner += [n] * len(layers)
        n_in, n_res = arch.in_chans * arch.input_size ** 2, arch.in_chans * arch.resolution ** 2
        pre.append((n_in + n_res if arch.resolution != arch.input_size else 0, n_res))
    a = np.asarray(rows, dtype=np.int64)
    cols = {f: a[:, i] for i, f in enumerate(_FIELDS + ("kind", "relu", "skip", "bits"))}
    return cols, np.asarray(owner), np.asarray(pre, dtype=np.float64)


class _Slots:
    """Accumulates op slots: per layer, features at the layer's precision or at 32 bits."""

    def __init__(self, n_layers: int) -> None:
        self.low = np.zeros((n_layers, N_FEATURES))  # ops at the layer's precision
        self.f32 = np.zeros((n_layers, N_FEATURES))  # ops always at 32 bits
        # (kind, macs, elems, present, at layer precision, the slot's feature columns)
        self.ops: list[tuple] = []

    def conv(self, kind: str, present, cin, cout, k, hin, hout, align: int,
             depthwise: bool = False) -> None:
        present = present.astype(bool)
        macs = hout * hout * cout * (1 if depthwise else cin) * k * k
        elems = cin * hin * hin + cout * hout * hout
        weights = cout * k * k if depthwise else (cin * cout * k * k if kind != "fc" else macs)
        mis = (cout % align != 0) | ((cin % align != 0) if kind in ("pwconv", "fc") else False)
        i = OFFSETS[kind]
        feats = (np.ones_like(macs), macs / 1e6, elems / 1e6, weights / 1e6, mis)
        cols = [np.where(present, v, 0.0) for v in feats]
        for j, v in enumerate(cols):
            self.low[:, i + j] += v
        self.ops.append((kind, macs, elems, present, True, cols))

    def other(self, kind: str, present, elems, window_macs=None) -> None:
        present = present.astype(bool)
        i = OFFSETS[kind]
        cols = [present.astype(float), np.where(present, elems / 1e6, 0.0)]
        if kind == "pool":
            cols.append(np.where(present, (window_macs if window_macs is not None
                                           else 0 * elems) / 1e6, 0.0))
        for j, v in enumerate(cols):
            self.f32[:, i + j] += v
        self.ops.append((kind, 0 * elems, elems, present, False, cols))


def layer_features(cols: dict, align: int) -> _Slots:
    """The op slots of every layer, mirroring ``latency_models.ops.layer_ops``."""
    n = len(cols["kind"])
    kind = cols["kind"]
    ci, cm, co, rd = cols["in_chs"], cols["mid_chs"], cols["out_chs"], cols["rd_chs"]
    k, hi, ho = cols["kernel"], cols["in_size"], cols["out_size"]
    relu = cols["relu"].astype(bool)
    low = cols["prec"] <= 8
    stem, ds, ir, head, clf = (kind == c for c in range(5))
    block = ds | ir
    se = block & (rd > 0)
    one = np.ones(n, dtype=np.int64)
    # int8 QDQ absorbs a ReLU after a quantized conv; hard-swish stays an op.
    act_kept = ~(low & relu)
    s = _Slots(n)
    s.conv("conv", stem, ci, co, k, hi, ho, align)
    s.other("eltwise", stem & ~low, 2 * co * ho * ho)  # stem ReLU
    s.conv("pwconv", head, ci, co, one, hi, ho, align)
    s.other("eltwise", head & ~low, 2 * co * ho * ho)  # head ReLU
    s.other("pool", head, co * ho * ho + co)
    s.conv("fc", clf, ci, co, one, one, one, align)
    s.conv("pwconv", ir, ci, cm, one, hi, hi, align)  # expand
    s.other("eltwise", ir & act_kept, 2 * cm * hi * hi)
    s.conv("dwconv", block, cm, cm, k, hi, ho, align, depthwise=True)
    s.other("eltwise", block & act_kept, 2 * cm * ho * ho)
    s.other("pool", se, cm * ho * ho + cm)  # squeeze
    s.conv("pwconv", se, cm, rd, one, one, one, align)
    s.other("eltwise", se & act_kept, 2 * rd)
    s.conv("pwconv", se, rd, cm, one, one, one, align)
    s.other("eltwise", se, 2 * cm)  # sigmoid gate
    s.other("eltwise", se, 2 * cm * ho * ho + cm)  # scale
    s.conv("pwconv", block, cm, co, one, ho, ho, align)  # project
    s.other("add", block & cols["skip"].astype(bool), 3 * co * ho * ho)
    return s


def exact_for(model: DeviceModel) -> bool:
    """Whether :func:`predict_archs` gives ``model``'s own prices: a device priced by its
    linear regressor alone (no measured units to look up, no layer model, no composition)."""
    return not (len(model.lookup) or model.layers is not None
                or model.composition is not None
                or (model.correction is not None and model.correction.trees_))


def predict_archs(model: DeviceModel, archs: list[Arch]) -> dict:
    """Latency (ms), energy (mJ or None where modelled) and extrapolation flags of many
    architectures at once, by the model's linear regressor (``DeviceModel.price_many`` uses
    it where :func:`exact_for` holds).

    Returns a dict of numpy arrays ``latency_ms``, ``energy_mj`` (both with the network
    overhead), ``extrapolated`` and ``standins``: per bit-width priced by another
    precision's coefficients, whether each architecture has such ops.
    """
    n = len(archs)
    if not n:
        return {"latency_ms": np.zeros(0), "energy_mj": None,
                "extrapolated": np.zeros(0, bool), "standins": {}}
    cols, owner, pre = _table(archs)
    ops = model.ops
    native = np.asarray(model.native_bits or [0])
    raw = cols["bits"]
    cols["prec"] = np.where(np.isin(raw, native), raw, np.where(raw <= 8, 8, 32))
    s = layer_features(cols, model.align)
    bits = cols["prec"]
    lat_layer = np.zeros(len(bits))
    en_layer = np.zeros(len(bits))
    standins: dict[int, np.ndarray] = {}
    low_keys = {}

    def stood_in(b: int, rows: np.ndarray, part: np.ndarray) -> None:
        # a stand-in that priced nothing changed nothing (as DeviceModel's own path says)
        hit = np.zeros(len(bits), bool)
        hit[rows] = part > 0
        standins[b] = standins.get(b, np.zeros(n, bool)) | (
            np.bincount(owner, hit, minlength=n) > 0)

    for b in np.unique(bits):
        key, standin = ops.coefficient_set(int(b))
        low_keys[int(b)] = key
        rows = bits == b
        coef = np.asarray(ops.coef_[key])
        part = s.low[rows] @ coef
        if standin:
            stood_in(int(b), rows, part)
        lat_layer[rows] += part
        if ops.energy_coef_:
            en_layer[rows] += s.low[rows] @ np.asarray(ops.energy_coef_[key])
    key32, standin32 = ops.coefficient_set(32)
    part = s.f32 @ np.asarray(ops.coef_[key32])
    if standin32:
        stood_in(32, np.ones(len(bits), bool), part)
    lat_layer += part
    if ops.energy_coef_:
        en_layer += s.f32 @ np.asarray(ops.energy_coef_[key32])
    latency = np.bincount(owner, lat_layer, minlength=n)
    # preprocessing: optional resize, then (x - 0.5) / 0.5
    pre_ops = np.zeros((n, N_FEATURES))
    i = OFFSETS["eltwise"]
    pre_ops[:, i] = (pre[:, 0] > 0) + 2
    pre_ops[:, i + 1] = (pre[:, 0] + 4 * pre[:, 1]) / 1e6
    latency += pre_ops @ np.asarray(ops.coef_[key32]) + ops.overhead_ms_
    energy = None
    if ops.energy_coef_:
        energy = np.bincount(owner, en_layer, minlength=n) + pre_ops @ np.asarray(
            ops.energy_coef_[key32]) + ops.overhead_mj_
    # the linear price of the ops outside the measured ranges (infinite: a kind never
    # measured), against the network's linear price (latency_models.features.is_extrapolated)
    out_layer = np.zeros(len(bits))
    by_bits = [(int(b), bits == b) for b in np.unique(bits)]
    for kind, macs, elems, present, at_low, cols in s.ops:
        for b, rows in by_bits:
            sel = present & rows
            if not sel.any():
                continue
            kb = low_keys[b] if at_low else key32
            r = kind_ranges(ops.ranges_, kind, kb, ops.borrowed_)
            if r is None:
                out_layer[sel] = np.inf
                continue
            far = sel & ((macs < r[0]) | (macs > r[1]) | (elems < r[2]) | (elems > r[3]))
            if far.any():  # its size-dependent terms (not the per-call count, cols[0])
                coef = np.asarray(ops.coef_[kb])[OFFSETS[kind] + 1:OFFSETS[kind] + len(cols)]
                out_layer[far] += np.stack(cols[1:], axis=1)[far] @ coef
    linear = latency - ops.overhead_ms_
    outside = np.bincount(owner, out_layer, minlength=n)
    # the preprocessing's elementwise ops (latency_models.ops.input_ops), at 32 bits: a
    # resize where the network runs at another resolution, then two of 2 x n_res elements
    r = kind_ranges(ops.ranges_, "eltwise", key32, ops.borrowed_)
    per_elem = np.asarray(ops.coef_[key32])[OFFSETS["eltwise"] + 1] / 1e6
    for elems, count, present in ((pre[:, 0], 1, pre[:, 0] > 0),
                                  (2 * pre[:, 1], 2, np.ones(n, bool))):
        if r is None:
            outside[present] = np.inf
            continue
        far = present & ((elems < r[2]) | (elems > r[3]) | (r[0] > 0))
        outside += np.where(far, count * elems * per_elem, 0.0)
    extrapolated = np.array([is_extrapolated(o, lin) for o, lin in zip(outside, linear)],
                            dtype=bool)
    return {"latency_ms": latency, "energy_mj": energy, "extrapolated": extrapolated,
            "standins": standins}


__all__ = ["exact_for", "predict_archs", "layer_features", "KINDS", "FEATURES"]
