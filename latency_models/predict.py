"""python -m latency_models.predict +device=NAME model=PATH

PATH is an ``.onnx`` file, an ``arch.json``, or a folder (every ``.onnx`` file below it).
Prints one JSON object per model, one per line: path, latency_ms, energy_mj, provenance.
Devices are the files of ``conf/device/`` (and ``./conf/device/`` where you run it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

USAGE = "usage: python -m latency_models.predict +device=NAME model=PATH"


class PredictError(ValueError):
    pass


def device_file(name: str) -> Path:
    from search.config import CONF_DIR

    for base in (Path.cwd() / "conf" / "device", CONF_DIR / "device"):
        if (base / f"{name}.yaml").is_file():
            return base / f"{name}.yaml"
    known = sorted({p.stem for base in (Path.cwd() / "conf" / "device", CONF_DIR / "device")
                    if base.is_dir() for p in base.glob("*.yaml")})
    raise PredictError(f"unknown device {name!r}; known devices: {', '.join(known)}")


def load_device(name: str):
    import yaml

    from latency_models.model import DeviceModel

    path = device_file(name)
    try:
        conf = yaml.safe_load(path.read_text())
        model_name = conf["model"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise PredictError(f"device file {path} is not valid (needs a 'model' entry): "
                           f"{exc}") from None
    from search.config import device_model_file

    return DeviceModel.load(device_model_file(name, str(model_name)))


def targets(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(path.rglob("*.onnx"))
        if not found:
            raise PredictError(f"folder {path} has no .onnx file")
        return found
    if not path.exists():
        raise PredictError(f"{path} does not exist")
    return [path]


def ops_of(path: Path):
    """The ops of an ONNX file."""
    import onnx
    from onnx.onnx_cpp2py_export.checker import ValidationError

    from latency_models.ops import onnx_ops

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (ValidationError, OSError, ValueError, Exception) as exc:  # onnx raises DecodeError
        raise PredictError(f"{path} is not a valid ONNX model ({exc.__class__.__name__}); "
                           "pass an .onnx file, an arch.json or a folder") from None
    return onnx_ops(model)


def main(argv: list[str]) -> int:
    from latency_models.model import DeviceModelError
    from latency_models.ops import UnknownOpError
    from spaces.arch import Arch, ArchError

    args = dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a)
    bad = [a for a in argv if "=" not in a] + sorted(set(args) - {"device", "model"})
    if bad or "device" not in args or "model" not in args:
        print(f"error: {'unknown arguments ' + str(bad) if bad else 'missing arguments'}. "
              + USAGE, file=sys.stderr)
        return 2
    try:
        device = load_device(args["device"])
        for path in targets(Path(args["model"])):
            if path.suffix == ".json":  # an architecture: priced as the search prices it
                pred = device.predict_arch(Arch.from_json(path.read_text()))
            else:
                pred = device.predict(ops_of(path))
            print(json.dumps({"path": str(path), "latency_ms": round(pred.latency_ms, 6),
                              "energy_mj": round(pred.energy_mj, 6),
                              "provenance": pred.provenance}), flush=True)
    except (PredictError, DeviceModelError, UnknownOpError, ArchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
