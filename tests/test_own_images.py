"""Camera-resolution images: the mobilenet_224 space, image folders at their own size, and
calibrating a device model to the machine at hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.conftest import run_cli, run_here, search_args

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def space(name: str):
    from search.config import space_options

    return space_options()[name]


def write_photos(root: Path, sizes=((100, 100),), classes: int = 2, per_class: int = 6,
                 test: bool = False) -> None:
    rng = np.random.default_rng(0)
    for folder in ([root, root / "test"] if test else [root]):
        for c in range(classes):
            (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                img[..., c] = 255  # a class-dependent colour
                Image.fromarray(img).save(folder / f"c{c}" / f"{i}.png")


# ---- the space follows the data ------------------------------------------------------------
def test_mobilenet_224_leaves_out_resolutions_above_the_images():
    s = space("mobilenet_224")
    assert s.for_input(160).resolution == [96, 128, 160]
    assert s.for_input(500).resolution == [96, 128, 160, 192, 224]
    assert s.for_input(100).resolution == [96]


def test_the_default_space_is_unchanged_by_its_data():
    from spaces.space import SpaceConfig

    default = SpaceConfig()
    assert default.for_input(28) is default
    # what fingerprints a study and a supernet: the fields they always had
    assert "input_sizes" not in default.identity() and "upsample" not in default.identity()


@pytest.mark.parametrize("name,size,words", [
    ("mobilenet", 160, ("space=mobilenet does not take images of 160 px", "larger",
                        "space=mobilenet_224")),
    ("mobilenet_224", 28, ("smaller than its smallest resolution, 96 px", "space=mobilenet")),
    ("mobilenet_224", 64, ("space=mobilenet (",)),
])
def test_a_space_that_cannot_take_the_images_names_one_that_can(name, size, words):
    from search.config import Config, fit_space
    from search.errors import UserError

    cfg = Config()
    cfg.space = space(name)
    with pytest.raises(UserError) as err:
        fit_space(cfg, size)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_sampled_camera_architectures_build_and_price_without_extrapolating():
    """rpi4, pixel3 and jetson_tx2 were measured on FBNet's blocks of 224 px images: this
    space's networks lie inside what they were measured on (all but a few per cent: a 7x7
    kernel at 112 px, a squeeze-excitation's pooling over a large map). The default space's
    28 px networks lie below it, and stay flagged on the CPUs."""
    import torch

    from latency_models.devices import MODEL_DIR
    from latency_models.model import DeviceModel
    from spaces.build import build_model
    from spaces.space import RandomChoices, SpaceConfig, sample_arch

    s = space("mobilenet_224").for_input(224)
    archs = [sample_arch(RandomChoices(i), s, in_chans=3, input_size=224, num_classes=5,
                         bits=[32, 8]) for i in range(60)]
    small = [sample_arch(RandomChoices(i), SpaceConfig(), in_chans=1, input_size=28,
                         num_classes=10, bits=[32, 8]) for i in range(20)]
    model = build_model(archs[0]).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 5)
    for device in ("rpi4", "pixel3", "jetson_tx2"):
        m = DeviceModel.load(MODEL_DIR / f"{device}.json")
        flagged = sum(p.provenance["extrapolated"] for p in m.price_many(archs))
        assert flagged <= 6, (device, flagged)
        if device != "jetson_tx2":  # on its GPU a 28 px network is mostly per-op launches,
            # a cost measured on every op; on the CPUs it is work on sizes never measured
            assert all(p.provenance["extrapolated"] for p in m.price_many(small)), device


def test_spaces_sample_takes_a_space(tmp_path):
    result = run_here("-m", "spaces.sample", "n=1", "space=mobilenet_224", "input=3x96x96",
                      f"out={tmp_path}")
    assert result.returncode == 0, result.stderr
    arch = json.loads((tmp_path / "0" / "arch.json").read_text())
    assert arch["resolution"] == 96 and len(arch["stages"]) == 6
    graph = onnx.load(str(tmp_path / "0" / "model.onnx"))
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 96, 96]
    bad = run_here("-m", "spaces.sample", "n=1", "space=mobilenet_224", "input=3x28x28",
                   f"out={tmp_path}/bad")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "does not take images of 28 px" in bad.stderr and "space=" in bad.stderr


# ---- image folders at their own size -------------------------------------------------------
def test_an_image_folder_trains_at_its_images_size(tmp_path):
    from search.data import load_image_folder

    write_photos(tmp_path, sizes=((100, 100),))
    data = load_image_folder(str(tmp_path), 3, None)
    assert data.size == 100 and data.train_x.shape[1:] == (3, 100, 100) and not data.notes


def test_mixed_sizes_are_resized_to_the_median_and_said_once(tmp_path):
    from search.data import load_image_folder

    write_photos(tmp_path, sizes=((120, 90), (100, 100), (200, 200)))
    data = load_image_folder(str(tmp_path), 3, None)
    assert data.size == 100
    (note,) = data.notes
    assert "3 sizes" in note and "100 x 100" in note and "data.size=N" in note
    # a set size is a choice: nothing to say
    assert not load_image_folder(str(tmp_path), 3, 64).notes


def test_non_square_images_are_centre_cropped_not_squashed(tmp_path):
    from search.data import load_image_folder

    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(3):
            img = np.zeros((40, 120, 3), np.uint8)
            img[:, 40:80] = 255  # a white square in the middle of a black strip
            Image.fromarray(img).save(tmp_path / f"c{c}" / f"{i}.png")
    data = load_image_folder(str(tmp_path), 1, None)
    assert data.size == 40
    assert data.train_x.float().mean() > 250  # only the centre square is left


def test_images_smaller_than_the_space_are_refused_before_any_work(tmp_path):
    write_photos(tmp_path / "imgs", sizes=((48, 48),))
    result = run_here(*search_args(tmp_path, "space=mobilenet_224", "data=imagefolder",
                                   f"data.root={tmp_path}/imgs"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    text = result.stderr
    assert "48 px" in text and "smallest resolution, 96 px" in text
    assert "space=mobilenet" in text and not (tmp_path / "study.db").exists()


def test_fashion_mnist_size_cannot_be_set(tmp_path):
    result = run_here(*search_args(tmp_path, "data=fashion_mnist", "data.size=64"))
    assert result.returncode != 0 and "Fashion-MNIST's images are 28 x 28" in result.stderr


def test_camera_images_search_and_export_at_their_size(tmp_path):
    """A folder of 96 px photos: a search in space=mobilenet_224 and an export whose ONNX
    files take 96 px images."""
    write_photos(tmp_path / "imgs", sizes=((96, 96),), per_class=8, test=True)
    args = search_args(tmp_path, "space=mobilenet_224", "data=imagefolder",
                       f"data.root={tmp_path}/imgs", "search.n_trials=2", "data.val_images=4")
    result = run_here(*args)
    assert result.returncode == 0, result.stderr
    export = run_here("-m", "search.export", *args[2:], "select=best", "export.epochs=1",
                      "proxy.teacher.epochs=1", f"out={tmp_path}/export")
    assert export.returncode == 0, export.stderr
    (folder,) = (tmp_path / "export").glob("trial_*")
    for name in ("model.onnx", "model.int8.onnx"):
        graph = onnx.load(str(folder / name))
        dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
        assert dims[1:] == [3, 96, 96], (name, dims)
    arch = json.loads((folder / "arch.json").read_text())
    assert arch["input_size"] == 96 and arch["resolution"] == 96


@pytest.mark.slow
@pytest.mark.parametrize("proxy", [
    ("proxy=distill", "proxy.train_images=16", "proxy.epochs=1", "proxy.score=accuracy",
     "proxy.teacher.epochs=1"),
    ("proxy=supernet", "proxy.train_images=16", "proxy.supernet.epochs=1",
     "proxy.supernet.warmup_epochs=0", "proxy.supernet.calibration_images=8",
     "proxy.supernet.random_archs=0", "proxy.score=accuracy", "proxy.teacher.epochs=1"),
], ids=["distill", "supernet"])
def test_the_training_proxies_score_camera_architectures(tmp_path, proxy):
    """The distilled proxy and the supernet (trained on first use for this space and data)
    score trials of space=mobilenet_224 on 96 px photos."""
    import optuna

    write_photos(tmp_path / "imgs", sizes=((96, 96),), per_class=8)
    result = run_here(*search_args(tmp_path, "space=mobilenet_224", "data=imagefolder",
                                   f"data.root={tmp_path}/imgs", "search.n_trials=2",
                                   "data.val_images=4", "proxy.val_images=4", *proxy))
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="rpi4-imagefolder-mobilenet_224",
                              storage=f"sqlite:///{tmp_path}/study.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    assert {t.user_attrs["proxy"] for t in done} == {proxy[0].split("=")[1]}
    assert all(0 <= t.user_attrs["proxy_accuracy"] <= 1 for t in done)


# ---- calibrating to this machine -----------------------------------------------------------
def test_steadiness_tells_noise_and_throttling_from_a_quiet_machine():
    from latency_models.calibrate import steadiness

    rng = np.random.default_rng(0)
    quiet = [list(1 + 0.005 * rng.standard_normal(15)) for _ in range(50)]
    busy = [list(1 + 0.3 * rng.random(15)) for _ in range(50)]
    hot = [list(np.linspace(1, 1.3, 15)) for _ in range(50)]
    assert steadiness(quiet)[0] < 0.02 and abs(steadiness(quiet)[1]) < 0.01
    assert steadiness(busy)[0] > 0.15
    assert steadiness(hot)[1] > 0.15


def test_transfer_keeps_the_network_correction():
    from latency_models.devices import MODEL_DIR
    from latency_models.model import DeviceModel
    from latency_models.ops import arch_ops, arch_units
    from spaces.space import RandomChoices, SpaceConfig, sample_arch

    host = DeviceModel.load(MODEL_DIR / "host.json")
    archs = [sample_arch(RandomChoices(i), SpaceConfig(), in_chans=1, input_size=28,
                         num_classes=10, bits=[32, 8]) for i in range(40)]
    truth = [1.5 * host.price(a).latency_ms for a in archs]  # a machine 1.5 times slower
    units = [arch_units(a, ()) for a in archs]
    kept = DeviceModel("slow", 15).transfer(host, [arch_ops(a) for a in archs], truth,
                                            units=units, archs=archs)
    assert kept.correction is host.correction
    ratio = [kept.price(a).latency_ms / t for a, t in zip(archs, truth)]
    assert np.median(np.abs(np.array(ratio) - 1)) < 0.03


def test_calibrate_refuses_an_existing_name_and_writes_nothing(tmp_path):
    result = run_here("-m", "latency_models.calibrate", "+device=host", "name=rpi4",
                      cwd=tmp_path)
    assert result.returncode == 2 and "exists already" in result.stderr
    (tmp_path / "conf" / "device").mkdir(parents=True)
    (tmp_path / "conf" / "device" / "mine.yaml").write_text("name: mine\n")
    result = run_here("-m", "latency_models.calibrate", "+device=host", "name=mine",
                      cwd=tmp_path)
    assert result.returncode == 2 and "mine.yaml" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "conf" / "device").iterdir()) == ["mine.yaml"]


def test_calibrate_on_an_unsteady_machine_says_so_and_writes_nothing(tmp_path, monkeypatch):
    import latency_models.calibrate as cal
    import latency_models.profile as prof

    def fake_profile(n, seed, out, threads, rounds, runs, round_ms, announce):
        Path(out).write_text("arch_id,precision,median_ms\n")
        round_ms += [list(np.linspace(1, 1.4, rounds)) for _ in range(n)]

    monkeypatch.setattr(prof, "profile", fake_profile)
    monkeypatch.chdir(tmp_path)
    cfg = cal.CalibrateConfig(name="hot", networks=30)
    cfg.device.name, cfg.device.model = "host", "host.json"
    assert cal.calibrate(cfg) == 1
    assert not (tmp_path / "conf").exists()


@pytest.mark.slow
def test_calibrate_writes_a_device_the_search_finds(tmp_path):
    result = run_cli("-m", "latency_models.calibrate", "+device=host", "name=here",
                     "networks=30", "rounds=3", "runs=3", "max_spread=1", "max_drift=1",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "conf" / "device"
    assert {p.name for p in folder.iterdir()} == {"here.yaml", "here.json",
                                                  "here.measurements.csv"}
    assert "model: conf/device/here.json" in (folder / "here.yaml").read_text()
    model = json.loads((folder / "here.json").read_text())
    assert model["meta"]["transferred_from"]["device"] == "host"
    arch = tmp_path / "arch.json"
    from spaces.space import RandomChoices, SpaceConfig, sample_arch

    arch.write_text(sample_arch(RandomChoices(0), SpaceConfig(), in_chans=1, input_size=28,
                                num_classes=10, bits=[32, 8]).to_json())
    predicted = run_cli("-m", "latency_models.predict", "+device=here", f"model={arch}",
                        "format=jsonl", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    (line,) = predicted.stdout.splitlines()
    assert json.loads(line)["provenance"]["device"] == "here"


def test_a_small_folder_trains_the_teacher_long_enough(tmp_path):
    """Two epochs of a few thousand photos are a few dozen steps: the teacher would stay
    near chance. It trains at least TEACHER_MIN_STEPS steps (at most 20 times the epochs);
    Fashion-MNIST's two epochs, and so its cached teacher, are unchanged."""
    from search.data import make_synthetic
    from search.proxy_config import TeacherConfig
    from search.teacher import TEACHER_MIN_STEPS, TeacherCache

    small = make_synthetic(2000, 1, 8, 4)
    assert TeacherCache(TeacherConfig(), small, tmp_path, 100).epochs == 40  # capped
    stretched = TeacherCache(TeacherConfig(batch=16), small, tmp_path, 100)
    steps = stretched.epochs * 119  # 1,900 training images in batches of 16
    assert TEACHER_MIN_STEPS <= steps < TEACHER_MIN_STEPS + 1
    assert stretched.recipe["epochs"] == stretched.epochs
    large = make_synthetic(60000, 1, 2, 2)
    teacher = TeacherCache(TeacherConfig(), large, tmp_path, 5000)
    assert teacher.epochs == 2 and isinstance(teacher.epochs, int)
    tiny = make_synthetic(500, 1, 8, 4)  # a smoke test's folder: not stretched
    assert TeacherCache(TeacherConfig(), tiny, tmp_path, 100).epochs == 2
