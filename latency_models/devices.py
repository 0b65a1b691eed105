"""Devices: a device's settings (``conf/device/NAME.yaml`` as :class:`DeviceConfig`), where
its model file lives, and which devices exist (shipped and the user's own). The search's
configuration (:mod:`search.config`) and the helper commands take ``+device=NAME`` from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CONF_DIR", "DEVICE_GROUP", "device_model_file", "DeviceConfig", "known_devices",
           "MODEL_DIR"]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the shipped config groups
MODEL_DIR = Path(__file__).resolve().parent / "data"  # the shipped device models


@dataclass
class DeviceConfig:
    name: str = "???"
    description: str = ""
    model: str = "???"  # device-model JSON: a file name under latency_models/data, or a path
    bits: list[int] = field(default_factory=lambda: [32, 8])
    provenance: str = ""

    def model_path(self) -> Path:
        return device_model_file(self.name, self.model)


def device_model_file(device: str, model: str) -> Path:
    """The file a device config's ``model:`` entry names. An absolute path as it is. A relative
    one: for a device of the user's own (``./conf/device/NAME.yaml``, where
    ``latency_models.fit`` writes it), relative to the working folder, as fit wrote it; for a
    shipped device, under ``latency_models/data``, so that a stray file of the same name in
    the working folder never replaces a shipped model."""
    path = Path(model).expanduser()
    if path.is_absolute():
        return path
    shipped = MODEL_DIR / path
    own = Path.cwd() / "conf" / "device" / f"{device}.yaml"
    if own.is_file() and own.resolve() != (CONF_DIR / "device" / f"{device}.yaml").resolve():
        local = Path.cwd() / path
        return local if local.is_file() or not shipped.is_file() else shipped
    return shipped


def known_devices() -> list[str]:
    """The devices of the ``device`` group: shipped (``conf/device``) and the user's
    (``./conf/device``)."""
    from spaces.cli import group_options

    return group_options(CONF_DIR, "device")


# How a helper command (latency_models.predict, .calibrate) takes +device=NAME: the settings
# of its spaces.cli.HydraApp.
DEVICE_GROUP = {"groups": {"device": known_devices}, "add_groups": ("device",),
                "hidden": ("device",), "searchpath": (str(CONF_DIR), "conf")}
