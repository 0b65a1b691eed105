"""Memory as a cost (inference peak, fine-tuning step) and fine-tuning on the device."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latency_models.memory import Schedule, liveness_peak, onnx_schedule, peak_memory_kib
from latency_models.train_memory import train_memory, train_memory_kib
from search.step_memory import measure_step, train_step
from spaces.arch import all_bits
from spaces.build import as_trained, build_model
from spaces.lean import FrozenConv, LeanNet, MaskReLU
from spaces.onnx_io import export_fp32, export_int8
from spaces.schemes import SchemeError, parse_scheme, schemes_by_capability
from spaces.space import RandomChoices, SpaceConfig, sample_arch
from tests.conftest import run_cli, run_here, search_args, start_cli, tiny_arch


def _export(arch, folder: Path, seed: int = 0) -> Path:
    model = as_trained(build_model(arch), seed).eval()
    export_fp32(model, arch, folder / "model.onnx")
    calib = np.random.default_rng(seed).random((8, arch.in_chans, arch.input_size,
                                                arch.input_size), dtype=np.float32)
    export_int8(folder / "model.onnx", arch, folder / "model.int8.onnx", calib)
    return folder


def test_liveness_by_hand():
    # a -> b -> c, and a is read again by the last op (a residual): a lives to the end
    s = Schedule(nodes=[("n1", ("a",), ("b",)), ("n2", ("b",), ("c",)),
                        ("n3", ("c", "a"), ("d",))],
                 elements={"a": 10, "b": 20, "c": 5, "d": 1}, inputs=("a",), outputs=("d",))
    peak, at = liveness_peak(s)
    assert (peak, at) == (4 * (10 + 20 + 5), "n2")
    s.bits = {"b": 8}  # a quantized tensor takes one byte per element
    assert liveness_peak(s)[0] == 4 * 10 + 20 + 4 * 5
    s.alias["d2"], s.elements["d2"] = "d", 1  # a view shares its input's buffer
    s.nodes.append(("n4", ("d2",), ("e",)))
    s.elements["e"] = 1
    assert liveness_peak(s)[0] == 4 * 10 + 20 + 4 * 5


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_peak_memory_agrees_with_the_onnx_walk(tmp_path, seed):
    """The architecture's schedule and the exported graphs' give the same peak, fp32 and
    mixed int8 (quantize/dequantize pairs collapsed)."""
    arch = sample_arch(RandomChoices(seed), SpaceConfig(), bits=(32, 8), in_chans=1,
                       input_size=28, num_classes=10)
    _export(arch, tmp_path, seed)
    fp32 = peak_memory_kib(onnx.load(str(tmp_path / "model.onnx")))
    int8 = peak_memory_kib(onnx.load(str(tmp_path / "model.int8.onnx")))
    assert peak_memory_kib(all_bits(arch, 32)) == pytest.approx(fp32, rel=1e-9)
    assert peak_memory_kib(arch) == pytest.approx(int8, rel=1e-9)
    assert int8 <= fp32  # (the peak may lie in a float layer)
    assert peak_memory_kib(all_bits(arch, 8)) < fp32


def test_onnx_walk_leaves_out_weights(tmp_path):
    arch = tiny_arch()
    _export(arch, tmp_path)
    s = onnx_schedule(onnx.load(str(tmp_path / "model.onnx")))
    assert s.inputs == ("image",) and s.outputs == ("logits",)
    assert all(not name.startswith("net.") for name in s.elements)  # no initializers


@pytest.mark.parametrize("act", ["relu", "hswish"])
def test_train_memory_matches_a_measured_step(act):
    """The prediction against glibc's count of one real step, every scheme."""
    arch = tiny_arch(act=act)
    lean = LeanNet(as_trained(build_model(arch)).eval(), arch)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 4, (16,))
    for scheme in ("head", "bias", "last:1", "all"):
        opt = torch.optim.SGD(lean.set_scheme(parse_scheme(scheme)), lr=0.01, momentum=0.9)
        train_step(lean, opt, x, y)
        measured = measure_step(lean, opt, x, y)
        predicted = train_memory_kib(arch, scheme, 16)
        assert predicted == pytest.approx(measured, rel=0.1), scheme
    # bias-only keeps far less than a full step; the head alone less still
    kib = {s: train_memory_kib(arch, s, 16) for s in ("head", "bias", "all")}
    assert kib["head"] < kib["bias"] < kib["all"]


def test_train_memory_parts_add_up():
    m = train_memory(tiny_arch(), "all", 8)
    assert m.total_kib == pytest.approx(m.weights_kib + m.optimizer_kib + m.activations_kib
                                        + m.input_kib)
    assert m.trainable_params == pytest.approx(m.weights_kib * 1024 / 4)
    assert train_memory(tiny_arch(), "head", 8).trainable_params == 32 * 4 + 4


def test_lean_autograd_functions_are_exact():
    x = torch.randn(2, 3, 5, 5, dtype=torch.double, requires_grad=True)
    w = torch.randn(6, 3, 3, 3, dtype=torch.double)
    b = torch.randn(6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: FrozenConv.apply(x, w, b, (2, 2), (1, 1), 1),
                                    (x, b))
    wd = torch.randn(3, 1, 3, 3, dtype=torch.double)
    b3 = torch.randn(3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: FrozenConv.apply(x, wd, b, (1, 1), (1, 1), 3),
                                    (x, b3))
    assert torch.autograd.gradcheck(MaskReLU.apply, (x + 0.05,))


def test_lean_net_computes_the_model_and_writes_it_back():
    arch = tiny_arch(bits=8, prune=0.5)
    model = as_trained(build_model(arch), 3).eval()
    lean = LeanNet(model, arch).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(lean(x), model(x), atol=1e-5)
        assert torch.allclose(lean.to_edgenet()(x), model(x), atol=1e-5)
    assert len(lean.set_scheme(parse_scheme("head"))) == 2
    trainable = lean.set_scheme(parse_scheme("bias"))
    assert all(p.dim() == 1 or p is lean.classifier.weight for p in trainable)
    assert sum(p.numel() for p in lean.set_scheme(parse_scheme("all"))) == \
        sum(p.numel() for p in lean.parameters())


def test_schemes():
    assert str(parse_scheme("last:2")) == "last:2" and parse_scheme("bias").kind == "bias"
    for bad in ("last:0", "last:x", "everything", "last:9"):
        with pytest.raises(SchemeError, match="update="):
            parse_scheme(bad, n_blocks=3)
    assert [str(s) for s in schemes_by_capability(3)] == ["all", "last:2", "last:1", "bias",
                                                          "head"]


# ---- python -m search.finetune -------------------------------------------------------------
def _make_export(folder: Path, arch=None, classes=("0", "1", "2", "3")) -> Path:
    arch = arch or tiny_arch(bits=8)
    folder.mkdir(parents=True)
    _export(arch, folder)
    model = as_trained(build_model(arch)).eval()
    export_fp32(model, arch, folder / "model.onnx")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "weights.safetensors"))
    (folder / "arch.json").write_text(arch.to_json())
    (folder / "metrics.json").write_text(json.dumps({"trial": 0, "arch_id": arch.arch_id,
                                                     "classes": list(classes)}))
    return folder


def _make_images(folder: Path, classes=("0", "1", "2", "3"), n: int = 12, size: int = 28):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            a = (rng.random((size, size)) * 60 + 50 * c).astype(np.uint8)
            Image.fromarray(a).save(folder / name / f"{i}.png")
    return folder


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_finetune_writes_an_export_and_leaves_the_original(tmp_path):
    export = _make_export(tmp_path / "export")
    images = _make_images(tmp_path / "images")
    before = _digest(export)
    out = tmp_path / "tuned"
    # in a fresh interpreter: nothing of Optuna, Hydra or a database is imported
    script = ("import sys; from search.finetune import main; "
              f"main(['model={export}', 'data=imagefolder', 'data.root={images}', "
              f"'update=bias', 'epochs=2', 'out={out}', 'finetune.batch=8']); "
              "bad = [m for m in ('optuna', 'hydra', 'omegaconf', 'sqlalchemy') "
              "if m in sys.modules]; assert not bad, bad")
    result = run_cli("-c", script)
    assert result.returncode == 0, result.stderr
    assert _digest(export) == before
    for name in ("model.onnx", "model.int8.onnx", "weights.safetensors", "arch.json",
                 "metrics.json", "card.md"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    ft = m["finetuning"]
    assert ft["update"] == "bias" and ft["epochs"] == 2 and len(ft["seconds_per_epoch"]) == 2
    assert ft["measured_peak_kib"] == pytest.approx(ft["predicted_train_memory_kib"], rel=0.15)
    assert set(m["test_accuracy"]["before"]) == {"model.onnx", "model.int8.onnx"}
    assert m["classes"] == ["0", "1", "2", "3"]
    assert m["peak_memory_kib"]["model.int8.onnx"] > 0 and m["train_memory_kib"]["bias"] > 0
    # the new folder is itself an export that fine-tunes again
    again = run_here("-m", "search.finetune", f"model={out}", f"data.root={images}",
                     "update=head", "epochs=1", f"out={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr
    assert "## Memory" in (out / "card.md").read_text()


def test_finetune_new_head_and_auto(tmp_path):
    export = _make_export(tmp_path / "export")
    images = _make_images(tmp_path / "images", classes=("cat", "dog"))
    budget = train_memory_kib(tiny_arch(bits=8), "bias", 8) + 1
    result = run_here("-m", "search.finetune", f"model={export}", f"data.root={images}",
                      "head=new", "update=auto", f"budget.train_memory_kib={budget}",
                      "finetune.batch=8", "epochs=1", f"out={tmp_path / 'tuned'}")
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert m["classes"] == ["cat", "dog"] and m["finetuning"]["head"] == "new"
    # the most capable scheme within the budget, for the two-class model
    from dataclasses import replace

    two = replace(tiny_arch(bits=8), num_classes=2)
    fits = [str(s) for s in schemes_by_capability(3) if train_memory_kib(two, s, 8) <= budget]
    assert m["finetuning"]["update"] == fits[0] and "all" not in fits
    assert m["test_accuracy"]["before"] is None
    assert json.loads((tmp_path / "tuned" / "arch.json").read_text())["num_classes"] == 2


def _clean_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_finetune_bad_inputs(tmp_path):
    export = _make_export(tmp_path / "export")
    images = _make_images(tmp_path / "images")
    args = ["-m", "search.finetune", f"model={export}", f"data.root={images}", "epochs=1"]
    strange = _make_images(tmp_path / "strange", classes=("0", "zebra"))
    _clean_error(run_here("-m", "search.finetune", f"model={export}", f"data.root={strange}",
                          f"out={tmp_path / 'o1'}"), "zebra", "head=new")
    (tmp_path / "exists").mkdir()
    _clean_error(run_here(*args, f"out={tmp_path / 'exists'}"), "exists")
    _clean_error(run_here(*args, "update=auto", "budget.train_memory_kib=10",
                          f"out={tmp_path / 'o2'}"), "smallest reachable", "update=head")
    _clean_error(run_here(*args, "update=sideways", f"out={tmp_path / 'o3'}"), "sideways")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.onnx").write_bytes((export / "model.onnx").read_bytes())
    _clean_error(run_here("-m", "search.finetune", f"model={bare}", f"data.root={images}",
                          f"out={tmp_path / 'o4'}"), "weights.safetensors")
    other = _make_export(tmp_path / "other", arch=tiny_arch(bits=8, prune=0.5))
    (other / "arch.json").write_text(tiny_arch().to_json())  # files of two models
    _clean_error(run_here("-m", "search.finetune", f"model={other}", f"data.root={images}",
                          f"out={tmp_path / 'o5'}"), "does not match")
    data = json.loads((export / "arch.json").read_text())
    data["version"] = 99
    (other / "arch.json").write_text(json.dumps(data))
    _clean_error(run_here("-m", "search.finetune", f"model={other}", f"data.root={images}",
                          f"out={tmp_path / 'o6'}"), "another version")
    (images / "1" / "broken.png").write_text("not an image")
    _clean_error(run_here(*args, f"out={tmp_path / 'o7'}"), "broken.png")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 8))


def test_finetune_killed_leaves_nothing(tmp_path):
    export = _make_export(tmp_path / "export")
    images = _make_images(tmp_path / "images", n=40)
    before = _digest(export)
    out = tmp_path / "tuned"
    proc = start_cli(["-m", "search.finetune", f"model={export}", f"data.root={images}",
                      "epochs=100000", f"out={out}"], capture=True)
    deadline = time.time() + 120
    line = ""
    while "epoch 1/" not in line and time.time() < deadline:
        line = proc.stderr.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert "epoch 1/" in line
    assert not out.exists() and _digest(export) == before


def test_search_with_memory_objectives_and_budget(tmp_path):
    budget = 900
    result = run_here(*search_args(tmp_path, "search.n_trials=6",
                                   "search.objectives=[accuracy,latency_ms,peak_memory_kib]",
                                   f"budget.train_memory_kib={budget}", "finetune.batch=4"))
    assert result.returncode == 0, result.stderr
    assert "peak KiB" in result.stdout and "train KiB" in result.stdout
    # the printed next command keeps the list (rich once read it as markup and dropped it)
    assert "'search.objectives=[accuracy,latency_ms,peak_memory_kib]'" in result.stdout
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/study.db")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 6 and len(trials[0].values) == 3
    assert {t.user_attrs["train_memory_kib"] > budget for t in trials} == {True, False}
    for t in trials:
        over = t.user_attrs["train_memory_kib"] > budget
        assert over == ("skipped" in t.user_attrs and "train_memory_kib" in
                        t.user_attrs["skipped"]), t.user_attrs
        assert t.values[2] == t.user_attrs["peak_memory_kib"] > 0
    # the budget prices a fine-tuning step: another batch would make the trials incomparable
    again = run_here(*search_args(tmp_path, "search.n_trials=7",
                                  "search.objectives=[accuracy,latency_ms,peak_memory_kib]",
                                  f"budget.train_memory_kib={budget}", "finetune.batch=8"))
    assert again.returncode == 2 and "train_memory: study has 'update=bias batch=4'" in \
        again.stderr, again.stderr


def test_predict_reports_memory(tmp_path):
    arch = tiny_arch(bits=8)
    (tmp_path / "arch.json").write_text(arch.to_json())
    result = run_here("-m", "latency_models.predict", "+device=rpi4",
                      f"model={tmp_path / 'arch.json'}", "format=jsonl", "finetune.batch=8")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[0])
    assert row["peak_memory_kib"] == pytest.approx(peak_memory_kib(arch), abs=1e-3)
    assert row["train_memory_kib"] == pytest.approx(train_memory_kib(arch, "bias", 8), abs=0.1)
