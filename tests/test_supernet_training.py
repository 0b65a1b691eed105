"""proxy=supernet: training once (checkpointed, resumable, fingerprinted), loading safely,
scoring a sub-network."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from search.config import CONF_DIR, Config, load
from search.data import load_dataset
from search.errors import UserError
from search.proxy import prepare_proxy_data
from search.supernet import load_supernet, score_sub_network, supernet_fingerprint, train_supernet
from spaces.space import RandomChoices, sample_arch

SMALL_SPACE = ["space.stem_chs=[8]", "space.head_chs=[32,64]", "space.kernel=[3,5]",
               "space.expansion=[2,3]",
               "space.stages=[{stride:1,out_chs:[8],depth:[1],block:[ds,ir]},"
               "{stride:2,out_chs:[8,16],depth:[1,2],block:[ds,ir]}]"]


def make(tmp_path, *overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return load(compose(config_name="config", overrides=[
            "+device=host", "data=synthetic", "proxy=supernet", "proxy.train_images=96",
            "proxy.val_images=64", "proxy.supernet.epochs=2", "proxy.supernet.batch=32",
            "proxy.supernet.calibration_images=32", f"cache_dir={tmp_path}/cache",
            *SMALL_SPACE, *overrides]))


def setup(cfg: Config):
    dataset = load_dataset(cfg.data, cfg.seed)
    data = prepare_proxy_data(cfg, dataset, None)
    # a teacher's logits (any fixed ones) to distill from
    data.train_teacher = torch.randn(len(data.train_y), dataset.num_classes,
                                     generator=torch.Generator().manual_seed(1))
    data.val_teacher = torch.randn(len(data.val_y), dataset.num_classes,
                                   generator=torch.Generator().manual_seed(2))
    shape = dict(in_chans=dataset.in_chans, input_size=dataset.size,
                 num_classes=dataset.num_classes)
    return data, shape


def test_trained_once_then_loaded_and_a_sub_network_scored(tmp_path):
    cfg = make(tmp_path)
    data, shape = setup(cfg)
    steps = []
    net, path = train_supernet(cfg, data, shape, on_step=lambda s, n: steps.append((s, n)))
    assert steps[-1] == (2 * 3, 2 * 3) and path.is_file()
    manifest = json.loads(path.with_name("manifest.json").read_text())
    assert manifest["fingerprint"] == supernet_fingerprint(cfg, data, shape)
    assert not (path.parent / "checkpoint.safetensors").exists()
    again, same = train_supernet(cfg, data, shape, on_step=lambda s, n: 1 / 0)  # no training
    assert same == path
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 again.state_dict().values()))
    arch = sample_arch(RandomChoices(3), cfg.space, bits=cfg.device.bits, **shape)
    out = score_sub_network(again, arch, data, "fidelity", data.train_x[:32])
    assert 0 < out["trained_score"] <= 1 and 0 <= out["accuracy"] <= 1
    assert out["trained_score"] == pytest.approx(
        torch.exp(torch.tensor(-out["teacher_kl"])).item())
    # another recipe is another supernet, never this one
    other = make(tmp_path, "proxy.supernet.lr=0.1")
    assert supernet_fingerprint(other, data, shape) != manifest["fingerprint"]
    with pytest.raises(UserError, match="another setup.*recipe"):
        load_supernet(path, supernet_fingerprint(other, data, shape), other, shape)


def test_a_killed_training_resumes_at_its_last_epoch_to_the_same_weights(tmp_path):
    cfg = make(tmp_path / "a")
    data, shape = setup(cfg)
    whole, _ = train_supernet(cfg, data, shape)

    cut = make(tmp_path / "b")

    def kill(step: int, total: int) -> None:
        if step == 4:  # during the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet(cut, data, shape, on_step=kill)
    folder = next((tmp_path / "b" / "cache" / "supernet").iterdir())
    assert json.loads((folder / "checkpoint.json").read_text())["epoch"] == 1
    assert not (folder / "supernet.safetensors").exists()  # nothing that loads as complete
    seen = []
    resumed, _ = train_supernet(cut, data, shape, on_step=lambda s, n: seen.append(s))
    assert seen[0] == 4  # the second epoch again, not the first
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


@pytest.mark.parametrize("damage", ["cut", "pickle", "edited"])
def test_a_damaged_supernet_file_is_named_with_what_to_do(tmp_path, damage):
    cfg = make(tmp_path)
    data, shape = setup(cfg)
    _, path = train_supernet(cfg, data, shape)
    good = path.read_bytes()
    if damage == "cut":
        path.write_bytes(good[:len(good) // 2])
    elif damage == "pickle":
        torch.save({"w": torch.zeros(2)}, path)
    else:
        from safetensors.torch import load_file, save_file

        state = load_file(str(path))
        key = next(iter(state))
        state[key] = state[key] + 1
        save_file(state, str(path))
    with pytest.raises(UserError, match=f"{path}.*delete .* and run the search again"):
        load_supernet(path, supernet_fingerprint(cfg, data, shape), cfg, shape)


def test_a_supernet_that_ships_with_the_package_is_used_where_its_fingerprint_matches(
        tmp_path, monkeypatch):
    import shutil

    import search.supernet as sn

    cfg = make(tmp_path)
    data, shape = setup(cfg)
    teacher = {"model": "a teacher's recipe"}
    _, path = train_supernet(cfg, data, shape, teacher=teacher)
    shipped = tmp_path / "supernets" / "synthetic-mobilenet"
    shipped.mkdir(parents=True)
    for name in ("supernet.safetensors", "manifest.json"):
        shutil.copyfile(path.with_name(name), shipped / name)
    shutil.rmtree(path.parent)  # not in the cache any more
    monkeypatch.setattr(sn, "SHIPPED", tmp_path / "supernets")
    _, found = train_supernet(cfg, data, shape, teacher=teacher, on_step=lambda s, n: 1 / 0)
    assert found == shipped / "supernet.safetensors"
    # another teacher: not this one (trains its own)
    steps = []
    _, other = train_supernet(cfg, data, shape, teacher={"model": "another"},
                              on_step=lambda s, n: steps.append(s))
    assert other != found and steps


def _train_rank(rank: int, world: int, tmp_path, out: str) -> None:
    """One process of a ``world``-process training (torch.distributed, gloo on the CPU)."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=rank,
                            world_size=world)
    try:
        cfg = make(tmp_path / "shared", "proxy.supernet.random_archs=2")
        data, shape = setup(cfg)
        net, _ = train_supernet(cfg, data, shape)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_what_one_process_does_on_the_same_data(tmp_path, monkeypatch):
    """Data-parallel training under torch.distributed (two CPU processes, gloo, as torchrun
    starts them) ends with the weights one process gets from the same batches split in two
    parts; both processes hold the same weights, and only the first writes the result."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # gloo's sockets on the loopback only
    mp.spawn(_train_rank, args=(2, tmp_path, str(tmp_path)), nprocs=2, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    cfg = make(tmp_path / "alone", "proxy.supernet.random_archs=2")
    data, shape = setup(cfg)
    alone, _ = train_supernet(cfg, data, shape, shards=2)
    for k, v in alone.state_dict().items():
        assert torch.allclose(v, ranks[0][k], atol=1e-5), k
    plain, _ = train_supernet(make(tmp_path / "plain", "proxy.supernet.random_archs=2"),
                              data, shape)  # one part: each batch norm sees the whole batch
    assert not all(torch.allclose(v, plain.state_dict()[k], atol=1e-5)
                   for k, v in alone.state_dict().items())
    written = list((tmp_path / "shared" / "cache" / "supernet").glob("*/supernet.safetensors"))
    assert len(written) == 1 and not list(written[0].parent.glob("checkpoint*"))


def test_a_batch_too_small_to_split_over_the_processes_is_refused_before_training(tmp_path):
    cfg = make(tmp_path)  # batch 32
    data, shape = setup(cfg)
    with pytest.raises(UserError, match=r"proxy.supernet.batch=32 cannot be split over 1 "
                                        r"processes x 64 parts; set a batch of at least 64"):
        train_supernet(cfg, data, shape, shards=64)
    assert not (tmp_path / "cache" / "supernet").exists()


def test_the_shipped_supernet_is_the_one_of_the_default_search(tmp_path):
    """``python -m search +device=rpi4 proxy=supernet`` on a fresh clone finds the supernet
    that ships (a change of a default that would leave it unused fails here)."""
    from search.study import stable_hash
    from search.supernet import SHIPPED, shipped_supernet
    from search.teacher import TeacherCache

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = load(compose(config_name="config", overrides=[
            "+device=rpi4", "proxy=supernet", f"cache_dir={tmp_path}/cache"]))
    try:
        dataset = load_dataset(cfg.data, cfg.seed)
    except UserError:
        pytest.skip("Fashion-MNIST is not installed (make setup installs it)")
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)  # its recipe only: nothing trains
    data = prepare_proxy_data(cfg, dataset, None)
    shape = dict(in_chans=dataset.in_chans, input_size=dataset.size,
                 num_classes=dataset.num_classes)
    fingerprint = supernet_fingerprint(cfg, data, shape, teacher.recipe)
    path = shipped_supernet(stable_hash(fingerprint))
    assert path is not None and path.parent.parent == SHIPPED
    net = load_supernet(path, fingerprint, cfg, shape)  # weights hash checked
    assert path.stat().st_size < 10 * 2 ** 20 and sum(p.numel() for p in net.parameters())
