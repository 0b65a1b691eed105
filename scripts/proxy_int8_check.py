"""Does the proxy's fake quantization predict the int8 ONNX model's accuracy?

    python scripts/proxy_int8_check.py            # 8 architectures, all layers at 8 bits
    python scripts/proxy_int8_check.py --n 4

For 8-bit trials the proxy trains the candidate with fake quantization and scores it in torch;
the user deploys ``model.int8.onnx`` (onnxruntime static QDQ, 8-bit weights per channel, uint8
activations calibrated on training images). For ``--n`` architectures of
``scripts/results/proxy/archs.json`` (spread over the latency range), every layer set to 8 bits,
this trains each with the default proxy, exports it exactly as ``search.export`` does and
scores both on the same validation images. Target: within 0.5 points. Writes
``scripts/results/proxy/int8_check.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
RESULTS = ROOT / "scripts" / "results" / "proxy"
FIELDS = ["arch_id", "proxy_accuracy", "onnx_int8_accuracy", "diff_points", "int8_nodes",
          "val_images"]


def all_8bit(arch):
    stages = tuple(dataclasses.replace(s, bits=tuple(8 for _ in s.bits)) for s in arch.stages)
    return dataclasses.replace(arch, stem_bits=8, head_bits=8, classifier_bits=8,
                               stages=stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()

    import torch
    from proxy_benchmark import load_archs, load_cfg, load_dataset_and_teacher, spread

    from search.data import to_float
    from search.export import onnx_accuracy
    from search.proxy import prepare_proxy_data, proxy_recipe, train_candidate
    from search.train import accuracy, predict_logits
    from spaces.arch import Arch
    from spaces.onnx_io import export_fp32, export_int8
    from spaces.quant import detach_fake_quant

    cfg = load_cfg()
    torch.set_num_threads(cfg.search.thread_count())
    data = prepare_proxy_data(cfg, *load_dataset_and_teacher(cfg))
    recipe = proxy_recipe(cfg.proxy)
    calib = to_float(data.train_x[:cfg.export.calibration_images]).numpy()
    rows = []
    for entry in spread(load_archs(), args.n):
        arch = all_8bit(Arch.from_json(json.dumps(entry["arch"])))
        # the same training as distilled_proxy, keeping the model
        model = train_candidate(arch, data.train_x, data.train_y, data.train_teacher, recipe,
                                seed=cfg.seed)
        proxy_acc = accuracy(predict_logits(model, data.val_x), data.val_y)
        detach_fake_quant(model).eval()
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
            export_fp32(model, arch, fp32)
            nodes = export_int8(fp32, arch, int8, calib)
            onnx_acc = onnx_accuracy(int8, data.val_x, data.val_y)
        row = {"arch_id": arch.arch_id, "proxy_accuracy": round(proxy_acc, 4),
               "onnx_int8_accuracy": round(onnx_acc, 4),
               "diff_points": round(100 * (onnx_acc - proxy_acc), 2),
               "int8_nodes": len(nodes), "val_images": len(data.val_y)}
        rows.append(row)
        print(row, flush=True)
    with open(RESULTS / "int8_check.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    diffs = sorted(abs(r["diff_points"]) for r in rows)
    within = sum(d <= 0.5 for d in diffs)
    print(f"\n{len(rows)} all-8-bit architectures: |int8 ONNX - proxy| median "
          f"{diffs[len(diffs) // 2]:.2f} points, max {diffs[-1]:.2f}; {within}/{len(rows)} "
          "within 0.5 points")


if __name__ == "__main__":
    main()
