"""The benchmark scripts' own rules (they are not run by the suite: they train for hours)."""

import dataclasses
import math
import sys
from pathlib import Path

import pytest

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
