"""A new user's first hour: every command the tools print works as printed, every command
answers --help, typos and unquoted values get a way out, outputs say what they hold."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, run_here, search_args

HELP_COMMANDS = ("search", "search.export", "search.report", "latency_models.predict",
                 "latency_models.fit", "latency_models.profile", "spaces.sample",
                 "search.train_supernet")


def user_env(tmp: Path) -> dict:
    """A shell where the virtual environment is not activated: ``python`` is not ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH="/usr/bin:/bin", HOME=str(tmp), PYTHONWARNINGS="ignore")
    return env


def printed_commands(text: str, module: str) -> list[str]:
    """The command lines in ``text`` that run ``-m module``, comments cut off."""
    return [line.split("   #")[0].strip() for line in text.splitlines()
            if f" -m {module} " in line and not line.lstrip().startswith("error")]


def shell(command: str, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_printed_commands_work_as_printed(tmp_path):
    """search prints the export command; export prints predict and report commands; each
    runs as printed in a shell without the venv activated, from the user's folder. The card's
    snippet runs; the files are readable by others (the umask's modes)."""
    env = user_env(tmp_path)
    search = [sys.executable, *search_args(tmp_path, "search.n_trials=4")]
    result = shell(shlex.join(search), tmp_path, env)
    assert result.returncode == 0, result.stderr
    (export_cmd,) = printed_commands(result.stdout, "search.export")
    assert "select=best" in export_cmd and "python" in export_cmd.split()[0]
    # a column holds what its name says: the zero-cost proxy trained nothing
    with open(tmp_path / "out" / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["proxy_accuracy"] == "" for r in rows)
    assert "naswot: NASWOT" in result.stdout  # the table says how to read its score

    exported = shell(export_cmd, tmp_path, env)
    assert exported.returncode == 0, exported.stderr
    assert "exported to" in exported.stdout
    predict_cmd, report_cmd = (printed_commands(exported.stdout, m)[0]
                               for m in ("latency_models.predict", "search.report"))
    (folder,) = (tmp_path / "out" / "export").glob("trial_*")

    predicted = shell(predict_cmd, tmp_path, env)
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]  # piped: JSON lines
    assert {Path(r["path"]).name for r in lines} == {"model.onnx", "model.int8.onnx"}
    # the report as printed, with one baseline instead of ten to keep the test short
    report = shell(report_cmd + " 'report.baselines=[lcnet_035]' report.latency_rounds=1",
                   tmp_path, env)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "report.md").is_file()

    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f

    card = (folder / "card.md").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["classes"] == [str(i) for i in range(4)]  # synthetic data: 4 labels
    assert "logits" in card and "| 3 | 3 |" in card
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    ran = subprocess.run([sys.executable, "-c", snippet], cwd=folder, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    label, probability = ran.stdout.split()
    assert label in metrics["classes"] and 0 < float(probability) <= 1


@pytest.mark.parametrize("module", HELP_COMMANDS)
def test_every_command_answers_help(module):
    result = run_here("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "example" in result.stdout
    assert f"-m {module} " in result.stdout


def test_search_help_lists_settings_with_their_defaults():
    text = run_here("-m", "search", "--help").stdout
    assert "search.n_trials=32" in text and "proxy: distill, supernet, zero_cost" in text
    assert "rpi4" in text and "--cfg job" in text


@pytest.mark.parametrize("typo, near", [("search.ntrials=5", "search.n_trials"),
                                        ("+search.ntrials=5", "search.n_trials"),
                                        ("proxy.epoch=2", "proxy.epochs"),
                                        ("budget.latency=1", "budget.latency_ms"),
                                        ("proxy=zero_cst", "zero_cost")])
def test_a_mistyped_override_names_the_closest(tmp_path, typo, near):
    result = run_here(*search_args(tmp_path, typo))
    assert result.returncode == 2
    assert f"did you mean {near}?" in result.stderr, result.stderr
    assert not (tmp_path / "study.db").exists()


def test_device_without_plus_says_how(tmp_path):
    args = [a.replace("+device", "device") for a in search_args(tmp_path)]
    result = run_here(*args)
    assert result.returncode == 2 and "+device=rpi4" in result.stderr


def test_a_value_hydra_cannot_parse_shows_the_quoting(tmp_path):
    url = f"sqlite:///{tmp_path}/q.db?timeout=5"
    result = run_here(*search_args(tmp_path, f"storage.url={url}"))
    assert result.returncode == 2
    assert f"'storage.url=\"{url}\"'" in result.stderr, result.stderr
    # quoted as the message shows, the search runs
    quoted = run_here(*search_args(tmp_path, f'storage.url="{url}"', "search.n_trials=1"))
    assert quoted.returncode == 0, quoted.stderr
    assert (tmp_path / "q.db").is_file()


def test_predict_prints_a_table_or_json_lines(tmp_path):
    arch = str(ROOT / "tests" / "data" / "arch.json")
    table = run_here("-m", "latency_models.predict", "+device=host", f"model={arch}",
                     "format=table")
    assert table.returncode == 0, table.stderr
    assert "latency ms" in table.stdout and "latency regressed:" in table.stdout
    assert "energy modelled:" in table.stdout
    jsonl = run_here("-m", "latency_models.predict", "+device=host", f"model={arch}")
    assert json.loads(jsonl.stdout)["provenance"]["device"] == "host"
    bad = run_here("-m", "latency_models.predict", "+device=host", f"model={arch}",
                   "format=csv")
    assert bad.returncode == 2 and "table or jsonl" in bad.stderr
    typo = run_here("-m", "latency_models.predict", "+device=host", f"modle={arch}")
    assert typo.returncode == 2 and "did you mean model?" in typo.stderr


def test_helper_commands_are_hydra_apps_with_the_search_syntax_and_messages(tmp_path):
    from latency_models.fit import COMMAND as FIT
    from spaces.sample import COMMAND as SAMPLE

    # Hydra's syntax: lists in brackets, typed values, `+` on a plain setting is the setting
    cfg = SAMPLE.compose(["n=3", "bits=[8]", f"+out={tmp_path}"])
    assert (cfg.n, cfg.bits, cfg.out) == (3, [8], str(tmp_path))
    assert FIT.compose(["device=b", "power_w=2", "bits=[8,4]"]).bits == [8, 4]
    # the same messages as the search: a list without brackets, a wrong type, a typo
    lst = run_here("-m", "spaces.sample", f"out={tmp_path}", "bits=32,8")
    assert lst.returncode == 2 and "bits=[32,8]" in lst.stderr, lst.stderr
    typed = run_here("-m", "spaces.sample", f"out={tmp_path}", "n=many")
    assert typed.returncode == 2 and "bad configuration at n" in typed.stderr
    missing = run_here("-m", "latency_models.fit", "device=b")
    assert missing.returncode == 2 and "missing power_w=" in missing.stderr
    plus = run_here("-m", "latency_models.predict", "device=host", "model=x")
    assert plus.returncode == 2 and "+device=host" in plus.stderr
    # Hydra's own flags work: the composed configuration of a helper command
    shown = run_here("-m", "latency_models.predict", "+device=rpi4", "model=a.onnx",
                     "--cfg", "job")
    assert shown.returncode == 0 and "model: rpi4.json" in shown.stdout, shown.stderr
    assert not list(tmp_path.iterdir())  # nothing ran


def test_a_small_image_folder_is_said_once(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(30):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(
                tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    result = run_here(*search_args(
        tmp_path, "data=imagefolder", f"data.root={tmp_path}/imgs", "data.size=28",
        "data.in_chans=1", "proxy=distill", "proxy.score=accuracy", "proxy.epochs=1",
        "proxy.teacher.epochs=1", "search.n_trials=1"))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, result.stdout
    assert "data.val_images=500" in notes[0] and "set data.val_images=10" in notes[0]


def test_help_piped_into_a_reader_that_stops_early_ends_quietly():
    """``python -m search --help | head -1``: no BrokenPipe traceback, exit 0."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    proc = subprocess.Popen([sys.executable, "-m", "spaces.sample", "--help"], cwd=ROOT,
                            env=cli_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0)
    proc.stdout.close()  # the reader is gone before the help is written (imports take seconds)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
