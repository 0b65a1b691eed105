"""What a device model sees of a network: per-op features summed per precision, a layer's
op descriptors, and a whole architecture's features. Shared by the estimators of
:mod:`latency_models.estimators` and the vectorized pricing of :mod:`latency_models.fast`."""

from __future__ import annotations

import numpy as np

from latency_models.ops import KINDS, Op

__all__ = ["CONV_KINDS", "count_changes", "EXTRAPOLATED_SHARE", "FEATURE_NAMES", "FEATURES",
           "featurize", "in_range", "is_extrapolated", "kind_matrix", "kind_ranges",
           "LAYER_FEATURES", "low_precision", "N_FEATURES", "network_features", "OFFSETS",
           "op_features", "op_ranges", "precision_transitions", "size_terms",
           "SLOT_KINDS", "unit_features", "UNIT_SLOTS"]

_CONV = ("calls", "macs", "elems", "weights", "misaligned")
FEATURES = {"conv": _CONV, "dwconv": _CONV, "pwconv": _CONV, "fc": _CONV,
            "pool": ("calls", "elems", "window_macs"), "add": ("calls", "elems"),
            "eltwise": ("calls", "elems"), "gconv": _CONV}
CONV_KINDS = ("conv", "dwconv", "pwconv", "fc", "gconv")  # ops with weights (int8 quantizes)
OFFSETS = {}
_n = 0
for _kind in KINDS:
    OFFSETS[_kind] = _n
    _n += len(FEATURES[_kind])
N_FEATURES = _n
FEATURE_NAMES = [f"{k}.{f}" for k in KINDS for f in FEATURES[k]]
# The features a layer model sees (:func:`unit_features`): those of the kinds before
# ``gconv``, which an architecture of the search space never has.
LAYER_FEATURES = OFFSETS["gconv"]

def op_features(op: Op, align: int = 8) -> list[float]:
    """The features of one op (MACs, elements and weights in millions)."""
    if op.kind in CONV_KINDS:
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


SLOT_KINDS = {"conv": 1, "dwconv": 2, "pwconv": 3, "fc": 4}
UNIT_SLOTS = 5  # convolutions described one by one (an inverted-residual block has up to 5)


def unit_features(ops: list[Op], align: int = 8) -> np.ndarray:
    """Features of one unit (a layer) for the layer model: the summed op features at 32, 16
    and 8 bits, then each of the first ``UNIT_SLOTS`` convolutions' kind, channels, kernel,
    stride, input size, precision and channel remainders."""
    x = [featurize(ops, b, align)[:LAYER_FEATURES] for b in (32, 16, 8)]
    convs = [op for op in ops if op.kind in SLOT_KINDS][:UNIT_SLOTS]
    slots = np.zeros(9 * UNIT_SLOTS)
    for i, op in enumerate(convs):
        slots[9 * i:9 * i + 9] = (SLOT_KINDS[op.kind], op.cin, op.cout, op.kernel, op.stride,
                                  op.size, op.bits, op.cin % align, op.cout % align)
    return np.concatenate(x + [slots])


def low_precision(ops: list[Op]) -> bool:
    """Whether a unit runs at 8 bits or fewer (the layer model composes those apart)."""
    return any(op.bits <= 8 for op in ops)


def precision_transitions(units: list[list[Op]]) -> int:
    """Precision changes between consecutive units of a network (float to 8 bits or back).

    A layer measured alone in int8 quantizes its input and dequantizes its output. Inside a
    network, a run of int8 layers does that once, at its ends, so a network's int8 layers cost
    less than their sum by the boundaries they share.
    """
    return count_changes([low_precision(u) for u in units if u])


def count_changes(low: list[bool]) -> int:
    """How often consecutive flags differ (see :func:`precision_transitions`)."""
    return sum(x != y for x, y in zip(low, low[1:]))


def network_features(arch, composed_ms: float) -> list[float] | None:
    """Whole-network features of the network correction (:class:`NetworkCorrection`):
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


def kind_matrix(coef: np.ndarray) -> np.ndarray:
    """Per feature, the one-hot op kind it belongs to: (N_FEATURES, len(KINDS))."""
    m = np.zeros((N_FEATURES, len(KINDS)))
    for j, kind in enumerate(KINDS):
        m[OFFSETS[kind]:OFFSETS[kind] + len(FEATURES[kind]), j] = 1.0
    return m * coef[:, None]


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


# A prediction is flagged extrapolated when the ops outside what the device was measured on
# (a kind never measured, or smaller or larger than any measured op of its kind) carry more
# than this share of the network's linear price by their size-dependent terms (MACs,
# elements, weights: the fixed cost of one call was measured on every op of the kind). A
# classifier for 10 classes or a squeeze-excitation's 1x1 ops are smaller than any op of a
# 1000-class FBNet block, but their size costs little and does not make a network's price a
# guess. A network of layers all smaller (or larger) than anything measured does.
EXTRAPOLATED_SHARE = 0.10


def size_terms(x: np.ndarray) -> np.ndarray:
    """Summed op features without each kind's per-call count (the size-dependent terms)."""
    x = np.array(x, dtype=float)
    for kind in KINDS:
        x[..., OFFSETS[kind]] = 0.0
    return x


def kind_ranges(ranges: dict, kind: str, key: str, borrowed: dict) -> list | None:
    """The measured range of ``kind`` at coefficient set ``key``; a precision priced from
    another's costs (``borrowed``: int8 transferred onto fp32 measurements) is measured where
    that one is."""
    r = ranges.get(f"{kind}/{key}")
    if r is None and key in borrowed:
        r = ranges.get(f"{kind}/32")
    return r


def is_extrapolated(outside_ms: float, linear_ms: float) -> bool:
    """Whether ops outside the measured ranges, priced ``outside_ms`` by the linear model
    (infinite for a kind never measured), make a network priced ``linear_ms`` a guess."""
    return outside_ms > EXTRAPOLATED_SHARE * max(linear_ms, 0.0) or outside_ms == np.inf


def in_range(op: Op, r: list | None) -> bool:
    """Whether an op lies within a measured range [min MACs, max MACs, min elems, max elems]
    (None: never measured)."""
    return r is not None and r[0] <= op.macs <= r[1] and r[2] <= op.elems <= r[3]
