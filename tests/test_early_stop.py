"""Early stopping of the distilled proxy and the zero-cost pre-filter."""

import dataclasses
import math
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from optuna.distributions import FloatDistribution

from search.config import Config
from search.objective import early_stopper, prefilter_reason
from search.proxy import ProxyData, distilled_proxy, train_candidate
from search.train import Recipe
from tests.conftest import tiny_arch


def data(n=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = (torch.rand(n, 1, 28, 28, generator=gen) * 60).to(torch.uint8)
    x[torch.arange(n), 0, y * 5, :] = 255  # a learnable class pattern
    return x, y


def proxy_cfg(score="fidelity", **early_stop):
    cfg = Config()
    proxy = dataclasses.replace(cfg.proxy, epochs=2, batch=32, score=score,
                                early_stop=dataclasses.replace(cfg.proxy.early_stop,
                                                               **early_stop))
    return dataclasses.replace(cfg, proxy=proxy)


def finished(number, final, checkpoint, latency, **attrs):
    t = optuna.trial.create_trial(
        values=[final, latency], params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"proxy_checkpoint_score": checkpoint, "latency_ms": latency, **attrs})
    t.number = number
    return t


def test_checkpoint_sees_the_dense_model_at_half_way_and_can_stop_training():
    x, y = data()
    arch = tiny_arch(prune=0.5)
    steps, seen = [], []
    recipe = Recipe(epochs=2, batch=32)

    def look(model):
        seen.append(sum(p.numel() for p in model.parameters()))
        return False

    full = train_candidate(arch, x, y, None, recipe, on_step=steps.append,
                           checkpoint=(0.5, look))
    assert steps[-1] == recipe.total_steps(len(y)) == 16
    assert seen and seen[0] > sum(p.numel() for p in full.parameters())  # not yet pruned
    steps.clear()
    train_candidate(arch, x, y, None, recipe, on_step=steps.append,
                    checkpoint=(0.25, lambda model: True))
    assert steps[-1] == 4  # stopped a quarter of the way


def test_prune_at_sets_when_the_dense_phase_ends():
    x, y = data()
    arch = tiny_arch(prune=0.5)
    recipe = Recipe(epochs=2, batch=32)
    deployed = sum(p.numel() for p in train_candidate(arch, x, y, None, recipe).parameters())
    for prune_at, dense_at_checkpoint in ((0.0, False), (0.75, True)):
        seen = []
        model = train_candidate(arch, x, y, None, recipe, prune_at=prune_at, checkpoint=(
            0.5, lambda m: seen.append(sum(p.numel() for p in m.parameters())) or False))
        assert sum(p.numel() for p in model.parameters()) == deployed
        assert (seen[0] > deployed) == dense_at_checkpoint
    with pytest.raises(ValueError, match="prune_at"):
        train_candidate(arch, x, y, None, recipe, prune_at=1.0)


def test_distilled_proxy_records_the_checkpoint_and_why_it_stopped():
    x, y = data()
    vx, vy = data(64, seed=1)
    pd = ProxyData(x, y, 3 * F.one_hot(y, 4).float(), vx, vy, 3 * F.one_hot(vy, 4).float())
    arch = tiny_arch(bits=8)
    seen = []
    full = distilled_proxy(arch, pd, proxy_cfg(at=0.5), stop_check=seen.append)
    assert 0 <= full["checkpoint_accuracy"] <= 1 and "stopped_at" not in full
    # scored by fidelity to the teacher, exp(-KL); the check sees it at the checkpoint
    assert full["score"] == pytest.approx(math.exp(-full["teacher_kl"]))
    assert 0 < full["score"] <= 1 and seen == [full["checkpoint_score"]]
    stopped = distilled_proxy(arch, pd, proxy_cfg(at=0.5), stop_check=lambda s: "beaten")
    assert stopped["stopped_at"] == 0.5 and stopped["stopped_by"] == "beaten"
    assert stopped["accuracy"] == stopped["checkpoint_accuracy"] == full["checkpoint_accuracy"]
    assert stopped["score"] == stopped["checkpoint_score"] == full["checkpoint_score"]
    never = distilled_proxy(arch, pd, proxy_cfg(at=None), stop_check=lambda s: "beaten")
    assert "checkpoint_accuracy" not in never and never["accuracy"] == full["accuracy"]
    # proxy.score=accuracy: the score is the validation accuracy (same training)
    by_acc = distilled_proxy(arch, pd, proxy_cfg("accuracy", at=None))
    assert by_acc["score"] == by_acc["accuracy"] == full["accuracy"]
    assert by_acc["teacher_kl"] == full["teacher_kl"]
    # fidelity cannot be scored without the teacher's logits
    with pytest.raises(ValueError, match="fidelity"):
        distilled_proxy(arch, ProxyData(x, y, None, vx, vy, None), proxy_cfg(at=None))


def test_a_partial_result_is_dominated_only_by_a_cheaper_better_finished_trial():
    trials = [finished(0, final=0.80, checkpoint=0.70, latency=1.0),
              finished(1, final=0.95, checkpoint=0.90, latency=3.0),  # slower
              finished(2, final=0.99, checkpoint=0.99, latency=0.5, proxy_stopped_at=0.5),
              finished(3, final=0.99, checkpoint=0.99, latency=0.5, skipped="over budget")]
    check = early_stopper(trials, {"latency_ms": 2.0}, ["latency_ms"], margin=0.01)
    assert "trial 0" in check(0.60)
    assert check(0.695) is None  # within the margin
    assert check(0.75) is None  # trial 0 was behind at its own checkpoint (0.70)
    # the worse of the rival's checkpoint and final accuracy counts
    rival = [finished(0, final=0.65, checkpoint=0.90, latency=1.0)]
    assert early_stopper(rival, {"latency_ms": 2.0}, ["latency_ms"], 0.0)(0.70) is None
    # a slower rival does not dominate; stopped or skipped trials are never rivals
    assert early_stopper(trials[1:], {"latency_ms": 2.0}, ["latency_ms"], 0.0)(0.5) is None
    assert "trial 1" in early_stopper(trials, {"latency_ms": 3.0}, ["latency_ms"], 0.0)(0.85)
    # trials recorded before the proxy had a score: their checkpoint accuracy counts
    legacy = finished(0, final=0.80, checkpoint=0.70, latency=1.0)
    legacy.user_attrs["proxy_checkpoint_accuracy"] = legacy.user_attrs.pop(
        "proxy_checkpoint_score")
    assert "trial 0" in early_stopper([legacy], {"latency_ms": 2.0}, ["latency_ms"], 0.01)(0.6)


def test_prefilter_needs_enough_cheaper_trials_with_a_higher_score():
    trials = [finished(i, final=0.8, checkpoint=0.7, latency=lat, zc_naswot=score)
              for i, (lat, score) in enumerate([(1.0, 50.0), (1.5, 60.0), (3.0, 90.0)])]
    c = {"latency_ms": 2.0}
    assert prefilter_reason(trials, c, {"naswot": 40.0}, ["latency_ms"], "naswot", 2)
    assert prefilter_reason(trials, c, {"naswot": 55.0}, ["latency_ms"], "naswot", 2) is None
    assert prefilter_reason(trials, c, {"naswot": 55.0}, ["latency_ms"], "naswot", 1)


def test_combined_score_standardizes_both_scores_by_the_calibration():
    from search.proxy import combined_score

    cal = {"fidelity": {"mean": 0.9, "std": 0.02}, "naswot": {"mean": 500.0, "std": 40.0}}
    assert combined_score(0.9, 500.0, cal) == pytest.approx(0.0)
    assert combined_score(0.92, 460.0, cal) == pytest.approx(1.0 - 1.0)
    assert combined_score(0.94, 540.0, cal) == pytest.approx(3.0)


def the_study(tmp: Path) -> optuna.Study:
    """The one study a search of ``search_args(tmp, ...)`` wrote, read from its storage."""
    storage = f"sqlite:///{tmp}/study.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def test_fidelity_plus_naswot_calibrates_once_and_scores_every_trial_with_the_studys_scales(
        tmp_path):
    import json

    from search.proxy import combined_score
    from tests.conftest import run_here, search_args

    args = search_args(tmp_path, "proxy=distill", "proxy.train_images=64",
                       "proxy.val_images=32", "proxy.epochs=1",
                       "proxy.score=fidelity+naswot", "proxy.calibration_archs=3",
                       "budget.latency_ms=0.7")  # some candidates over it: not trained
    first = run_here(*args)
    assert first.returncode == 0, first.stderr
    assert "proxy.score=fidelity+naswot: scales from 3 architectures" in first.stdout
    study = the_study(tmp_path)
    cal = study.user_attrs["score_calibration"]
    assert len(cal["archs"]) == 3 and cal["fidelity"]["std"] > 0 and cal["naswot"]["std"] > 0
    (cached,) = (tmp_path / "cache" / "calibration").glob("*.json")
    assert json.loads(cached.read_text()) == cal

    def check(trials):
        scored = [t for t in trials if "skipped" not in t.user_attrs]
        skipped = [t for t in trials if "skipped" in t.user_attrs]
        assert scored and skipped
        for t in skipped:  # the floor: fidelity 0 with its own NASWOT, far below any trained
            assert t.values[0] == pytest.approx(combined_score(0.0, t.user_attrs["zc_naswot"],
                                                               cal))
            assert t.values[0] < min(s.values[0] for s in scored)
        for t in scored:
            assert t.user_attrs["proxy_score_name"] == "fidelity+naswot"
            assert t.user_attrs["score_calibration"] == cal["key"]
            assert t.values[0] == pytest.approx(combined_score(
                t.user_attrs["proxy_trained_score"], t.user_attrs["zc_naswot"], cal))

    check(study.trials)
    # Resumed: the study's scales, not the cache's (here made different), none computed.
    cached.write_text(json.dumps({**cal, "fidelity": {"mean": 0.0, "std": 9.0}}))
    again = run_here(*args, "search.n_trials=5")
    assert again.returncode == 0, again.stderr
    assert "scales from" not in again.stdout
    resumed = the_study(tmp_path).trials
    assert len(resumed) == 5
    check(resumed)


def test_a_cheap_proxys_front_is_scored_again_by_the_distilled_proxy_once(tmp_path):
    """proxy.rescore=distill: after a zero-cost search, each member of the front is trained
    by the distilled proxy, recorded in the study, shown and ranked by; a resumed run keeps
    those scores instead of training again."""
    import csv

    from search.study import pareto_trials, rescored
    from tests.conftest import run_here, search_args

    args = search_args(tmp_path, "proxy.rescore=distill", "proxy.train_images=64",
                       "proxy.val_images=32", "proxy.epochs=1", "proxy.calibration_archs=2",
                       "search.n_trials=4")
    first = run_here(*args)
    assert first.returncode == 0, first.stderr
    assert "member(s) scored again by the distilled proxy" in first.stdout
    study = the_study(tmp_path)
    again = rescored(study)
    front = pareto_trials(study)
    assert {str(t.number) for t in front} == set(again)
    assert all(r["proxy"] == "distill" and r["score_name"] == "fidelity+naswot"
               and 0 <= r["accuracy"] <= 1 for r in again.values())
    assert "score_calibration" not in study.user_attrs  # the distilled scales stay its own
    scores = [again[str(t.number)]["score"] for t in front]
    assert scores == sorted(scores, reverse=True)  # the front ranked by the new scores
    with open(tmp_path / "out" / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["rescore_score"]) for r in rows] == pytest.approx(scores)
    second = run_here(*args)  # nothing new to score: no training
    assert second.returncode == 0, second.stderr
    assert "member(s) scored again" not in second.stdout
    assert rescored(the_study(tmp_path)) == again


def test_rescoring_with_the_proxy_that_searched_is_refused(tmp_path):
    from tests.conftest import run_here, search_args

    out = run_here(*search_args(tmp_path, "proxy=distill", "proxy.rescore=distill"))
    assert out.returncode == 2 and "would train the same candidates again" in out.stderr
