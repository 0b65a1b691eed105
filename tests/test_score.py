"""``python -m search.score``: a list of architectures scored by any proxy, as the search
scores its trials; bad lists named."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import optuna
import pytest

from search.config import Config
from search.errors import UserError
from search.score import read_archs
from spaces.space import RandomChoices, outside_space, sample_arch
from tests.conftest import run_here

# the synthetic data: 1 x 28 x 28 images of 4 classes
SHAPE = dict(in_chans=1, input_size=28, num_classes=4)
SUPERNET = ("proxy=supernet", "proxy.train_images=64", "proxy.val_images=32",
            "proxy.supernet.epochs=1", "proxy.supernet.warmup_epochs=0",
            "proxy.supernet.batch=32", "proxy.supernet.calibration_images=16",
            "proxy.supernet.random_archs=1", "proxy.calibration_archs=2",
            "proxy.teacher.epochs=1")


def archs(n: int, seed: int = 0, space=None, bits=(32, 8)):
    space = space or Config().space
    return [sample_arch(RandomChoices(seed + i), space, bits=list(bits), **SHAPE)
            for i in range(n)]


def write_folder(root, items) -> None:
    for i, arch in enumerate(items):
        (root / f"group{i % 2}" / str(i)).mkdir(parents=True)
        (root / f"group{i % 2}" / str(i) / "arch.json").write_text(arch.to_json())


def score_args(tmp_path, *extra: str) -> list[str]:
    return ["-m", "search.score", "+device=rpi4", "data=synthetic", "proxy=zero_cost",
            f"cache_dir={tmp_path}/cache", "search.threads=1", f"out={tmp_path}/scores.csv",
            *extra]


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_sampled_architecture_is_in_its_space_and_an_edited_one_is_not():
    space = Config().space
    for arch in archs(50):
        assert outside_space(arch, space, [32, 8]) == []
    arch = archs(1)[0]
    assert outside_space(replace(arch, head_chs=999), space, [32, 8]) == [
        "head_chs=999 (the space offers [64, 128, 256])"]
    assert any("bits=8" in p for p in outside_space(archs(1, bits=(8,))[0], space, [32]))
    short = replace(arch, stages=arch.stages[:2])
    assert outside_space(short, space, [32, 8]) == ["2 stages (the space has 4)"]


def test_a_folder_at_any_depth_and_a_json_lines_file_give_the_same_rows(tmp_path):
    items = archs(4)
    write_folder(tmp_path / "dir", items)
    (tmp_path / "list.jsonl").write_text(
        "\n".join(a.to_json(indent=None) for a in items) + "\n\n")
    folder = run_here(*score_args(tmp_path, f"archs={tmp_path}/dir",
                                  f"out={tmp_path}/a.csv"))
    assert folder.returncode == 0, folder.stderr
    lines = run_here(*score_args(tmp_path, f"archs={tmp_path}/list.jsonl",
                                 f"out={tmp_path}/b.csv"))
    assert lines.returncode == 0, lines.stderr
    a, b = read_csv(tmp_path / "a.csv"), read_csv(tmp_path / "b.csv")
    assert list(a[0])[:2] == ["arch_id", "score"] and "naswot" in a[0]
    # the folder in path order (group0/0, group0/2, group1/1, group1/3), the file in its own
    order = [items[i].arch_id for i in (0, 2, 1, 3)]
    assert [r["arch_id"] for r in a] == order
    assert [r["arch_id"] for r in b] == [x.arch_id for x in items]
    by_id = {r["arch_id"]: r["score"] for r in a}
    assert all(by_id[r["arch_id"]] == r["score"] for r in b)
    # proxy=zero_cost's score is NASWOT, as the search records it
    assert all(float(r["score"]) == pytest.approx(float(r["naswot"])) for r in a)
    # one pretty-printed arch.json given as a file is one architecture
    (tmp_path / "one.json").write_text(items[0].to_json())
    assert [a.arch_id for _, a in read_archs(tmp_path / "one.json")] == [items[0].arch_id]


@pytest.mark.slow
def test_the_supernet_scores_as_the_search_records(tmp_path):
    """proxy=supernet (trained here on first use) scores each architecture with the value the
    search's accuracy objective holds for the same architecture."""
    from tests.conftest import search_args

    search = run_here(*search_args(tmp_path, *SUPERNET, "search.n_trials=3"))
    assert search.returncode == 0, search.stderr
    study = optuna.load_study(study_name="rpi4-synthetic-mobilenet",
                              storage=f"sqlite:///{tmp_path}/study.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    (tmp_path / "trials.jsonl").write_text(
        "\n".join(t.user_attrs["arch_json"] for t in trials))
    out = run_here(*score_args(tmp_path, *SUPERNET, f"archs={tmp_path}/trials.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = read_csv(tmp_path / "scores.csv")
    assert [r["arch_id"] for r in rows] == [t.user_attrs["arch_id"] for t in trials]
    assert {"accuracy", "teacher_kl", "cost_s", "supernet", "naswot"} <= set(rows[0])
    for r, t in zip(rows, trials):
        assert float(r["accuracy"]) == pytest.approx(t.user_attrs["proxy_accuracy"], abs=1e-6)
        assert float(r["teacher_kl"]) == pytest.approx(t.user_attrs["proxy_teacher_kl"],
                                                       rel=1e-4)


@pytest.mark.parametrize("case", ["missing", "empty-folder", "not-an-arch", "other-space",
                                  "other-size", "no-archs", "out-is-a-folder"])
def test_bad_lists_are_named_in_one_paragraph(tmp_path, case):
    arch = archs(1)[0]
    target, needles = f"{tmp_path}/list.jsonl", []
    if case == "missing":
        needles = ["no such file or folder", "arch.json"]
    elif case == "empty-folder":
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        target, needles = f"{tmp_path}/empty", ["holds no arch.json file", "any depth"]
    elif case == "not-an-arch":
        (tmp_path / "list.jsonl").write_text(arch.to_json(indent=None) + '\n{"epochs": 3}\n')
        needles = [f"{tmp_path}/list.jsonl:2 is not an architecture"]
    elif case == "other-space":
        (tmp_path / "list.jsonl").write_text(replace(arch, head_chs=999).to_json(indent=None))
        needles = [f"{tmp_path}/list.jsonl:1", "not in space=mobilenet", "head_chs=999",
                   "space="]
    elif case == "other-size":
        other = sample_arch(RandomChoices(0), Config().space, bits=[32, 8], in_chans=1,
                            input_size=32, num_classes=10)
        write_folder(tmp_path / "dir", [other])
        target = f"{tmp_path}/dir"
        needles = [f"{tmp_path}/dir/group0/0/arch.json", "1x32x32 images of 10 classes",
                   "1x28x28 of 4 classes", "data="]
    elif case == "out-is-a-folder":
        (tmp_path / "list.jsonl").write_text(arch.to_json(indent=None))
        (tmp_path / "scores.csv").mkdir()
        needles = ["is a folder"]
    args = score_args(tmp_path) if case == "no-archs" else score_args(tmp_path,
                                                                      f"archs={target}")
    if case == "no-archs":
        needles = ["needs archs=PATH", "out=FILE.csv"]
    result = run_here(*args)
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text}"
    if case != "out-is-a-folder":
        assert not (tmp_path / "scores.csv").exists()


def test_read_archs_raises_a_user_error_naming_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "arch.json").write_text("not json")
    with pytest.raises(UserError, match=r"a/arch.json is not an architecture"):
        read_archs(tmp_path)
    assert json.loads(archs(1)[0].to_json())["version"] == 1
