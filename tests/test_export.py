"""search.export on a tiny study: every file, the metrics, and the ONNX models run."""

import json

import numpy as np
import onnx

from spaces.arch import Arch
from spaces.onnx_io import ort_session
from tests.conftest import run_cli, run_here, search_args


def test_export_writes_runnable_models_and_metrics(tmp_path):
    common = ["proxy.train_images=256", "proxy.val_images=64", "proxy.epochs=1",
              "proxy.teacher.epochs=1", "search.n_trials=2", "proxy=distill",
              "proxy.calibration_archs=2"]
    assert run_here(*search_args(tmp_path, *common)).returncode == 0
    out = tmp_path / "export"
    args = search_args(tmp_path, *common, "select=best", f"out={out}", "export.epochs=1",
                       "export.calibration_images=32", "export.latency_runs=10")
    args[1] = "search.export"
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    folders = list(out.glob("trial_*"))
    assert len(folders) == 1
    folder = folders[0]
    for name in ("model.onnx", "model.int8.onnx", "weights.safetensors", "arch.json",
                 "arch_def.json", "metrics.json", "card.md"):
        assert (folder / name).is_file(), name
    assert not list(out.glob(".trial_*")), "temporary folder left behind"
    arch = Arch.from_json((folder / "arch.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["onnx_fp32_max_abs_diff"] < 1e-4
    assert metrics["predicted"]["onnx_ops_match_arch"] is True
    for name in ("model.onnx", "model.int8.onnx"):
        assert 0 <= metrics["test_accuracy"][name] <= 1
        assert metrics["measured_here"][name]["median_ms"] > 0
        assert metrics["predicted"][name]["latency_ms"] > 0
        onnx.checker.check_model(onnx.load(str(folder / name)))
        x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
        assert ort_session(folder / name).run(None, {"image": x})[0].shape == (2, 4)
    assert metrics["params"] == arch.params()
    # memory: each file walked, each update scheme priced at finetune.batch
    from latency_models.memory import peak_memory_kib

    assert metrics["peak_memory_kib"]["model.int8.onnx"] == round(peak_memory_kib(arch), 3)
    assert metrics["train_memory_kib"]["batch"] == 32
    assert metrics["train_memory_kib"]["head"] < metrics["train_memory_kib"]["all"]
    assert "## Memory" in (folder / "card.md").read_text()
    card = (folder / "card.md").read_text()
    assert "Energy is modelled" in card and "test accuracy" in card.lower()
    # the default score, said in words
    assert "ranked it by its fidelity+naswot" in card and "0 = an average architecture" in card


def test_export_without_a_study_says_what_to_run(tmp_path):
    args = search_args(tmp_path, f"out={tmp_path}/export")
    args[1] = "search.export"
    result = run_here(*args)
    assert result.returncode != 0
    assert "no study" in result.stderr and "python -m search" in result.stderr
    assert "Traceback" not in result.stderr
