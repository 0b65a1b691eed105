"""Bad inputs and hostile files, one row each: a short message, a non-zero exit, no traceback.

Every row of ``tests/BAD_INPUTS.md`` names the test that proves it; ``test_table_matches``
keeps the table and the tests in step. The rows checked here are data (``CASES``); the rest
(interrupted runs, study integrity) live beside the features they protect.
"""

from __future__ import annotations

import gzip
import json
import pickle
import re
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from latency_models.devices import MODEL_DIR
from latency_models.model import DeviceModel
from tests.conftest import ROOT, run_cli, run_here, search_args, start_cli

TABLE = ROOT / "tests" / "BAD_INPUTS.md"


@dataclass
class Case:
    id: str
    argv: Callable[[Path], list[str]]
    needles: tuple[str, ...]
    setup: Callable[[Path], None] = lambda tmp: None
    cwd_is_tmp: bool = False
    untouched: tuple[str, ...] = field(default_factory=tuple)  # files that must not change


# ---- fixtures written by the cases ---------------------------------------------------------
def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fmnist(root: Path, labels_max: int = 9, truncate: bool = False,
                 not_gzip: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        x = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        y[0] = labels_max
        data = idx_bytes(x, 2051)
        with gzip.open(root / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(data[:-100] if truncate else data)
        with gzip.open(root / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(idx_bytes(y, 2049))
    if not_gzip:
        (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"plain bytes, not gzip")


def write_images(root: Path, classes: int, per_class: int = 3, sizes=((12, 12),)) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(
                root / f"c{c}" / f"{i}.png")


class Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil_checkpoint(tmp: Path) -> None:
    torch.save({"conv1.weight": Payload(str(tmp / "CODE_RAN"))}, tmp / "evil.pt")
    with open(tmp / "evil.pkl", "wb") as f:
        pickle.dump({"x": Payload(str(tmp / "CODE_RAN"))}, f)


def write_device(tmp: Path, content: str | None, name: str = "mydev") -> None:
    (tmp / "conf" / "device").mkdir(parents=True, exist_ok=True)
    (tmp / "conf" / "device" / f"{name}.yaml").write_text(
        f"name: {name}\nmodel: {tmp / 'model.json'}\nbits: [32, 8]\n")
    if content is not None:
        (tmp / "model.json").write_text(content)


def old_version_model() -> str:
    data = json.loads((MODEL_DIR / "rpi4.json").read_text())
    data["format_version"] = 0
    data.pop("hash")
    return json.dumps(data)


def measurement_csv(tmp: Path, median: str) -> None:
    import csv

    arch = (ROOT / "tests" / "data" / "arch.json").read_text()
    with open(tmp / "m.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch_id", "precision", "median_ms", "arch_json"])
        for i in range(6):
            writer.writerow([f"a{i}", "fp32", median if i == 3 else 0.2 + i / 100, arch])


def bundle(tmp: Path, rows: int = 2, results: bool = True, windows: str = "1:2",
           version: int = 2) -> None:
    """A two-file profiling bundle with ``rows`` rows of results."""
    op = ["conv", 1000, 100, 32, 1, 1, 3, 1, 8]
    models = [{"file": f"models/{i}.onnx", "unit": "network", "network": i,
               "precision": "fp32", "ops": [op]} for i in range(2)]
    (tmp / "b").mkdir()
    (tmp / "b" / "manifest.json").write_text(json.dumps(
        {"format": "edgenas-profile-bundle", "version": version, "models": models}))
    if results:
        lines = ["file,median_ms,p10_ms,p90_ms,runs,windows"] + [
            f"models/{i}.onnx,0.5,0.4,0.6,20,{windows}" for i in range(rows)]
        (tmp / "b" / "results.csv").write_text("\n".join(lines) + "\n")


def manifest_cut_short(tmp: Path) -> None:
    """A bundle whose gzipped manifest (as the shipped host bundle keeps it) lost its end."""
    bundle(tmp)
    data = gzip.compress((tmp / "b" / "manifest.json").read_bytes())
    (tmp / "b" / "manifest.json").unlink()
    (tmp / "b" / "manifest.json.gz").write_bytes(data[: len(data) // 2])


def power_log(tmp: Path, scale: float) -> None:
    bundle(tmp)
    (tmp / "log.csv").write_text("timestamp,watts\n" + "".join(
        f"{1 + i / 10},{4 * scale}\n" for i in range(11)))


def fit(tmp: Path, *extra: str) -> list[str]:
    return ["-m", "latency_models.fit", "device=x", "power_w=2", f"out={tmp}/x.json", *extra]


def predict(tmp: Path, model: str, device: str = "rpi4") -> list[str]:
    return ["-m", "latency_models.predict", f"+device={device}", f"model={model}"]


def fm(tmp: Path, *extra: str) -> list[str]:
    return search_args(tmp, "data=fashion_mnist", f"data.root={tmp}/fm", *extra)


def folder(tmp: Path, *extra: str) -> list[str]:
    return search_args(tmp, "data=imagefolder", f"data.root={tmp}/imgs", "data.size=28",
                       "data.in_chans=1", *extra)


def distill(tmp: Path, *extra: str) -> list[str]:
    return search_args(tmp, "proxy=distill", "proxy.train_images=32", "proxy.val_images=16",
                       "proxy.epochs=1", *extra)


CASES = [
    # ---- configuration ----
    Case("config-unknown-device", lambda t: search_args(t, device="pi9000"),
         ("pi9000", "rpi4", "host")),
    Case("config-no-device",
         lambda t: [a for a in search_args(t) if not a.startswith("+device")],
         ("+device=NAME", "rpi4")),
    Case("config-unknown-space", lambda t: search_args(t, "space=tiny"),
         ("space option 'tiny'", "mobilenet")),
    Case("config-unknown-dataset", lambda t: search_args(t, "data=cifar"),
         ("data option 'cifar'", "fashion_mnist", "imagefolder")),
    Case("config-unknown-sampler", lambda t: search_args(t, "search.sampler=cmaes"),
         ("search.sampler='cmaes'", "nsga2")),
    Case("config-unknown-objective",
         lambda t: search_args(t, "search.objectives=[accuracy,speed]"), ("objectives",)),
    Case("config-typo-in-override", lambda t: search_args(t, "search.n_trails=3"),
         ("n_trails",)),
    Case("config-wrong-type", lambda t: search_args(t, "search.n_trials=many"),
         ("search.n_trials", "many")),
    Case("config-malformed-override", lambda t: search_args(t, "search.n_trials=="),
         ("n_trials",)),
    Case("config-zero-trials", lambda t: search_args(t, "search.n_trials=0"),
         ("search.n_trials=0 must be at least 1",)),
    Case("config-no-minutes", lambda t: search_args(t, "search.minutes=0"),
         ("search.minutes=0.0 must be above 0",)),
    Case("config-negative-budget", lambda t: search_args(t, "budget.latency_ms=-2"),
         ("budget.latency_ms=-2.0 must be positive",)),
    Case("config-zero-proxy-budget", lambda t: search_args(t, "proxy.train_images=0"),
         ("proxy.train_images=0 must be at least 1",)),
    Case("config-zero-export-epochs", lambda t: search_args(t, "export.epochs=0"),
         ("export.epochs=0",)),
    Case("config-budget-below-fastest", lambda t: search_args(t, "budget.latency_ms=0.001"),
         ("cannot be met", "smallest latency_ms")),
    Case("config-unsupported-bit-width", lambda t: search_args(t, "device.bits=[32,3]"),
         ("device.bits=[32, 3]",)),
    # ---- data ----
    Case("data-missing-dataset", lambda t: fm(t), ("Fashion-MNIST is not in",
                                                   "apt-get install dataset-fashion-mnist")),
    Case("data-truncated-idx", fm, ("truncated", "reinstall"),
         setup=lambda t: write_fmnist(t / "fm", truncate=True)),
    Case("data-corrupt-gzip", fm, ("corrupt or truncated", "t10k-labels"),
         setup=lambda t: write_fmnist(t / "fm", not_gzip=True)),
    Case("data-labels-out-of-range", fm, ("labels", "above 9"),
         setup=lambda t: write_fmnist(t / "fm", labels_max=12)),
    Case("data-folder-missing-root",
         lambda t: search_args(t, "data=imagefolder"), ("needs data.root=DIR",)),
    Case("data-folder-no-classes", folder, ("0 class folder",),
         setup=lambda t: (t / "imgs").mkdir()),
    Case("data-folder-one-class", folder, ("1 class folder", "at least two classes"),
         setup=lambda t: write_images(t / "imgs", classes=1)),
    Case("data-folder-no-images", folder, ("no images",),
         setup=lambda t: [(t / "imgs" / c).mkdir(parents=True) for c in ("a", "b")]),
    Case("data-folder-unreadable-image", folder, ("cannot read image", "bad.png"),
         setup=lambda t: (write_images(t / "imgs", classes=2),
                          (t / "imgs" / "c0" / "bad.png").write_bytes(b"\x89PNG broken"))),
    Case("data-folder-empty-class", folder, ("c2 have no images",),
         setup=lambda t: (write_images(t / "imgs", classes=2),
                          (t / "imgs" / "c2").mkdir(), (t / "imgs" / "c2" / "x.txt")
                          .write_text("not an image"))),
    # ---- files from users ----
    Case("file-pickle-checkpoint-with-code", lambda t: distill(
        t, f"proxy.teacher.checkpoint={t}/evil.pt"), ("refused", "never unpickled"),
        setup=write_evil_checkpoint),
    Case("file-plain-pickle-checkpoint", lambda t: distill(
        t, f"proxy.teacher.checkpoint={t}/evil.pkl"), ("refused", "never unpickled"),
        setup=write_evil_checkpoint),
    Case("file-checkpoint-for-another-model", lambda t: distill(
        t, f"proxy.teacher.checkpoint={t}/other.safetensors"), ("does not fit",),
        setup=lambda t: __import__("safetensors.torch").torch.save_file(
            {"fc.weight": torch.zeros(2, 2)}, str(t / "other.safetensors"))),
    Case("file-corrupt-safetensors", lambda t: distill(
        t, f"proxy.teacher.checkpoint={t}/bad.safetensors"), ("not a valid safetensors",),
        setup=lambda t: (t / "bad.safetensors").write_bytes(b"\x00" * 40)),
    Case("file-device-model-corrupt", lambda t: search_args(t, device="mydev"),
         ("not valid JSON", "refit"), setup=lambda t: write_device(t, "{broken"),
         cwd_is_tmp=True),
    Case("file-device-model-empty", lambda t: search_args(t, device="mydev"),
         ("not valid JSON",), setup=lambda t: write_device(t, ""), cwd_is_tmp=True),
    Case("file-device-model-other-version", lambda t: search_args(t, device="mydev"),
         ("format version 0",), setup=lambda t: write_device(t, old_version_model()),
         cwd_is_tmp=True),
    Case("file-device-model-missing", lambda t: search_args(t, device="mydev"),
         ("does not exist",), setup=lambda t: write_device(t, None), cwd_is_tmp=True),
    Case("file-device-model-edited", lambda t: predict(t, str(ROOT / "tests" / "data" /
                                                              "arch.json"), "mydev"),
         ("edited after fitting",), cwd_is_tmp=True, setup=lambda t: write_device(
             t, (MODEL_DIR / "rpi4.json").read_text().replace('"power_w": 5.25',
                                                                 '"power_w": 1'))),
    Case("file-measurements-missing-columns", lambda t: fit(t, f"measurements={t}/m.csv"),
         ("lacks the columns",), setup=lambda t: (t / "m.csv").write_text("a,b\n1,2\n")),
    Case("file-measurements-empty", lambda t: fit(t, f"measurements={t}/m.csv"),
         ("is empty",), setup=lambda t: (t / "m.csv").write_text("")),
    Case("file-measurements-negative-time", lambda t: fit(t, f"measurements={t}/m.csv"),
         ("row 5", "not a positive time"), setup=lambda t: measurement_csv(t, "-0.5")),
    Case("file-measurements-nan-time", lambda t: fit(t, f"measurements={t}/m.csv"),
         ("row 5", "not a positive time"), setup=lambda t: measurement_csv(t, "nan")),
    Case("file-bundle-not-measured", lambda t: fit(t, f"bundle={t}/b"),
         ("has no results.csv", "run_on_device.py"),
         setup=lambda t: bundle(t, results=False)),
    Case("file-bundle-version-1", lambda t: fit(t, f"bundle={t}/b"),
         ("version 1 bundle", "did not run as int8", "write a new bundle"),
         setup=lambda t: bundle(t, version=1)),
    Case("file-bundle-measurement-unfinished", lambda t: fit(t, f"bundle={t}/b"),
         ("1 rows for 2 files", "did not finish", "resumes"), setup=lambda t: bundle(t, 1)),
    Case("file-bundle-manifest-cut-short", lambda t: fit(t, f"bundle={t}/b"),
         ("manifest.json.gz is not valid JSON", "copy it again"),
         setup=lambda t: manifest_cut_short(t)),
    Case("file-power-log-in-milliwatts",
         lambda t: fit(t, f"bundle={t}/b", f"power_log={t}/log.csv"),
         ("power log", "milliwatts"), setup=lambda t: power_log(t, 1000)),
    Case("file-power-log-too-sparse",
         lambda t: fit(t, f"bundle={t}/b", f"power_log={t}/log.csv"),
         ("readings inside", "--window 3"),
         setup=lambda t: (power_log(t, 1), (t / "log.csv").write_text(
             "timestamp,watts\n0,4\n9,4\n"))),
    Case("file-lookup-tables-missing", lambda t: fit(t, f"ofa={t}"),
         ("no *_lookup_table.yaml",)),
    Case("file-onnx-not-onnx", lambda t: predict(t, f"{t}/m.onnx"),
         ("not a valid ONNX model",), setup=lambda t: (t / "m.onnx").write_text("hello")),
    Case("file-arch-json-corrupt", lambda t: predict(t, f"{t}/arch.json"),
         ("not valid JSON",), setup=lambda t: (t / "arch.json").write_text("{")),
    # ---- paths ----
    Case("path-study-name-dotdot", lambda t: search_args(t, "study.name=../../escape"),
         ("study.name='../../escape' may only hold",)),
    Case("path-study-name-absolute", lambda t: search_args(t, "study.name=/tmp/escape"),
         ("may only hold",)),
    Case("path-study-name-odd-characters",
         lambda t: search_args(t, "study.name='a b;rm -rf'"), ("may only hold",)),
    # ---- study integrity ----
    Case("study-sqlite-corrupt", lambda t: search_args(t), ("not a SQLite database",),
         setup=lambda t: (t / "study.db").write_bytes(b"garbage" * 50),
         untouched=("study.db",)),
    Case("study-password-not-printed",
         lambda t: search_args(t, "storage.url=postgresql://u:s3cret@127.0.0.1:1/db"),
         ("cannot use the study storage", "postgresql://u:***@")),
    Case("study-postgres-unreachable",
         lambda t: search_args(t, "storage=postgresql", storage="postgresql://u@127.0.0.1:1/db"),
         ("cannot use the study storage", "server is running")),
    Case("study-unknown-storage", lambda t: search_args(t, storage="redis://127.0.0.1/0"),
         ("not a storage this tool knows", "journal:PATH", "postgresql://")),
    Case("study-journal-path-is-a-folder", lambda t: search_args(t, storage=f"journal:{t}"),
         ("is a folder", "journal:studies/edgenas.journal")),
    Case("export-no-study", lambda t: ["-m", "search.export"] + search_args(t)[2:],
         ("no study", "python -m search")),
    Case("config-early-stop-outside-the-training",
         lambda t: search_args(t, "proxy.early_stop.at=1.5"),
         ("proxy.early_stop.at=1.5", "between 0 and 1")),
    Case("config-unknown-prefilter-score",
         lambda t: search_args(t, "proxy.prefilter.score=flops", "proxy.prefilter.dominated_by=2"),
         ("proxy.prefilter.score='flops'", "naswot")),
    Case("report-no-out", lambda t: ["-m", "search.report"] + search_args(t)[2:],
         ("out=DIR",)),
    Case("report-unknown-baseline",
         lambda t: ["-m", "search.report"] + search_args(t, f"out={t}/r",
                                                          "report.baselines=[resnet50]")[2:],
         ("report.baselines", "'resnet50'", "mobilenetv3_small_050")),
]


def check_case(case: Case, tmp_path: Path, run: Callable) -> None:
    case.setup(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in case.untouched}
    result = run(*case.argv(tmp_path), cwd=tmp_path if case.cwd_is_tmp else None)
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    for needle in case.needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert "s3cret" not in text
    assert not (tmp_path / "CODE_RAN").exists()
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
    assert not list(tmp_path.parent.glob("escape*")) and not Path("/tmp/escape").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(tmp_path, case):
    """Each case runs the CLI's ``__main__`` in this process (seconds saved per case)."""
    check_case(case, tmp_path, run_here)


# One case of each path through a real interpreter: Hydra's config errors, the data check
# after the heavy imports, a hostile file read by torch, a user's own device in ./conf.
REAL_PROCESS = ("config-unknown-device", "data-truncated-idx", "file-pickle-checkpoint-with-code",
                "file-device-model-corrupt")


@pytest.mark.parametrize("case", [c for c in CASES if c.id in REAL_PROCESS],
                         ids=[c.id for c in CASES if c.id in REAL_PROCESS])
def test_bad_input_in_a_real_process(tmp_path, case):
    check_case(case, tmp_path, run_cli)


def test_mixed_size_images_are_resized_not_refused(tmp_path):
    write_images(tmp_path / "imgs", classes=2, per_class=4, sizes=((12, 12), (30, 17)))
    result = run_cli(*folder(tmp_path, "search.n_trials=1"))
    assert result.returncode == 0, result.stderr


def test_locked_sqlite_gives_a_clear_message(tmp_path):
    import sqlite3

    db = tmp_path / "study.db"
    assert run_cli(*search_args(tmp_path, "search.n_trials=1")).returncode == 0
    before = db.read_bytes()
    lock = sqlite3.connect(db)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        result = run_cli(*search_args(tmp_path, f"storage.url='sqlite:///{db}?timeout=1'",
                                      "search.n_trials=2"))
    finally:
        lock.rollback()
        lock.close()
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in text
    # With write-ahead logging the study can still be read; the first write fails.
    assert "locked" in text and ("not modified" in text or "Finished trials are kept" in text)
    assert db.read_bytes() == before


def test_table_matches_the_tests():
    """Every row of BAD_INPUTS.md names an existing test; every case here has a row; the
    troubleshooting page includes the table."""
    rows = [line for line in TABLE.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| #") and "---" not in line]
    named = [re.search(r"`(tests/[^`]+)`", row).group(1) for row in rows]
    assert len(rows) >= 30
    for ref in named:
        path, _, name = ref.partition("::")
        test, _, param = name.partition("[")
        source = (ROOT / path).read_text()
        assert f"def {test}(" in source, ref
        if param:
            assert f'"{param.rstrip("]")}"' in source, ref
    ids = {n.split("[", 1)[1].rstrip("]") for n in named if "test_bad_input[" in n}
    assert ids == {c.id for c in CASES}
    # the documentation shows this very table (one source): docs/troubleshooting.md includes it
    text = TABLE.read_text()
    table = text.split("[start:table]", 1)[1].split("[end:table]", 1)[0]
    assert all(row in table for row in rows), "a row lies outside the included section"
    docs = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert '--8<-- "tests/BAD_INPUTS.md:table"' in docs


def test_atomic_write_leaves_nothing_on_a_crash(tmp_path):
    from spaces.files import atomic_path

    target = tmp_path / "cache.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and not list(tmp_path.iterdir())


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds."""
    import os
    import signal
    import time

    deadline = time.time() + 180
    try:
        while time.time() < deadline and not ready():
            time.sleep(0.2)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kill_9_during_teacher_training_leaves_no_trusted_file(tmp_path):
    args = distill(tmp_path, "data.synthetic_images=128", "proxy.teacher.epochs=40",
                   "search.n_trials=1")
    proc = start_cli(args)
    kill_when(proc, lambda: (tmp_path / "study.db").exists(), delay=3.0)
    for d in (tmp_path / "cache" / "teacher").glob("*"):
        assert not (d / "meta.json").exists(), "a half-trained teacher was recorded"
        assert not (d / "model.safetensors").exists()
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "cache" / "teacher").glob("*/meta.json"))) == 1


def test_kill_9_during_export_leaves_no_folder_a_later_run_would_trust(tmp_path):
    common = ("data.synthetic_images=128", "proxy.teacher.epochs=1", "search.n_trials=1")
    assert run_cli(*distill(tmp_path, *common)).returncode == 0
    out = tmp_path / "export"
    export = ["-m", "search.export"] + distill(tmp_path, *common)[2:] + [
        "select=best", f"out={out}", "export.calibration_images=16", "export.latency_runs=5"]
    proc = start_cli(export + ["export.epochs=200"])
    kill_when(proc, lambda: (tmp_path / "cache" / "teacher").exists(), delay=6.0)
    assert not list(out.glob("trial_*")), "an unfinished export folder was left in place"
    result = run_cli(*export, "export.epochs=1")
    assert result.returncode == 0, result.stderr
    (folder_,) = out.glob("trial_*")
    assert (folder_ / "metrics.json").is_file() and not list(out.glob(".trial_*"))


def test_device_model_loaded_by_user_paths_is_plain_json(tmp_path):
    model = DeviceModel.load(MODEL_DIR / "rpi4.json")
    model.save(tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text())["format"] == "edgenas-device-model"


def test_debug_switch_shows_the_traceback(tmp_path):
    result = run_cli(*fm(tmp_path, "debug=true"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "Fashion-MNIST is not in" in result.stderr


def test_atomic_dir_keeps_the_old_folder_on_a_crash(tmp_path):
    from spaces.files import atomic_dir

    target = tmp_path / "lcnet_035"
    with atomic_dir(target) as work:
        (work / "metrics.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as work:
            (work / "metrics.json").write_text("half")
            raise RuntimeError("killed")
    assert (target / "metrics.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["lcnet_035"]  # no temporary folder left
