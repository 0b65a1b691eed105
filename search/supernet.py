"""``proxy=supernet``: train the space's weight-sharing supernet once, then score each trial's
sub-network in about a second.

Training (:func:`train_supernet`) distills the cached teacher's soft labels into the supernet
(:class:`spaces.supernet.SuperNet`): the first ``warmup_epochs`` train the largest sub-network
alone; its channels are then sorted by importance, and every later step trains the largest,
``random_archs`` sampled sub-networks (the whole space, or the dimensions progressive
shrinking has opened so far: ``schedule``) and, with ``smallest``, the smallest (the sandwich
rule of BigNAS / slimmable networks) on the same batch, their gradients summed. It runs
where ``search.device`` says (a GPU when present), or on many processes under
``torchrun`` (:mod:`search.train_supernet`). After every epoch a checkpoint (safetensors:
weights and optimizer state, and a JSON manifest) is written atomically, so a killed training
resumes at its last finished epoch; the finished supernet is ``supernet.safetensors`` and
``manifest.json`` in a folder of the cache named by the fingerprint of everything it depends
on (recipe, space, dataset, teacher, bit-widths, seed): another recipe or space trains
another supernet, never reuses this one.

Scoring (:func:`score_sub_network`): the sub-network's batch-norm statistics are recalibrated
on a fixed set of training images, then it is evaluated on the validation images; the score
options of ``proxy=distill`` apply.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from search.config import Config
from search.data import tensor_hash, to_float
from search.errors import UserError
from search.proxy import ProxyData, proxy_score, validation_measures
from search.study import stable_hash
from search.train import cosine_lr, kd_loss, sgd
from spaces.arch import Arch
from spaces.files import atomic_path, write_text
from spaces.space import RandomChoices, sample_arch
from spaces.supernet import SHRINK_PHASES, SuperNet, SuperNetError, extreme_arch, shrinking_arch

__all__ = ["elastic_dimensions", "FORMAT", "load_supernet", "score_sub_network", "SHIPPED",
           "shipped_supernet", "supernet_fingerprint", "SUPERNET_VERSION", "train_supernet"]

FORMAT = "edgenas-supernet"
SUPERNET_VERSION = 1


def supernet_fingerprint(cfg: Config, data: ProxyData, shape: dict,
                         teacher: Optional[dict] = None) -> dict:
    """Everything a trained supernet depends on (its manifest records it; a supernet whose
    fingerprint differs is never used). ``teacher``: the teacher's recipe (what it was
    trained from: the same on every machine); without it, a hash of its logits."""
    p = cfg.proxy
    recipe = p.supernet.recipe()
    recipe.update(train_images=len(data.train_y), temperature=p.temperature, alpha=p.alpha)
    return {"format": FORMAT, "version": SUPERNET_VERSION, "recipe": recipe,
            "space": cfg.space.identity(), "shape": shape, "bits": sorted(cfg.device.bits),
            "seed": cfg.seed, "data": tensor_hash(data.train_x),
            "teacher": teacher if teacher is not None else (
                None if data.train_teacher is None else tensor_hash(data.train_teacher))}


SHIPPED = Path(__file__).resolve().parent / "supernets"


def shipped_supernet(key: str) -> Optional[Path]:
    """The supernet of fingerprint ``key`` that ships with the package, if any."""
    for manifest in sorted(SHIPPED.glob("*/manifest.json")):
        try:
            if json.loads(manifest.read_text()).get("fingerprint_hash") == key:
                return manifest.with_name("supernet.safetensors")
        except (OSError, ValueError):
            continue
    return None


def _new(cfg: Config, shape: dict) -> SuperNet:
    torch.manual_seed(cfg.seed)
    return SuperNet(cfg.space, **shape)


def load_supernet(path: str | Path, fingerprint: dict, cfg: Config, shape: dict) -> SuperNet:
    """The finished supernet in ``path`` (its ``.safetensors``, the manifest beside it).

    Raises:
        UserError: a file that is missing, damaged, cut short, of another format (a
            pickle), or trained for another recipe, space, dataset or teacher.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    manifest_path = path.with_name("manifest.json")
    retrain = (f"delete {path.parent} and run the search again with proxy=supernet to "
               "train it anew")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"supernet manifest {manifest_path} cannot be read ({exc}); "
                        f"{retrain}") from None
    if manifest.get("fingerprint_hash") != stable_hash(fingerprint):
        differs = sorted(k for k in fingerprint
                         if manifest.get("fingerprint", {}).get(k) != fingerprint[k])
        raise UserError(f"supernet {path} was trained for another setup (it differs in: "
                        f"{', '.join(differs) or 'its fingerprint'}); leave proxy.supernet.file "
                        "unset to use (or train) the one of this setup")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:
        raise UserError(f"supernet weights {path} cannot be read ({exc}: damaged, cut short, "
                        f"or not a safetensors file); {retrain}") from None
    if _weights_hash(state) != manifest.get("weights_hash"):
        raise UserError(f"supernet weights {path} do not match their manifest (changed after "
                        f"training); {retrain}")
    net = _new(cfg, shape)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"supernet weights {path} do not fit the space "
                        f"({str(exc).splitlines()[0]}); {retrain}") from None
    return net.eval()


def _weights_hash(state: dict[str, torch.Tensor]) -> str:
    """The hash of a supernet's weights (its state dict) that its manifest records."""
    return tensor_hash(torch.cat([state[k].flatten().float().cpu() for k in sorted(state)]))


def _sandwich(cfg: Config, shape: dict, rng: RandomChoices, epoch: int) -> list[Arch]:
    """The sub-networks of one step: the largest alone during the warm-up, then the largest,
    the smallest (``proxy.supernet.smallest``) and ``random_archs`` sampled ones."""
    bits = cfg.device.bits
    largest = extreme_arch(cfg.space, True, bits=[max(bits)], **shape)
    if epoch < cfg.proxy.supernet.warmup_epochs:
        return [largest]
    sn = cfg.proxy.supernet
    ends = [largest]
    if sn.smallest:
        ends.append(extreme_arch(cfg.space, False, bits=[min(bits)], **shape))
    if sn.schedule == "progressive":
        elastic = elastic_dimensions(epoch - sn.warmup_epochs, sn.epochs - sn.warmup_epochs)
        return ends + [shrinking_arch(rng, cfg.space, elastic, bits=bits, **shape)
                       for _ in range(sn.random_archs)]
    return ends + [sample_arch(rng, cfg.space, bits=bits, **shape)
                   for _ in range(sn.random_archs)]


def elastic_dimensions(epoch: int, epochs: int) -> list[str]:
    """Progressive shrinking: the dimensions elastic in ``epoch`` (counted from the warm-up's
    end) of ``epochs``, the phases of :data:`spaces.supernet.SHRINK_PHASES` over equal
    parts."""
    phase = min(len(SHRINK_PHASES) - 1, epoch * len(SHRINK_PHASES) // max(1, epochs))
    return [d for p in SHRINK_PHASES[:phase + 1] for d in p]


def train_supernet(cfg: Config, data: ProxyData, shape: dict,
                   on_step: Optional[Callable[[int, int], None]] = None,
                   device: str = "cpu", teacher: Optional[dict] = None, shards: int = 1,
                   on_epoch: Optional[Callable[[int, SuperNet], None]] = None
                   ) -> tuple[SuperNet, Path]:
    """The supernet of this setup: ``proxy.supernet.file``, or the cache's, or the one that
    ships with the package (``search/supernets/``) where their fingerprint is this setup's;
    else trained (resumed from its last checkpoint) into the cache. ``on_step(step, total)``
    after every optimizer step; ``teacher``: the teacher's recipe (for the fingerprint).
    Returns the supernet (evaluation mode, on ``device``) and the file of its weights.

    Under ``torch.distributed`` (``torchrun``: :mod:`search.train_supernet`), each of the
    ``world`` processes takes its part of every batch and the gradients are averaged over
    the processes before each step, as ``DistributedDataParallel`` does (each part's batch
    norm sees its own images); process 0 writes the checkpoints and the result. ``shards``
    does the same within one process (the batch in that many parts, gradients averaged):
    one process with ``shards=N`` trains what ``N`` processes do. ``on_epoch(epoch, net)``
    (process 0) after each epoch's checkpoint, the global random state restored after it
    (a benchmark scores the weights as they train without changing what they become)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    sn = cfg.proxy.supernet
    fingerprint = supernet_fingerprint(cfg, data, shape, teacher)
    key = stable_hash(fingerprint)
    if sn.file:
        return load_supernet(sn.file, fingerprint, cfg, shape).to(device), Path(sn.file)
    folder = Path(cfg.cache_dir) / "supernet" / f"{cfg.space.name}-{key}"
    final = folder / "supernet.safetensors"
    if final.is_file() and (folder / "manifest.json").is_file():
        return load_supernet(final, fingerprint, cfg, shape).to(device), final
    shipped = shipped_supernet(key)
    if shipped is not None:
        return load_supernet(shipped, fingerprint, cfg, shape).to(device), shipped
    rank, world = _world()
    if shards < 1 or sn.batch < world * shards:
        raise UserError(f"proxy.supernet.batch={sn.batch} cannot be split over {world} "
                        f"processes x {shards} parts; set a batch of at least {world * shards}")
    net = _new(cfg, shape).to(device)
    steps_per_epoch = max(1, math.ceil(len(data.train_y) / sn.batch))
    total = sn.epochs * steps_per_epoch
    opt = sgd(net, sn.lr)
    start_epoch = 0
    ckpt, ckpt_meta = folder / "checkpoint.safetensors", folder / "checkpoint.json"
    if ckpt.is_file():
        try:
            with safe_open(str(ckpt), "pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(ckpt))
            if meta.get("fingerprint_hash") == key:
                net.load_state_dict({k[len("net."):]: v for k, v in state.items()
                                     if k.startswith("net.")})
                opt = sgd(net, sn.lr)
                _load_momentum(opt, net, state)
                start_epoch = int(meta["epoch"])
        except (OSError, SafetensorError, ValueError, KeyError, RuntimeError):
            start_epoch = 0  # an unreadable checkpoint: train from the start
            net = _new(cfg, shape).to(device)
            opt = sgd(net, sn.lr)
    x, y, teacher = data.train_x, data.train_y, data.train_teacher
    began = time.time()
    for epoch in range(start_epoch, sn.epochs):
        if epoch == sn.warmup_epochs and epoch > 0:
            net.sort_channels()  # the largest's important channels first
            opt = sgd(net, sn.lr)  # (momentum of the old order would be wrong)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        rng = RandomChoices(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(y), generator=gen).to(y.device)
        net.train()
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            lr = cosine_lr(sn.lr, step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            parts = order[i * sn.batch:(i + 1) * sn.batch].chunk(world * shards)
            opt.zero_grad(set_to_none=True)
            archs = _sandwich(cfg, shape, rng, epoch)
            mine = parts[rank * shards:(rank + 1) * shards]
            for idx in mine:
                xb, yb = to_float(x[idx]), y[idx]
                tb = None if teacher is None else teacher[idx].float()
                target = tb
                for j, arch in enumerate(archs):
                    logits = net.run(arch, xb)
                    loss = kd_loss(logits, yb, target, cfg.proxy.temperature, cfg.proxy.alpha)
                    (loss / (len(archs) * len(parts))).backward()
                    if j == 0 and sn.inplace:  # the largest teaches the others
                        target = logits.detach()
            if world > 1:
                _sum_gradients(net)
            opt.step()
            if on_step is not None and rank == 0:
                on_step(step + 1, total)
        if rank == 0:
            _save_checkpoint(folder, net, opt, epoch + 1, key, save_file)
            if on_epoch is not None:
                with torch.random.fork_rng(devices=[]):
                    on_epoch(epoch + 1, net)
        _barrier(world)
    net.eval()
    if rank == 0:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        manifest = {"format": FORMAT, "version": SUPERNET_VERSION, "fingerprint": fingerprint,
                    "fingerprint_hash": key, "weights_hash": _weights_hash(state),
                    "seconds": round(time.time() - began, 1), "device": device,
                    "processes": world, "epochs": sn.epochs}
        with atomic_path(final) as tmp:  # the weights first, then the manifest that vouches
            save_file(state, str(tmp))
        write_text(folder / "manifest.json", json.dumps(manifest, indent=1))
        for f in (ckpt, ckpt_meta):
            f.unlink(missing_ok=True)
    _barrier(world)
    return net, final


def _world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _sum_gradients(net: SuperNet) -> None:
    """Every process's gradients summed into each (each process's loss is already divided by
    the number of parts of the whole batch: the sum is the whole batch's mean), one flat
    all-reduce. Every process trains the same sub-networks in a step, so the weights that
    have gradients are the same in each (the others stay untouched, as in one process)."""
    import torch.distributed as dist

    params = [p for p in net.parameters() if p.grad is not None]
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _load_momentum(opt: torch.optim.Optimizer, net: SuperNet, state: dict) -> None:
    for name, p in net.named_parameters():
        buf = state.get(f"momentum.{name}")
        if buf is not None:
            opt.state[p]["momentum_buffer"] = buf.to(p.device).clone()


def _save_checkpoint(folder: Path, net: SuperNet, opt: torch.optim.Optimizer, epoch: int,
                     key: str, save_file) -> None:
    """Weights and momentum after ``epoch`` epochs in one file, written atomically, with the
    epoch and the fingerprint in its metadata (what a resumed training trusts); then the
    same as JSON beside it, for people."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for name, p in net.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            state[f"momentum.{name}"] = buf.detach().cpu().contiguous()
    meta = {"epoch": str(epoch), "fingerprint_hash": key}
    with atomic_path(folder / "checkpoint.safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)
    write_text(folder / "checkpoint.json", json.dumps({"epoch": epoch, "fingerprint_hash": key}))


@torch.no_grad()
def score_sub_network(net: SuperNet, arch: Arch, data: ProxyData, score: str,
                      calibration_x: torch.Tensor, batch: int = 500) -> dict:
    """A trial's sub-network scored: batch norm recalibrated on ``calibration_x`` (uint8
    training images), then evaluated on the validation images. The measures of
    :func:`search.proxy.validation_measures`, ``score`` (``proxy.score``; for
    fidelity+naswot, its fidelity) and the cost in seconds."""
    start = time.time()
    try:
        weights = net.recalibrate(arch, [to_float(calibration_x[i:i + batch])
                                         for i in range(0, len(calibration_x), batch)])
    except SuperNetError as exc:
        raise UserError(str(exc)) from None
    net.eval()
    logits = torch.cat([net.run(arch, to_float(data.val_x[i:i + batch]), weights)
                        for i in range(0, len(data.val_x), batch)])
    out = validation_measures(logits, data)
    out["trained_score"] = proxy_score(out, "accuracy" if score == "accuracy" else "fidelity")
    out["cost_s"] = time.time() - start
    return out
