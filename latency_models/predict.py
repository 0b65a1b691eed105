"""``python -m latency_models.predict +device=NAME model=PATH [precision=int8] [format=...]``

PATH is an ``.onnx`` file, an ``arch.json``, or a folder (every ``.onnx`` file below it). A
file that cannot be priced (an op the model does not know, a dynamic input size) is reported
and the others are still priced; the exit status is then 1.
Prints a table on a terminal; piped (or ``format=jsonl``), one JSON object per model, one per
line: path, latency_ms, energy_mj, peak_memory_kib, train_memory_kib (where the graph is an
architecture of the space: one fine-tuning step with finetune.update at finetune.batch),
provenance.
Devices are the files of ``conf/device/`` (and ``./conf/device/`` where you run it).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from latency_models.devices import DEVICE_GROUP, DeviceConfig
from spaces.cli import HydraApp, arg
from spaces.schemes import FinetuneConfig

__all__ = ["COMMAND", "PredictConfig", "PredictError", "main", "predict"]


class PredictError(ValueError):
    pass


@dataclass
class PredictConfig:
    """``python -m latency_models.predict``: what to price, on which device."""

    device: DeviceConfig = field(default_factory=DeviceConfig)  # +device=NAME (conf/device/)
    model: str = arg(help="an .onnx file, an arch.json, or a folder (every .onnx below it)")
    format: Optional[str] = arg(None, "table | jsonl (default: table on a terminal, jsonl "
                                      "when piped)")
    precision: str = arg("as_is", "as_is | int8: int8 prices a float graph as fully 8-bit "
                                  "(TFLite's integer quantization); an int8 QDQ graph is "
                                  "priced as it is either way")
    # train_memory_kib: the update scheme and batch of a fine-tuning step
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def targets(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(path.rglob("*.onnx"))
        if not found:
            raise PredictError(f"folder {path} has no .onnx file")
        return found
    if not path.exists():
        raise PredictError(f"{path} does not exist")
    return [path]


COMMAND = HydraApp(
    module="latency_models.predict",
    summary="Price ONNX files or architectures (arch.json) on a device: predicted latency\n"
            "(ms) and energy (mJ) per image at batch 1, from the device's learned model.\n"
            "On a terminal it prints a table; piped, or with format=jsonl, one JSON object\n"
            "per model.",
    schema=PredictConfig,
    usage_args="+device=NAME model=PATH",
    **DEVICE_GROUP,
    examples=["+device=rpi4 model=outputs/rpi4-fashion_mnist-mobilenet/export/",
              "+device=host model=arch.json format=jsonl"],
)

PRECISIONS = {"as_is": None, "int8": 8}
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

    from latency_models.prediction import ENERGY_WORDS, LATENCY_WORDS

    table = Table(title=f"predicted for {device} (batch 1)")
    numbers = ("latency ms", "energy mJ", "peak KiB", "train KiB")
    for col in ("model", *numbers, "latency from", "energy from", "priced as"):
        table.add_column(col, justify="right" if col in numbers else "left",
                         no_wrap=col in numbers, overflow="fold")
    for r in rows:
        p = r["provenance"]
        train = r.get("train_memory_kib")
        table.add_row(r["path"], f"{r['latency_ms']:.4g}", f"{r['energy_mj']:.4g}",
                      f"{r['peak_memory_kib']:,.1f}", "-" if train is None else f"{train:,.0f}",
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
        console.print("  *: extrapolated: ops outside the sizes the device was measured at "
                      "carry over 10% of the price",
                      highlight=False, soft_wrap=True)
    notes = sorted({r["provenance"]["note"] for r in rows if r["provenance"].get("note")})
    for note in notes:
        console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    console.print("  peak KiB: activation memory of one inference (batch 1, tensors live from "
                  "producer to last consumer in graph order); train KiB: one fine-tuning step "
                  f"(update={rows[0].get('update')}, batch {rows[0].get('batch')}; "
                  "architectures of the space only)", highlight=False, soft_wrap=True)
    console.print(f"  model hash {rows[0]['provenance'].get('model_hash')}; "
                  "format=jsonl for machine-readable lines", highlight=False, soft_wrap=True)


def predict(cfg: PredictConfig) -> int:
    """Price ``cfg.model`` on ``cfg.device``; prints a table or JSON lines. Returns the exit
    status."""
    from latency_models.memory import graph_peak_memory_kib, peak_memory_kib
    from latency_models.model import DeviceModel, DeviceModelError
    from latency_models.networks import network_of
    from latency_models.ops import UnknownOpError
    from latency_models.train_memory import train_memory_kib
    from spaces.arch import Arch, ArchError
    from spaces.schemes import SchemeError, parse_scheme

    fmt = cfg.format or ("table" if sys.stdout.isatty() else "jsonl")
    if fmt not in ("table", "jsonl"):
        print(f"error: format={fmt!r} is not table or jsonl", file=sys.stderr)
        return 2
    if cfg.precision not in PRECISIONS:
        print(f"error: precision={cfg.precision!r} is not one of {', '.join(PRECISIONS)}",
              file=sys.stderr)
        return 2
    try:
        parse_scheme(cfg.finetune.update)
    except SchemeError as exc:
        print(f"error: finetune.update: {exc}", file=sys.stderr)
        return 2
    rows, failed = [], []
    try:
        device = DeviceModel.load(cfg.device.model_path())
        paths = targets(Path(cfg.model).expanduser())
    except (PredictError, DeviceModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        try:  # as the search prices it wherever it can
            # the file read and resolved once (an architecture, or the graph's ops), then
            # priced as DeviceModel.price(path) prices it, and its memory walked
            what, kind = network_of(path, PRECISIONS[cfg.precision])
            pred = device.price(what)
            pred.provenance["path"] = kind
            arch = what if isinstance(what, Arch) else None
            peak = peak_memory_kib(arch, tuple(device.native_bits)) if arch is not None \
                else graph_peak_memory_kib(path, PRECISIONS[cfg.precision])
        except (DeviceModelError, UnknownOpError, ArchError) as exc:
            failed.append((path, str(exc)))
            continue
        train = None if arch is None else train_memory_kib(arch, cfg.finetune.update,
                                                           cfg.finetune.batch)
        row = {"path": str(path), "latency_ms": round(pred.latency_ms, 6),
               "energy_mj": round(pred.energy_mj, 6), "peak_memory_kib": round(peak, 3),
               "train_memory_kib": None if train is None else round(train, 1),
               "update": cfg.finetune.update, "batch": cfg.finetune.batch,
               "provenance": pred.provenance}
        if cfg.precision != "as_is":
            row["precision"] = cfg.precision
        if fmt == "jsonl":
            print(json.dumps(row), flush=True)
        rows.append(row)
    if fmt == "table" and rows:
        print_table(rows, cfg.device.name)
    for path, why in failed:
        text = why if why.startswith(str(path)) else f"{path}: {why}"
        print(f"error: {text}", file=sys.stderr)
    if failed and len(paths) > 1:
        print(f"{len(failed)} of {len(paths)} files could not be priced (above); the other "
              f"{len(rows)} were", file=sys.stderr)
    return (2 if len(paths) == 1 else 1) if failed else 0


def main(argv: list[str] | None = None) -> int:
    return COMMAND.run(predict, argv)


if __name__ == "__main__":
    sys.exit(main())
