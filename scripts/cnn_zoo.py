"""Export the real ImageNet CNNs of a measurement file to ONNX and record their ops.

    pip install pytorchcv          # builds the networks without downloading weights
    python scripts/cnn_zoo.py      # -> .cache/edgenas/cnn_zoo/NAME.onnx and the ops file

Every network named in ``latency_models/data/mobile_cnn/tflite_cnn_e2e.csv`` (the measured
end-to-end latencies a device model such as ``pixel4`` is fitted on) is built by
``pytorchcv`` at its own input size (224 px for all of them), exported to ONNX (opset 17,
batch 1, fixed size) and split into the ops the device models price
(:func:`latency_models.ops.onnx_ops`), once as it is (fp32) and once as fully 8-bit
(``precision=8``: what TFLite's integer quantization runs). The ops go to
``latency_models/data/mobile_cnn/ops.csv.gz``, which ``python -m latency_models.fit cnn=...``
reads, so fitting needs neither pytorchcv nor the exports.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.sources import CNN_OPS_COLUMNS  # noqa: E402

MEASURED = ROOT / "latency_models/data/mobile_cnn/tflite_cnn_e2e.csv"


def export(name: str, out: Path) -> Path:
    """``name`` built by pytorchcv (random weights) and exported to ``out/NAME.onnx``."""
    import onnx
    import torch
    from pytorchcv.model_provider import get_model

    path = out / f"{name}.onnx"
    if path.is_file():
        return path
    model = get_model(name, pretrained=False).eval()
    size = tuple(getattr(model, "in_size", (224, 224)))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, *size),), buf, dynamo=False,
                          opset_version=17, do_constant_folding=True)
    graph = onnx.load_from_string(buf.getvalue())
    graph.doc_string = f"pytorchcv {name}, random weights, 1x3x{size[0]}x{size[1]}"
    tmp = path.with_suffix(".tmp")
    onnx.save(graph, str(tmp))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    import onnx

    from latency_models.ops import onnx_ops

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measured", default=str(MEASURED), help="the measurement CSV "
                        "(its model column names the networks)")
    parser.add_argument("--onnx-dir", default=".cache/edgenas/cnn_zoo",
                        help="where the ONNX exports go (kept: a second run reuses them)")
    parser.add_argument("--out", default=str(MEASURED.with_name("ops.csv.gz")))
    args = parser.parse_args(argv)
    try:
        import pytorchcv  # noqa: F401
    except ImportError:
        print("error: this script builds the networks with pytorchcv: pip install pytorchcv",
              file=sys.stderr)
        return 2
    names = [row["model"] for row in csv.DictReader(open(args.measured, newline=""))]
    out_dir = Path(args.onnx_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(names):
        graph = onnx.load(str(export(name, out_dir)))
        for precision in (32, 8):
            for op in onnx_ops(graph, precision=None if precision == 32 else 8):
                rows.append([name, precision, op.kind, op.macs, op.elems, op.bits, op.cin,
                             op.cout, op.kernel, op.stride, op.size, op.groups])
        print(f"[{i + 1}/{len(names)}] {name}", flush=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CNN_OPS_COLUMNS)
    writer.writerows(rows)
    with gzip.GzipFile(args.out, "wb", mtime=0) as f:  # byte-identical on every run
        f.write(buf.getvalue().encode())
    print(f"wrote {args.out}: {len(rows)} ops of {len(names)} networks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
