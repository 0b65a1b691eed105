import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from search.data import load_image_folder, make_synthetic
from search.errors import UserError
from search.proxy_config import TeacherConfig
from search.teacher import TeacherCache, load_weights
from search.train import accuracy, predict_logits


def test_image_folder_loads_classes_and_holds_out_a_test_split(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "eel"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png")
    ds = load_image_folder(str(tmp_path), in_chans=1, size=16)
    assert ds.num_classes == 3 and ds.in_chans == 1 and ds.size == 16
    assert len(ds.train_y) + len(ds.test_y) == 30 and len(ds.test_y) == 3
    train, val = ds.split(5)
    assert len(set(train.tolist()) & set(val.tolist())) == 0


class Boom:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "teacher.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": Boom(str(marker))}, f)
    with pytest.raises(UserError, match="never unpickled"):
        load_weights(path)
    assert not marker.exists()
    with open(path, "wb") as f:  # torch.save's zip format with an object inside
        torch.save({"weight": Boom(str(marker))}, f)
    with pytest.raises(UserError, match="refused"):
        load_weights(path)
    assert not marker.exists()


def test_teacher_checkpoint_for_another_model_is_refused(tmp_path):
    ds = make_synthetic(64, 1, 28, 4)
    ckpt = tmp_path / "t.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(ckpt))
    cache = TeacherCache(TeacherConfig(model="resnet10t", checkpoint=str(ckpt)), ds, tmp_path,
                         val_images=8)
    with pytest.raises(UserError, match="does not fit"):
        cache.model()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_weights(bad)


def test_teacher_is_trained_once_and_cached(tmp_path):
    ds = make_synthetic(128, 1, 28, 4)
    cfg = TeacherConfig(model="resnet10t", epochs=1, batch=64)
    first = TeacherCache(cfg, ds, tmp_path, val_images=16)
    logits = first.logits(torch.arange(10))
    assert logits.shape == (10, 4) and logits.dtype == torch.float16
    assert (first.dir / "model.safetensors").is_file()
    # the recorded test accuracy is the cached model's, measured on the test split
    measured = accuracy(predict_logits(first.model(), ds.test_x), ds.test_y)
    assert 0 < measured <= 1 and first.meta["test_accuracy"] == pytest.approx(measured)
    again = TeacherCache(cfg, ds, tmp_path, val_images=16)
    assert again.dir == first.dir
    stamp = (first.dir / "model.safetensors").stat().st_mtime_ns
    assert torch.equal(again.logits(torch.arange(10)), logits)
    assert (first.dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(first.dir.glob("*.tmp"))
