"""search.report: baselines built and exported like found models, scored the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from latency_models.devices import MODEL_DIR
from latency_models.model import DeviceModel
from latency_models.ops import onnx_ops
from search.config import BASELINES
from search.pareto import front_2d, hypervolume
from search.report import beaten_words, dominance, summary
from spaces.onnx_io import export_module, ort_session, quantize_qdq
from tests.conftest import run_cli, run_here, search_args


def model(name, kind, acc, host, device=None):
    """A scored model as search.report holds it (same figures for fp32 and int8)."""
    device = host if device is None else device
    return {"name": name, "kind": kind, "accuracy": {"fp32": acc, "int8": acc - 0.01},
            "host_ms": {"fp32": host, "int8": host}, "device_ms": {"fp32": device,
                                                                  "int8": device}}


def test_dominance_finds_the_best_gain_and_speedup_against_each_baseline():
    models = [model("a", "found", 0.90, 1.0), model("b", "found", 0.86, 0.3),
              model("base", "baseline", 0.88, 1.2), model("fast", "baseline", 0.80, 0.1)]
    rows = {(r["baseline"], r["precision"], r["latency"]): r for r in dominance(models)}
    assert len(rows) == 2 * 2 * 2
    r = rows[("base", "fp32", "host_ms")]
    assert r["gain_points"] == pytest.approx(2.0) and r["gain_by"] == "a"  # 0.90 vs 0.88
    assert r["speedup"] == pytest.approx(1.2) and r["speedup_by"] == "a"  # b is less accurate
    assert r["met"]  # 2 points at no more latency
    r = rows[("fast", "int8", "device_ms")]
    assert r["gain_points"] is None  # no found model is as fast as 0.1 ms
    assert r["speedup"] == pytest.approx(0.1 / 0.3) and not r["met"]


def test_speedup_alone_can_meet_the_target():
    rows = dominance([model("a", "found", 0.88, 0.5), model("base", "baseline", 0.88, 0.8)])
    assert all(r["gain_points"] == 0.0 and r["speedup"] == pytest.approx(1.6) and r["met"]
               for r in rows)
    rows = dominance([model("a", "found", 0.88, 0.6), model("base", "baseline", 0.88, 0.8)])
    assert not any(r["met"] for r in rows)  # 1.33 times and 0 points: short of both targets


def test_a_baseline_at_chance_accuracy_is_named_when_counted_as_beaten():
    models = [model("a", "found", 0.88, 0.5), model("dead", "baseline", 0.11, 0.8),
              model("base", "baseline", 0.90, 0.8)]
    rows = dominance(models, chance=0.1)
    assert all(r["at_chance"] == (r["baseline"] == "dead") for r in rows)
    s = summary(rows)["fp32/host_ms"]
    assert (s["met"], s["of"], s["met_at_chance"]) == (1, 2, ["dead"])
    assert beaten_words(s) == ("1 of 2 (dead at chance accuracy: did not train with the "
                               "recipe)")
    assert beaten_words(summary(dominance(models[::2]))["int8/device_ms"]) == "0 of 1"


def test_front_and_hypervolume():
    pts = [(90.0, 1.0, "a"), (85.0, 0.5, "b"), (80.0, 0.7, "c"), (89.0, 2.0, "d")]
    assert [p[2] for p in front_2d(pts)] == ["b", "a"]
    # (accuracy, latency) points, reference latency 2: steps 0.85 x 1.5 + 0.05 x 1.0
    assert hypervolume([(0.85, 0.5), (0.90, 1.0), (0.80, 0.7)], 2.0) == pytest.approx(1.325)
    assert hypervolume([(0.9, 3.0)], 2.0) == 0.0  # beyond the reference adds nothing
    assert hypervolume([], 2.0) == 0.0
    # scores that go below 0 (fidelity+naswot's standardized sum) from a lower reference:
    # the same area as the points shifted up by 3 from score 0
    shifted = [(-2.15, 0.5), (-2.1, 1.0), (-3.5, 0.7)]
    assert hypervolume(shifted, 2.0, -3.0) == pytest.approx(1.325)
    assert hypervolume(shifted, 2.0) == 0.0  # every point below score 0


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "mobilenetv2_035",
                                  "squeezenet1_1"])
def test_baselines_export_and_the_device_model_prices_their_graphs(name, tmp_path):
    from search.baselines import build_baseline

    net = build_baseline(name, in_chans=1, num_classes=10).eval()
    x = torch.rand(2, 1, 28, 28)
    assert net(x).shape == (2, 10)
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    export_module(net, (1, 28, 28), fp32, doc=name)
    with torch.no_grad():
        ref = net(x).numpy()
    got = ort_session(fp32).run(None, {"image": x.numpy()})[0]
    assert np.abs(ref - got).max() < 1e-4
    quantize_qdq(fp32, int8, np.random.default_rng(0).random((8, 1, 28, 28), np.float32))
    device = DeviceModel.load(MODEL_DIR / "rpi4.json")
    ops32, ops8 = onnx_ops(onnx.load(str(fp32))), onnx_ops(onnx.load(str(int8)))
    assert any(op.bits == 8 for op in ops8) and not any(op.bits == 8 for op in ops32)
    assert device.price(ops32).latency_ms > 0 and device.price(ops8).latency_ms > 0


def test_every_baseline_builds_and_keeps_the_first_stride_at_one():
    from search.baselines import build_baseline

    for name in BASELINES:
        net = build_baseline(name, in_chans=1, num_classes=10)
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert first.stride == (1, 1) and first.in_channels == 1, name


def test_fake_quantize_rounds_any_models_weights_to_8_bits():
    from spaces.quant import detach_fake_quant, fake_quantize

    conv = torch.nn.Conv2d(3, 4, 3)
    fake_quantize(torch.nn.Sequential(conv), 8)
    w = conv.weight.detach()  # the parametrized (quantized) weight
    per_channel = [torch.unique(w[c]).numel() for c in range(4)]
    assert max(per_channel) <= 255
    scale = w.abs().flatten(1).amax(1) / 127
    assert torch.allclose(w / scale.view(-1, 1, 1, 1), torch.round(w / scale.view(-1, 1, 1, 1)),
                          atol=1e-4)
    detach_fake_quant(conv)
    assert not hasattr(conv, "act_fake_quant")


def test_report_end_to_end_and_resume(tmp_path, monkeypatch):
    common = ["search.n_trials=3"]
    assert run_here(*search_args(tmp_path, *common)).returncode == 0
    out = tmp_path / "report"
    args = ["-m", "search.report"] + search_args(tmp_path, *common)[2:] + [
        f"out={out}", "export.epochs=1", "export.calibration_images=16",
        "report.baselines=[lcnet_035]", "report.latency_rounds=1"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "training baseline lcnet_035" in first.stdout and "exporting trial" in first.stdout
    report = json.loads((out / "report.json").read_text())
    kinds = [m["kind"] for m in report["models"]]
    assert kinds.count("baseline") == 1 and kinds.count("found") >= 1
    for m in report["models"]:
        for precision in ("fp32", "int8"):
            assert 0 <= m["accuracy"][precision] <= 1
            assert m["host_ms"][precision] > 0 and m["device_ms"][precision] > 0
            assert m["device_energy_mj"][precision] > 0
            onnx.checker.check_model(onnx.load(m["files"][precision]))
        assert m["params"] > 0 and m["macs"] > 0
    assert len(report["dominance"]) == 1 * 2 * 2
    assert report["context"]["device"] == "rpi4"
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (out / "report.html").read_text()[:200000].lower()
    table = (out / "report.md").read_text()
    assert "| lcnet_035 | baseline |" in table and "## Dominance" in table
    # rpi4 has no 8-bit measurements: its int8 latencies are said to be transferred
    assert "`rpi4` int8 latency is transferred for" in table

    again = run_here(*args)  # resumes: nothing is trained again, the report is rewritten
    assert again.returncode == 0, again.stderr
    assert "training baseline" not in again.stdout and "exporting trial" not in again.stdout

    # An export folder of another architecture under the same trial number (the study was
    # deleted and run again) is exported again.
    found = next(m for m in report["models"] if m["kind"] == "found")
    metrics_file = Path(found["files"]["fp32"]).parent / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "arch_id": "0123456789abcdef"}))
    third = run_here(*args)
    assert third.returncode == 0, third.stderr
    assert third.stdout.count("exporting trial") == 1 and "training baseline" not in third.stdout
    assert json.loads(metrics_file.read_text())["arch_id"] == metrics["arch_id"]

    # The teacher's cache deleted and made again with the same result (here: put back when the
    # teacher is asked for; a real retraining matches only where training is bit-reproducible):
    # the models trained with the old one still fit the recipe and are not trained again.
    from search.teacher import TeacherCache

    cache = tmp_path / "cache" / "teacher"
    shutil.copytree(cache, tmp_path / "teacher-copy")
    shutil.rmtree(cache)
    train = TeacherCache._load_or_train

    def made_again(self):
        if not cache.exists():
            shutil.copytree(tmp_path / "teacher-copy", cache)
        return train(self)

    monkeypatch.setattr(TeacherCache, "_load_or_train", made_again)
    fourth = run_here(*args)
    assert fourth.returncode == 0, fourth.stderr
    assert "training baseline" not in fourth.stdout and "exporting trial" not in fourth.stdout


def test_report_says_what_to_run_first(tmp_path):
    """Without +device the report is for rpi4 (`python -m search.report out=DIR`)."""
    args = ["-m", "search.report"] + [a for a in search_args(tmp_path)[2:]
                                      if not a.startswith("+device=")]
    result = run_here(*args, f"out={tmp_path}/r", "report.baselines=[]")
    assert result.returncode == 2
    assert "no exported models" in result.stderr
    assert "python -m search +device=rpi4" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_plot_labels_minor_log_ticks_at_2_3_and_5_only():
    from search.report_plots import minor_log_label

    assert [minor_log_label(v, 0) for v in (0.02, 0.03, 0.04, 0.5, 0.7, 2.0, 3.0, 9.0)] == [
        "0.02", "0.03", "", "0.5", "", "2", "3", ""]


def test_a_baselines_own_recipe_changes_reach_its_training_and_its_fingerprint_only():
    from torch import nn

    from search.baselines import RECIPE_CHANGES, baseline_fingerprint, baseline_recipe
    from search.train import Recipe, Trainer

    base = Recipe(epochs=1, batch=8)
    assert baseline_recipe("squeezenet1_1", base).clip_grad == RECIPE_CHANGES[
        "squeezenet1_1"]["clip_grad"]
    assert baseline_recipe("lcnet_050", base) == base
    assert baseline_fingerprint("abc", "lcnet_050") == "abc"
    changed = baseline_fingerprint("abc", "squeezenet1_1")
    assert changed not in ("abc", baseline_fingerprint("abd", "squeezenet1_1"))
    # clipping: the step a large gradient takes is bounded by the clip (Nesterov's first step
    # is 1.9 gradients)
    x = torch.full((8, 1, 2, 2), 255, dtype=torch.uint8)
    y = torch.zeros(8, dtype=torch.long)
    for clip, bounded in ((None, False), (0.01, True)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        with torch.no_grad():
            model[1].weight.fill_(-1e3)
        before = model[1].weight.detach().clone()
        Trainer(model, x, y, None, Recipe(epochs=1, batch=8, lr=1.0, weight_decay=0,
                                              clip_grad=clip)).run(1)
        moved = float((model[1].weight.detach() - before).norm())
        assert (moved <= 1.9 * 0.01 + 1e-6) == bounded, (clip, moved)
