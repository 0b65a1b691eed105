"""A device model's file: its format and version, the hash of its content that studies
record, and the reading of files written before a format change (upgraded as they load)."""

from __future__ import annotations

import hashlib
import json

from latency_models.estimators import DeviceModelError, dense_for_grouped
from latency_models.features import FEATURE_NAMES, N_FEATURES
from latency_models.ops import KINDS

__all__ = ["content_hash", "FORMAT", "FORMAT_VERSION", "KINDS_BEFORE_GCONV", "upgrade"]

FORMAT = "edgenas-device-model"
FORMAT_VERSION = 2


def content_hash(data: dict) -> str:
    """The hash of a device model's stored content (:attr:`DeviceModel.hash`)."""
    text = json.dumps({k: v for k, v in data.items() if k != "hash"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The op kinds before grouped convolutions had their own (2026-12-05).
KINDS_BEFORE_GCONV = ["conv", "dwconv", "pwconv", "fc", "pool", "add", "eltwise"]


def upgrade(data: dict, path) -> dict:
    """A model file written before ``gconv`` existed, read as one of today's: its stored hash
    is checked on the content as written, then every coefficient vector gains the grouped
    block, priced as its dense convolutions (:func:`dense_for_grouped`). Its hash changes,
    as any refit's would."""
    if not isinstance(data, dict) or data.get("kinds") != KINDS_BEFORE_GCONV:
        return data
    if data.get("hash") not in (None, content_hash(data)):
        raise DeviceModelError(f"device model file {path} was edited after fitting (its "
                               "hash does not match its content); refit it")
    old = len(data.get("features") or [])

    def pad(vectors: dict) -> dict:
        return {b: dense_for_grouped(list(v) + [0.0] * (N_FEATURES - old))
                if isinstance(v, list) and len(v) == old else v for b, v in vectors.items()}

    data = dict(data, kinds=list(KINDS), features=FEATURE_NAMES, hash=None)
    data["coef"] = pad(data.get("coef") or {})
    data["energy_coef"] = pad(data.get("energy_coef") or {})
    if isinstance(data.get("layer_linear"), dict):
        data["layer_linear"] = dict(data["layer_linear"],
                                    coef=pad(data["layer_linear"].get("coef") or {}))
    return data
