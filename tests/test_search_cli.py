"""The main command end to end on synthetic data, and every bad input the spine names.

The bad inputs run the CLI in this process (``run_here``); the search itself and Hydra's own
config errors run in a real interpreter (``run_cli``)."""

import gzip
import hashlib
import json
import math

import optuna
import pytest

from tests.conftest import run_cli, run_here, search_args


def complete(db, name="rpi4-synthetic-mobilenet"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_clean_error(result, *needles):
    assert result.returncode != 0, result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


def test_search_runs_then_resumes_to_the_total(tmp_path):
    first = run_cli(*search_args(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "Pareto-optimal trials" in first.stdout and "study: rpi4-synthetic-mobilenet" in \
        first.stdout
    assert len(complete(tmp_path / "study.db")) == 3
    assert (tmp_path / "out" / "summary.json").is_file()
    # The resumes run in this process (the first run was the real interpreter).
    again = run_here(*search_args(tmp_path))
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert len(complete(tmp_path / "study.db")) == 3
    more = run_here(*search_args(tmp_path, "search.n_trials=5"))
    assert more.returncode == 0 and "running 2 more" in more.stdout
    trials = complete(tmp_path / "study.db")
    assert len(trials) == 5
    attrs = trials[0].user_attrs
    for key in ("arch_json", "latency_ms", "energy_mj", "size_kib", "params", "macs", "bits",
                "zc_naswot", "zc_synflow", "zc_cost_s"):
        assert key in attrs
    assert trials[0].values[0] == attrs["zc_naswot"]  # proxy=zero_cost scores with NASWOT
    assert attrs["provenance"]["energy"] == "modelled"


def test_a_time_budget_ends_the_run_and_the_same_command_continues(tmp_path):
    args = search_args(tmp_path, "search.n_trials=100000", "search.minutes=0.005")  # 0.3 s
    first = run_here(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "search.minutes=0.005 reached" in first.stdout + first.stderr
    n = len(complete(tmp_path / "study.db"))
    assert 1 <= n < 100000
    again = run_here(*args)
    assert again.returncode == 0 and "resuming study" in again.stdout
    assert len(complete(tmp_path / "study.db")) > n


def test_distilled_proxy_trains_against_a_cached_teacher(tmp_path):
    args = search_args(tmp_path, "proxy=distill", "proxy.train_images=256",
                       "proxy.val_images=64", "proxy.epochs=1", "proxy.teacher.epochs=1",
                       "search.n_trials=2", "proxy.calibration_archs=3")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "teacher resnet10t: test accuracy" in result.stdout
    trials = complete(tmp_path / "study.db")
    assert all(t.user_attrs["proxy_cost_s"] > 0 for t in trials)
    assert all("proxy_teacher_agreement" in t.user_attrs for t in trials)
    assert all(0 <= t.user_attrs["proxy_checkpoint_accuracy"] <= 1 for t in trials)
    # the accuracy objective holds proxy.score's default: fidelity to the teacher plus NASWOT,
    # both standardized with the scales calibrated once and recorded in the study
    from search.proxy import combined_score

    cal = optuna.load_study(study_name="rpi4-synthetic-mobilenet",
                            storage=f"sqlite:///{tmp_path}/study.db").user_attrs[
        "score_calibration"]
    assert "scales from 3 architectures" in result.stdout and len(cal["archs"]) == 3
    for t in trials:
        fidelity = math.exp(-t.user_attrs["proxy_teacher_kl"])
        assert t.user_attrs["proxy_score_name"] == "fidelity+naswot"
        assert t.user_attrs["score_calibration"] == cal["key"]
        assert t.user_attrs["proxy_trained_score"] == pytest.approx(fidelity)
        assert t.values[0] == t.user_attrs["proxy_score"] == pytest.approx(
            combined_score(fidelity, t.user_attrs["zc_naswot"], cal))
    proxy = json.loads((tmp_path / "out" / "summary.json").read_text())["proxy"]
    assert proxy["kind"] == "distill" and proxy["seconds"] > 0
    assert proxy["stopped_early"] == sum("proxy_stopped_at" in t.user_attrs for t in trials)
    assert len(list((tmp_path / "cache" / "teacher").glob("*/model.safetensors"))) == 1
    # resumed with another score, the study says which one it was scored with
    other = run_here(*args, "proxy.score=fidelity", "search.n_trials=3")
    assert_clean_error(other, "different setup", "proxy_hash",
                       "add proxy.score=fidelity+naswot to resume it")
    assert len(complete(tmp_path / "study.db")) == 2


def test_unknown_device_lists_the_known_ones(tmp_path):
    result = run_cli(*search_args(tmp_path, device="pi9000"))
    assert_clean_error(result, "pi9000", "rpi4", "host")


def test_no_device_says_how_to_choose_one(tmp_path):
    args = [a for a in search_args(tmp_path) if not a.startswith("+device")]
    assert_clean_error(run_cli(*args), "+device=NAME", "rpi4")


@pytest.mark.parametrize("override, needle", [
    ("search.n_trails=3", "n_trails"),
    ("search.n_trials=abc", "n_trials"),
    ("search.n_trials=0", "search.n_trials=0"),
    ("budget.latency_ms=-1", "budget.latency_ms=-1"),
    ("search.sampler=cmaes", "search.sampler"),
    ("proxy.epochs=0", "proxy.epochs=0"),
    ("search.n_trials==", "n_trials"),
    ("device.bits=[32,3]", "device.bits"),
])
def test_malformed_or_bad_overrides(tmp_path, override, needle):
    assert_clean_error(run_cli(*search_args(tmp_path, override)), needle)


def test_budget_no_architecture_can_meet(tmp_path):
    result = run_here(*search_args(tmp_path, "budget.latency_ms=0.0001"))
    assert_clean_error(result, "budget.latency_ms=0.0001 cannot be met", "smallest latency_ms")
    assert not (tmp_path / "study.db").exists()


def test_missing_and_corrupt_dataset(tmp_path):
    args = search_args(tmp_path, "data=fashion_mnist", f"data.root={tmp_path}/none")
    assert_clean_error(run_here(*args), "Fashion-MNIST is not in",
                       "apt-get install dataset-fashion-mnist")
    root = tmp_path / "fm"
    root.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(root / name, "wb") as f:
            f.write(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x05" * 3 + b"short")
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    args = search_args(tmp_path, "data=fashion_mnist", f"data.root={root}")
    assert_clean_error(run_here(*args), "truncated", "reinstall")


def test_image_folder_problems(tmp_path):
    empty = tmp_path / "imgs"
    empty.mkdir()
    args = search_args(tmp_path, "data=imagefolder", f"data.root={empty}")
    assert_clean_error(run_here(*args), "0 class folder")
    (empty / "a").mkdir()
    (empty / "b").mkdir()
    assert_clean_error(run_here(*args), "no images")
    (empty / "a" / "x.png").write_bytes(b"not a png")
    assert_clean_error(run_here(*args), "class folder(s) b have no images")
    from PIL import Image

    Image.new("L", (12, 12)).save(empty / "b" / "y.png")
    assert_clean_error(run_here(*args), "cannot read image", "x.png")


def test_resuming_with_another_setup_is_refused_and_the_db_untouched(tmp_path):
    # A real process, so that its connections are closed and its write-ahead log is folded
    # into study.db before the digest is taken.
    assert run_cli(*search_args(tmp_path)).returncode == 0
    db = tmp_path / "study.db"
    before = digest(db)
    other_space = "space.stem_chs=[8]"
    result = run_here(*search_args(tmp_path, other_space, "study.name=rpi4-synthetic-mobilenet"))
    assert_clean_error(result, "different setup", "space_hash", "study.name=NEW_NAME")
    other_device = run_here(*search_args(tmp_path, "study.name=rpi4-synthetic-mobilenet",
                                        device="host"))
    assert_clean_error(other_device, "device_model_hash")
    other_data = run_here(*search_args(tmp_path, "data.synthetic_images=256"))
    assert_clean_error(other_data, "data_fingerprint")
    assert digest(db) == before
    not_forceable = run_here(*search_args(tmp_path, other_space, "study.force=true",
                                         "study.name=rpi4-synthetic-mobilenet"))
    assert_clean_error(not_forceable, "not possible across a different space")
    assert digest(db) == before
    forced = run_here(*search_args(tmp_path, "data.synthetic_images=256", "study.force=true",
                                  "study.name=rpi4-synthetic-mobilenet", "search.n_trials=4"))
    assert forced.returncode == 0 and "study.force=true" in forced.stdout
    study = optuna.load_study(study_name="rpi4-synthetic-mobilenet", storage=f"sqlite:///{db}")
    assert "data_fingerprint" in study.user_attrs["forced_resumes"][0]
    assert len(complete(db)) == 4


def test_a_study_of_an_earlier_format_is_refused_with_what_to_do(tmp_path):
    from search.study import STUDY_FORMAT

    assert run_here(*search_args(tmp_path, "search.n_trials=1")).returncode == 0
    db = tmp_path / "study.db"
    study = optuna.load_study(study_name="rpi4-synthetic-mobilenet", storage=f"sqlite:///{db}")
    study.set_user_attr("edgenas_study_format", STUDY_FORMAT - 1)
    study.set_user_attr("proxy_hash", "an-old-scheme")
    before = digest(db)
    refused = run_here(*search_args(tmp_path, "search.n_trials=2"))
    assert_clean_error(refused, f"study format {STUDY_FORMAT - 1}", "earlier edgenas",
                       "CHANGELOG.md", "study.name=NEW_NAME", "study.force=true")
    assert "proxy.score" not in refused.stderr  # no hint read from hashes of another scheme
    assert digest(db) == before
    forced = run_here(*search_args(tmp_path, "search.n_trials=2", "study.force=true"))
    assert forced.returncode == 0, forced.stderr
    assert len(complete(db)) == 2


def test_corrupt_or_foreign_sqlite_file_is_never_overwritten(tmp_path):
    db = tmp_path / "study.db"
    db.write_bytes(b"this is not sqlite" * 10)
    before = digest(db)
    assert_clean_error(run_here(*search_args(tmp_path)), "not a SQLite database")
    assert digest(db) == before


def test_password_is_never_printed(tmp_path):
    result = run_here(*search_args(tmp_path,
                                  "storage.url=postgresql://user:s3cret@127.0.0.1:1/db"))
    assert result.returncode != 0
    assert "s3cret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_resumed_seed_never_replays_another_seeds_fresh_search():
    import optuna

    from search.study import WorkerSeededSampler, worker_seed

    assert worker_seed(3, 0) == 3  # a fresh study starts from its seed
    resumed = {worker_seed(s, k) for s in range(5) for k in range(1, 40)}
    assert len(resumed) == 5 * 39 and not resumed & set(range(1000))

    def proposals(seed, first_trial, n=5):
        """Architectures (here: one integer) a worker proposes when it joins at first_trial."""
        study = optuna.create_study(sampler=WorkerSeededSampler(
            lambda s: optuna.samplers.RandomSampler(seed=s), seed))
        for _ in range(first_trial):  # trials of an earlier worker, already in the study
            study.add_trial(optuna.trial.create_trial(params={"x": 0}, value=0.0, distributions={
                "x": optuna.distributions.IntDistribution(0, 10 ** 9)}))
        out = []
        for _ in range(n):
            trial = study.ask()
            out.append(trial.suggest_int("x", 0, 10 ** 9))
            study.tell(trial, 0.0)
        return out

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    assert proposals(1, 0) == proposals(1, 0)  # reproducible
    seed2 = set(proposals(2, 0))
    assert not seed2 & set(proposals(1, 1)) and not seed2 & set(proposals(1, 2))


def test_a_worker_waits_for_the_setup_of_a_study_another_worker_just_created(monkeypatch):
    # Worker B lists the studies between worker A's create_study and A's recording of the
    # setup: B must wait for it and join, not call the study foreign.
    import threading

    import search.study as st
    from search.config import Config
    from search.errors import UserError

    cfg = Config()
    storage = optuna.storages.InMemoryStorage()
    meta = {"space_hash": "s", "objectives": ["accuracy", "latency_ms"], "device": "d"}
    created = optuna.create_study(study_name=cfg.study.name, storage=storage,
                                  directions=["maximize", "minimize"])

    def record_setup():  # worker A, a moment late
        for key, value in meta.items():
            created.set_user_attr(key, value)

    timer = threading.Timer(0.3, record_setup)
    timer.start()
    joined = st.open_study(cfg, storage, meta)
    timer.join()
    assert joined.user_attrs == meta

    # A study of someone else's, empty and never given a setup, is refused after the wait.
    monkeypatch.setattr(st, "SETUP_WAIT_S", 0.2)
    cfg.study.name = "someone-elses"
    optuna.create_study(study_name=cfg.study.name, storage=storage)
    with pytest.raises(UserError, match="not created by this tool"):
        st.open_study(cfg, storage, meta)
