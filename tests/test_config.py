"""Config composition with Hydra's compose API (no app launch)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from latency_models.devices import known_devices
from search.config import CONF_DIR, Config, load
from search.errors import UserError


def make(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return load(compose(config_name="config", overrides=list(overrides)))


def test_defaults_compose_into_typed_dataclasses():
    cfg = make("+device=rpi4")
    assert isinstance(cfg, Config)
    assert cfg.device.name == "rpi4" and cfg.device.model_path().is_file()
    assert cfg.data.kind == "fashion_mnist" and cfg.proxy.kind == "distill"
    assert cfg.proxy.score == "fidelity+naswot" and cfg.proxy.calibration_archs == 8
    assert cfg.search.sampler == "tpe" and cfg.search.objectives == ["accuracy", "latency_ms"]
    assert cfg.study.name == "rpi4-fashion_mnist-mobilenet"
    assert cfg.storage.url.startswith("sqlite:///studies/")
    assert len(cfg.space.stages) == 4 and cfg.space.stages[1].stride == 2


def test_each_default_lives_once_config_files_hold_only_what_they_change():
    import yaml
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    defaults.pop("device")  # a device's file names it; its only default is bits
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        group = path.parent.name
        values = yaml.safe_load(path.read_text()) or {}
        base = {"bits": [32, 8]} if group == "device" else defaults.get(group, {})
        same = [k for k, v in values.items()
                if k not in ("name", "kind", "defaults") and base.get(k, object()) == v]
        assert not same, f"{path} restates defaults of search/config.py: {same}"
    top = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    assert set(top) == {"defaults", "hydra"} and top["defaults"][0] == "edgenas"


def test_a_stray_file_in_the_working_folder_never_replaces_a_shipped_device_model(
        tmp_path, monkeypatch):
    from latency_models.devices import MODEL_DIR, device_model_file
    from latency_models.model import DeviceModel

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rpi4.json").write_text("{an old model}")
    assert device_model_file("rpi4", "rpi4.json") == MODEL_DIR / "rpi4.json"
    assert DeviceModel.load(make("+device=rpi4").device.model_path()).device == "rpi4"
    # A device of the user's own (conf/device/NAME.yaml here): its model path is relative to
    # this folder, as latency_models.fit wrote it.
    (tmp_path / "conf" / "device").mkdir(parents=True)
    (tmp_path / "conf" / "device" / "mine.yaml").write_text("name: mine\nmodel: mine.json\n")
    assert device_model_file("mine", "mine.json") == tmp_path / "mine.json"
    assert device_model_file("mine", "/abs/m.json") == Path("/abs/m.json")


def test_overrides_reach_the_dataclasses():
    cfg = make("+device=host", "proxy=zero_cost", "search.n_trials=7", "budget.size_kib=50",
               "search.sampler=tpe", "data=synthetic")
    assert cfg.proxy.kind == "zero_cost" and cfg.proxy.epochs >= 1
    assert cfg.search.n_trials == 7 and cfg.budget.size_kib == 50.0
    assert cfg.study.name == "host-synthetic-mobilenet"


def test_known_devices_are_listed():
    assert {"rpi4", "host"} <= set(known_devices())


@pytest.mark.parametrize("override, needle", [
    ("search.objectives=[latency_ms]", "must include 'accuracy'"),
    ("budget.energy_mj=0", "budget.energy_mj=0"),
    ("budget.train_memory_kib=-5", "budget.train_memory_kib=-5"),
    ("finetune.update=sideways", "finetune.update: update='sideways' is not an update scheme"),
    ("space.kernel=[3,9]", "space.kernel has 9"),
    ("data.kind=mnist", "data.kind='mnist'"),
    ("proxy.alpha=2", "proxy.alpha"),
    ("proxy.score=loss",
     "proxy.score='loss' is not one of ['fidelity', 'accuracy', 'fidelity+naswot']"),
])
def test_invalid_values_are_named(override, needle):
    with pytest.raises(UserError, match=None) as err:
        make("+device=rpi4", override)
    assert needle in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused_with_the_way_out():
    with pytest.raises(UserError) as err:
        make("+device=rpi4", "search.device=cuda")
    assert "search.device=auto" in str(err.value)
    assert make("+device=rpi4", "search.device=auto").search.torch_device() == "cpu"


def test_missing_device_is_a_user_error():
    with pytest.raises(UserError, match=r"\+device=NAME"):
        make()


def test_the_proxy_hash_covers_every_setting_but_unused_ones():
    from dataclasses import asdict

    from search.study import proxy_hash, stable_hash

    scores = [make("+device=rpi4", f"proxy.score={s}")
              for s in ("accuracy", "fidelity", "fidelity+naswot")]
    assert len({proxy_hash(c) for c in scores}) == 3
    fidelity = scores[1]
    assert proxy_hash(fidelity) == stable_hash({k: v for k, v in asdict(fidelity.proxy).items()
                                          if k not in ("calibration_archs", "supernet",
                                                       "rescore", "promote")})
    # what happens after the search does not change what its trials scored, nor do
    # promotions (each promoted trial records the settings of the proxy that scored it)
    for extra in ("proxy.rescore=distill", "proxy.promote.to=distill"):
        assert proxy_hash(make("+device=rpi4", "proxy=supernet", extra)
                          ) == proxy_hash(make("+device=rpi4", "proxy=supernet"))
    # settings the supernet gained later count only away from their default (the studies
    # and supernets made before them keep their hashes)
    assert proxy_hash(make("+device=rpi4", "proxy=supernet", "proxy.supernet.inplace=false")
                      ) == proxy_hash(make("+device=rpi4", "proxy=supernet"))
    assert proxy_hash(make("+device=rpi4", "proxy=supernet", "proxy.supernet.inplace=true")
                      ) != proxy_hash(make("+device=rpi4", "proxy=supernet"))
    # calibration_archs counts only for the score that uses it
    assert proxy_hash(make("+device=rpi4", "proxy.score=fidelity", "proxy.calibration_archs=4")
                      ) == proxy_hash(fidelity)
    combined = [make("+device=rpi4", "proxy.score=fidelity+naswot", f"proxy.calibration_archs={n}")
                for n in (4, 8)]
    assert len({proxy_hash(c) for c in combined} | {proxy_hash(fidelity)}) == 3
    assert proxy_hash(make("+device=rpi4", "proxy.batch=128")) != proxy_hash(scores[2])
    # the supernet's settings count only for proxy=supernet (a distilled study resumes as
    # it was), and there every one does
    assert proxy_hash(make("+device=rpi4", "proxy.supernet.epochs=3")) == proxy_hash(scores[2])
    sn = make("+device=rpi4", "proxy=supernet")
    assert proxy_hash(sn) != proxy_hash(scores[2])
    assert proxy_hash(make("+device=rpi4", "proxy=supernet", "proxy.supernet.epochs=3")
                      ) != proxy_hash(sn)


def test_the_combined_score_needs_at_least_two_calibration_architectures():
    assert make("+device=rpi4", "proxy.score=fidelity+naswot").proxy.calibration_archs == 8
    with pytest.raises(UserError, match="proxy.calibration_archs=1 must be at least 2"):
        make("+device=rpi4", "proxy.score=fidelity+naswot", "proxy.calibration_archs=1")
    with pytest.raises(UserError, match="fidelity\\+naswot"):  # listed among the scores
        make("+device=rpi4", "proxy.score=fidelity+zen")
