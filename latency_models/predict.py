"""python -m latency_models.predict +device=NAME model=PATH [format=table|jsonl]

PATH is an ``.onnx`` file, an ``arch.json``, or a folder (every ``.onnx`` file below it).
Prints a table on a terminal; piped (or ``format=jsonl``), one JSON object per model, one per
line: path, latency_ms, energy_mj, provenance.
Devices are the files of ``conf/device/`` (and ``./conf/device/`` where you run it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spaces.cli import CliError, Command


class PredictError(ValueError):
    pass


def device_file(name: str) -> Path:
    from search.config import CONF_DIR, known_devices

    for base in (Path.cwd() / "conf" / "device", CONF_DIR / "device"):
        if (base / f"{name}.yaml").is_file():
            return base / f"{name}.yaml"
    raise PredictError(f"unknown device {name!r}; known devices: "
                       f"{', '.join(known_devices())}")


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


COMMAND = Command(
    module="latency_models.predict",
    summary="Price ONNX files or architectures (arch.json) on a device: predicted latency\n"
            "(ms) and energy (mJ) per image at batch 1, from the device's learned model.\n"
            "On a terminal it prints a table; piped, or with format=jsonl, one JSON object\n"
            "per model.",
    usage_args="+device=NAME model=PATH",
    keys={"device": "a device of conf/device/ (or ./conf/device/ here), e.g. rpi4, host",
          "model": "an .onnx file, an arch.json, or a folder (every .onnx below it)",
          "format": "table | jsonl (default: table on a terminal, jsonl when piped)"},
    examples=["+device=rpi4 model=outputs/rpi4-fashion_mnist-mobilenet/export/",
              "+device=host model=arch.json format=jsonl"],
    required=("device", "model"),
)

PATH_WORDS = {"arch": "architecture", "onnx:arch": "architecture (from the graph)",
              "onnx:ops": "graph ops"}
PATH_NOTES = {
    "onnx:arch": "the graph is an architecture of the space (recorded in it, or the arch.json "
                 "beside it): priced layer by layer, exactly as the search priced it",
    "onnx:ops": "a graph that is no architecture of the space: priced by its ops as one "
                "network (no per-layer lookup or network correction)",
}


def print_table(rows: list[dict], device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from latency_models.model import ENERGY_WORDS, LATENCY_WORDS

    table = Table(title=f"predicted for {device} (batch 1)")
    for col in ("model", "latency ms", "energy mJ", "latency from", "energy from",
                "priced as"):
        table.add_column(col, justify="right" if col in ("latency ms", "energy mJ") else "left")
    for r in rows:
        p = r["provenance"]
        table.add_row(r["path"], f"{r['latency_ms']:.4g}", f"{r['energy_mj']:.4g}",
                      p["latency"] + ("*" if p.get("extrapolated") else ""), p["energy"],
                      PATH_WORDS.get(p.get("path"), p.get("path", "")))
    console = Console()
    console.print(table)
    for key, words in (("latency", LATENCY_WORDS), ("energy", ENERGY_WORDS)):
        for word in sorted({r["provenance"][key] for r in rows}):
            console.print(f"  {key} {word}: {words.get(word, word)}", highlight=False,
                          soft_wrap=True)
    for path in sorted({r["provenance"].get("path") for r in rows} & set(PATH_NOTES)):
        console.print(f"  priced as {PATH_WORDS[path]}: {PATH_NOTES[path]}", highlight=False,
                      soft_wrap=True)
    if any(r["provenance"].get("extrapolated") for r in rows):
        console.print("  *: some layers lie outside the sizes the device was measured at",
                      highlight=False, soft_wrap=True)
    notes = sorted({r["provenance"]["note"] for r in rows if r["provenance"].get("note")})
    for note in notes:
        console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    console.print(f"  model hash {rows[0]['provenance'].get('model_hash')}; "
                  "format=jsonl for machine-readable lines", highlight=False, soft_wrap=True)


def main(argv: list[str]) -> int:
    from latency_models.model import DeviceModelError
    from latency_models.ops import UnknownOpError
    from spaces.arch import ArchError

    try:
        args = COMMAND.parse(argv)
        fmt = args.get("format") or ("table" if sys.stdout.isatty() else "jsonl")
        if fmt not in ("table", "jsonl"):
            raise CliError(f"format={fmt!r} is not table or jsonl")
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    try:
        device = load_device(args["device"])
        for path in targets(Path(args["model"])):
            pred = device.price(path)  # as the search prices it wherever it can
            row = {"path": str(path), "latency_ms": round(pred.latency_ms, 6),
                   "energy_mj": round(pred.energy_mj, 6), "provenance": pred.provenance}
            if fmt == "jsonl":
                print(json.dumps(row), flush=True)
            rows.append(row)
    except (PredictError, DeviceModelError, UnknownOpError, ArchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if fmt == "table":
        print_table(rows, args["device"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
