"""The benchmark scripts' own rules (they are not run by the suite: they train for hours)."""

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.test_config import make

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


def test_the_proxy_benchmark_reuses_only_sweep_trainings_made_with_the_default_settings():
    from proxy_benchmark import sweep_budget
    from proxy_budget_sweep import BUDGETS

    proxy = make("+device=rpi4").proxy
    name = sweep_budget(proxy)
    assert name is not None and BUDGETS[name].prune_at == 0.5 and BUDGETS[name].seed == 0
    assert (BUDGETS[name].images, BUDGETS[name].epochs, BUDGETS[name].batch,
            BUDGETS[name].lr) == (proxy.train_images, proxy.epochs, proxy.batch, proxy.lr)
    # any other training (batch, step size, teacher weight, images) is not the default's
    for change in ({"batch": proxy.batch // 2}, {"lr": proxy.lr * 2}, {"alpha": 0.0},
                   {"train_images": proxy.train_images * 2}, {"val_images": 2000}):
        other = sweep_budget(dataclasses.replace(proxy, **change))
        assert other != name, change


def test_sweep_rows_score_the_way_the_search_does():
    from proxy_budget_sweep import score_value

    row = {"accuracy": "0.8", "kl": "0.1"}
    assert score_value(row, "accuracy") == 0.8
    assert score_value(row, "fidelity") == pytest.approx(math.exp(-0.1))


def test_the_outcome_benchmark_compares_each_sampler_with_random_search_seed_by_seed():
    from outcome_benchmark import compare_samplers

    volumes = {("random", 0): 2.0, ("random", 1): 3.0, ("random", 2): 2.5,
               ("nsga2", 0): 2.6, ("nsga2", 1): 2.4, ("nsga2", 2): 2.7,
               ("tpe", 0): 1.0, ("tpe", 1): 3.5, ("tpe", 2): 2.5}
    got = compare_samplers(volumes, ["nsga2", "tpe"], seeds=3)
    assert got["random_median"] == 2.5
    assert got["samplers"]["nsga2"] == {"median": 2.6, "above_random_median": 2, "of": 3,
                                        "pairs_above_random_same_seed": 2}
    # a tie with random's median is not above it
    assert got["samplers"]["tpe"] == {"median": 2.5, "above_random_median": 1, "of": 3,
                                      "pairs_above_random_same_seed": 1}


def test_the_outcome_benchmark_writes_the_hypervolume_comparison(tmp_path):
    import json
    from types import SimpleNamespace

    import optuna
    from outcome_benchmark import run_hypervolume

    storage = f"sqlite:///{tmp_path}/s.db"
    points = {"nsga2": [(0.9, 1.0), (0.8, 0.5)], "random": [(0.85, 1.0), (0.7, 2.0)]}
    for seed in range(2):
        for sampler, pts in points.items():
            study = optuna.create_study(study_name=f"x-{sampler}-s{seed}", storage=storage,
                                        directions=["maximize", "minimize"])
            for acc, lat in pts:
                study.add_trial(optuna.trial.create_trial(
                    values=[acc + seed / 100, lat], user_attrs={"proxy_score_name": "fidelity"}))
            # an over-budget trial does not count
            study.add_trial(optuna.trial.create_trial(values=[0.99, 0.1],
                                                      user_attrs={"skipped": "over budget"}))
    args = SimpleNamespace(seeds=2, trials=2, device="rpi4")
    run_hypervolume(args, ["nsga2"], storage, "x-nsga2-s0", lambda s, seed: f"x-{s}-s{seed}",
                    {"search random seed 1": 12.4}, tmp_path)
    hv = json.loads((tmp_path / "hypervolume.json").read_text())
    assert hv["reference"]["latency_ms"] == 2.0 and hv["proxy_score"] == ["fidelity"]
    # nsga2: 0.9 over [1, 2] plus 0.8 over [0.5, 1]; random: 0.85 over [1, 2]
    assert hv["studies"]["nsga2-s0"]["hypervolume"] == pytest.approx(0.9 + 0.4)
    assert hv["studies"]["random-s0"]["hypervolume"] == pytest.approx(0.85)
    assert hv["studies"]["random-s1"]["hypervolume"] == pytest.approx(0.86)
    assert (hv["studies"]["random-s1"]["trials"], hv["studies"]["random-s1"]["seconds"]) == (2, 12)
    assert hv["samplers"]["nsga2"]["above_random_median"] == 2
    # normalized: scores 0.7..0.91 and latencies over 2.0 ms, so nsga2-s0's points scale to
    # (score 0.1 / 0.21, latency 0.25) and (0.2 / 0.21, 0.5)
    step = 0.1 / 0.21
    assert hv["studies"]["nsga2-s0"]["normalized_hypervolume"] == pytest.approx(
        step * 0.75 + step * 0.5, abs=1e-5)
    assert hv["normalized"]["samplers"]["nsga2"]["of"] == 2
    assert hv["nsga2_above_random_median"] == 2 and hv["of"] == 2


def test_the_search_quality_benchmark_compares_trained_fronts_at_equal_time(tmp_path):
    import json
    from types import SimpleNamespace

    from supernet_search_benchmark import ARMS, add_training, read_trainings, report, study_name

    def member(arch_id, latency):
        return {"arch_id": arch_id, "latency_ms": latency, "fidelity": "supernet"}

    assert ARMS["default"] == [] and "proxy=distill" in ARMS["distill"]
    # test accuracy of each trained architecture; the default's fronts dominate the others
    acc = {"a": 0.90, "b": 0.86, "c": 0.84, "d": 0.80, "e": 0.88}
    fronts = {0: {"default": [member("a", 2.0), member("b", 1.0)],
                  "distill": [member("e", 2.0), member("d", 1.0)],
                  "supernet": [member("e", 2.0), member("d", 1.0)],
                  "random": [member("c", 1.5)]},
              1: {"default": [member("a", 2.0), member("c", 0.5)],
                  "distill": [member("a", 2.0)], "supernet": [member("a", 2.0)],
                  "random": [member("b", 2.0), member("d", 1.0)]}}
    front = {study_name("rpi4", arm, seed): fronts[seed][arm] for seed in fronts
             for arm in ARMS}
    searches = {name: {"trials": 10, "front": front[name]} for name in front}
    args = SimpleNamespace(seeds=2, device="rpi4", minutes=1.0, out=str(tmp_path))
    report(args, searches, front, acc, {"recipe": {"epochs": 4}, "fingerprint": "f"})
    out = json.loads((tmp_path / "search.json").read_text())
    assert out["targets"] == {"default_above_distill_same_seed": 2,
                              "default_above_random_same_seed": 2, "of": 2}
    s0 = out["studies"][study_name("rpi4", "default", 0)]
    assert s0["front"] == 2 and s0["front_test_accuracy"] == [0.86, 0.9]
    # one reference for all: accuracy 0.80..0.90 and latency up to 2.0 ms, both scaled; b
    # scales to (0.6, 0.5) and covers 0.6 x (1 - 0.5); a, at the slowest latency, adds nothing
    assert s0["hypervolume"] == pytest.approx(0.3, abs=1e-4)
    assert "| default | 0 | 10 | 2 |" in (tmp_path / "search.md").read_text()
    # measured trainings are kept per recipe, one row per architecture
    path = tmp_path / "trainings.csv"
    for arch_id, value in (("a", 0.5), ("b", 0.6), ("a", 0.7)):
        add_training(path, {"arch_id": arch_id, "fingerprint": "f", "test_accuracy": value,
                            "seconds": 1.0, "device": "cpu"})
    add_training(path, {"arch_id": "a", "fingerprint": "g", "test_accuracy": 0.1,
                        "seconds": 1.0, "device": "cpu"})
    assert read_trainings(path, "f") == {"a": 0.7, "b": 0.6}
    assert read_trainings(path, "g") == {"a": 0.1}


# Modules the training machine of scripts/report_training.py need not have (a GPU box with
# torch, timm, safetensors, numpy and omegaconf): importing one there fails the test.
NOT_ON_THE_TRAINING_MACHINE = ("optuna", "hydra", "sqlalchemy", "lightgbm", "plotly",
                               "matplotlib", "onnxruntime", "psycopg", "optuna_dashboard")
BLOCKER = f"""import sys

for name in {NOT_ON_THE_TRAINING_MACHINE!r}:
    sys.modules[name] = None  # as if not installed: import fails, find_spec finds nothing
"""


def test_models_trained_on_another_machine_are_exported_as_the_report_would_train_them(
        tmp_path):
    """pack here, train there (no Optuna, Hydra or ONNX Runtime: the blocker is in every
    process, the spawned workers too), unpack here: the report then trains nothing, and the
    weights are those of the report's own training."""
    import json
    import os

    from report_training import pack, seed_spread, unpack
    from safetensors.torch import load_file

    from search.baselines import export_baseline
    from search.data import load_dataset
    from search.errors import UserError
    from search.teacher import TeacherCache
    from tests.conftest import ROOT, run_cli, run_here, search_args

    assert run_here(*search_args(tmp_path)).returncode == 0
    out = tmp_path / "report"
    overrides = search_args(tmp_path)[2:] + [
        f"out={out}", "export.epochs=1", "export.calibration_images=16",
        "report.baselines=[lcnet_035]", "report.latency_rounds=1"]
    folder = tmp_path / "pack"
    pack(folder, overrides, every=False)
    names = [j["name"] for j in json.loads((folder / "jobs.json").read_text())["jobs"]]
    assert "lcnet_035" in names and any(n.startswith("trial_") for n in names)

    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCKER)
    env = {"PYTHONPATH": f"{block}{os.pathsep}{ROOT}"}
    probe = run_cli("-c", "import optuna", env=env)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr
    trained = run_cli(str(ROOT / "scripts" / "report_training.py"), "train", str(folder),
                      "--workers", "2", "--device", "cpu", env=env)
    assert trained.returncode == 0, trained.stderr
    assert all(f"{n} seed 0: " in trained.stdout for n in names), trained.stdout

    with pytest.raises(UserError, match="another recipe"):  # the fingerprint is checked
        unpack(folder, [o for o in overrides if not o.startswith("export.epochs")])
    weights = folder / "trained" / "lcnet_035.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a copy cut short is named
    with pytest.raises(UserError, match="lcnet_035.safetensors does not hold"):
        unpack(folder, overrides)
    weights.write_bytes(good)
    unpack(folder, overrides)
    report = run_here("-m", "search.report", *overrides)
    assert report.returncode == 0, report.stderr
    assert "training baseline" not in report.stdout and "exporting trial" not in report.stdout
    models = json.loads((out / "report.json").read_text())["models"]
    assert sorted(m["name"] for m in models) == sorted(names)
    assert {m["training_device"] for m in models} == {"cpu"}

    # Other seeds (the training's spread) go beside, and seed 0's accuracy is the report's.
    again = run_cli(str(ROOT / "scripts" / "report_training.py"), "train", str(folder),
                    "--device", "cpu", "--seeds", "0,1", "--only", "lcnet_035", env=env)
    assert again.returncode == 0, again.stderr
    assert "1 trainings to run" in again.stdout  # seed 0 is trained already
    spread = seed_spread(folder)["models"]["lcnet_035"]
    assert sorted(spread["seeds"]) == ["0", "1"]
    baseline = next(m for m in models if m["name"] == "lcnet_035")
    assert spread["seeds"]["0"] == pytest.approx(baseline["accuracy"]["fp32"], abs=1e-4)

    # The same weights as the report's own training of that baseline (one thread each).
    cfg = make(*overrides)
    dataset = load_dataset(cfg.data, cfg.seed)
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)
    export_baseline(cfg, "lcnet_035", dataset, teacher, tmp_path / "direct")
    here = load_file(str(tmp_path / "direct" / "lcnet_035" / "weights.safetensors"))
    there = load_file(str(out / "baselines" / "lcnet_035" / "weights.safetensors"))
    assert here.keys() == there.keys()
    assert all(torch.equal(here[k], there[k]) for k in here)


def test_command_txt_says_where_the_reports_models_were_trained(tmp_path, monkeypatch):
    import json

    from outcome_benchmark import trainings_words

    assert trainings_words(tmp_path / "missing.json") == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"models": [
        {"name": "a", "training_device": "cuda: NVIDIA H200", "training_s": 100.0},
        {"name": "b", "training_device": "cuda: NVIDIA H200", "training_s": 300.0},
        {"name": "c", "training_device": "cpu", "training_s": 50.0}]}))
    words = trainings_words(report)
    assert "cuda: NVIDIA H200: 2 models, median 200 s, 400 s summed" in words
    assert "cpu: 1 models, median 50 s, 50 s summed" in words
    assert "cuda: NVIDIA H200: not this machine" in words and "cpu: not" not in words


def test_the_proxy_benchmarks_stored_scores_are_the_default_proxys_and_rate_its_score():
    """The stored `distill` column was trained with today's default proxy (else the benchmark
    would train all 48 again), and the table rates the search's default score from it."""
    import json

    from proxy_benchmark import RESULTS, column_settings, report

    proxy = make("+device=rpi4").proxy
    assert proxy.score == "fidelity+naswot"
    recorded = json.loads((RESULTS / "scores.settings.json").read_text())
    assert column_settings(dataclasses.replace(proxy, score="fidelity")) == recorded["distill"]
    rows = {line.split(" | ")[0].strip("| "): line for line in report().splitlines()
            if line.startswith("| ")}
    assert "default" in rows and "distill" in rows and rows["default"] != rows["distill"]
