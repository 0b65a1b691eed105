"""Accuracy proxies: the distilled proxy (default) and a zero-cost score (no training).

The distilled proxy trains the candidate as it will be deployed: dense for the first half of
its budget, then physically pruned to the stage ratios and fine-tuned with fake quantization at
its bit-widths, against the cached teacher's soft labels, on a fixed training subset; it is
scored on held-out validation images carved from the training split (never the test split).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from search.config import Config
from search.data import Dataset, tensor_hash, to_float
from search.proxy_config import COMBINED_SCORE, ProxyConfig
from search.teacher import TeacherCache
from search.train import Recipe, Trainer, accuracy, predict_logits
from spaces.arch import Arch
from spaces.build import build_model
from spaces.prune import prune_model
from spaces.quant import attach_fake_quant, detach_fake_quant

__all__ = ["calibrate", "calibration_archs", "calibration_record", "calibration_steps",
           "CALIBRATION_VERSION", "COMBINED", "combined_score", "distilled_proxy", "naswot",
           "prepare_proxy_data", "proxy_recipe", "proxy_score", "ProxyData", "synflow",
           "teacher_kl", "to_device", "train_candidate", "train_final", "validation_measures",
           "zero_cost_proxy", "zero_cost_scores"]


@dataclass
class ProxyData:
    """The proxy's fixed training subset and validation images, with teacher logits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_teacher: Optional[torch.Tensor]
    val_x: torch.Tensor
    val_y: torch.Tensor
    val_teacher: Optional[torch.Tensor]


def prepare_proxy_data(cfg: Config, dataset: Dataset,
                       teacher: Optional[TeacherCache]) -> ProxyData:
    train_idx, val_idx = dataset.split(cfg.data.val_images, cfg.seed)
    train_idx = train_idx[:cfg.proxy.train_images]
    val_idx = val_idx[:cfg.proxy.val_images]
    return ProxyData(
        dataset.train_x[train_idx], dataset.train_y[train_idx],
        None if teacher is None else teacher.logits(train_idx),
        dataset.train_x[val_idx], dataset.train_y[val_idx],
        None if teacher is None else teacher.logits(val_idx),
    )


def to_device(data: ProxyData, device: str) -> ProxyData:
    """The proxy's tensors on ``device`` (training then runs there)."""
    return ProxyData(*(None if t is None else t.to(device) for t in (
        data.train_x, data.train_y, data.train_teacher, data.val_x, data.val_y,
        data.val_teacher)))


def train_candidate(arch: Arch, x: torch.Tensor, y: torch.Tensor,
                    teacher: Optional[torch.Tensor], recipe: Recipe, seed: int = 0,
                    on_step: Optional[Callable[[int], None]] = None,
                    checkpoint: Optional[tuple[float, Callable[[nn.Module], bool]]] = None,
                    prune_at: float = 0.5,
                    start: Optional[dict[str, torch.Tensor]] = None) -> nn.Module:
    """Train ``arch`` as deployed: dense, prune at ``prune_at`` of the steps (half-way by
    default), fine-tune with fake quantization. ``prune_at=0`` trains the pruned widths from
    the start (no dense phase, no weights carried over by the pruning).

    Returns the pruned model with fake quantization still attached (detach it for export).
    ``on_step`` is called after every optimizer step (for progress bars). ``checkpoint``:
    ``(fraction, fn)``: after that fraction of the steps ``fn(model)`` is called (the model as
    it is then: dense before the half-way prune, pruned after); if it returns True, training
    stops there and that model is returned. ``start``: the weights the first phase's model
    starts from (its state dict: dense widths when there is a dense phase), e.g. a supernet's
    (:meth:`spaces.supernet.SuperNet.extract`); a fresh initialisation without it.
    """
    torch.manual_seed(seed)
    quantized = any(b < 32 for b in arch.bits)
    if not 0.0 <= prune_at < 1.0:
        raise ValueError(f"prune_at must be in [0, 1), got {prune_at}")
    dense_phase = arch.is_pruned and prune_at > 0
    # dense widths, or the deployed ones when there is no dense phase (equal when unpruned)
    model = build_model(arch, pruned=not dense_phase)
    if start is not None:
        model.load_state_dict(start)
    if not dense_phase and quantized:
        attach_fake_quant(model, arch)
    model.to(x.device)  # trains where the data is (a GPU if the caller put it there)
    trainer = Trainer(model, x, y, teacher, recipe, seed=seed)
    total = trainer.total_steps
    half = max(1, int(total * prune_at)) if dense_phase else None  # 0.5: total // 2
    check_at = None if checkpoint is None else min(total, max(1, round(checkpoint[0] * total)))
    for stop in sorted({s for s in (half, check_at) if s is not None and s < total}):
        trainer.run(steps=stop - trainer.step, on_step=on_step)
        if stop == check_at and checkpoint[1](trainer.model):
            return trainer.model.eval()
        if stop == half:
            model = prune_model(trainer.model.cpu(), arch)
            if quantized:
                attach_fake_quant(model, arch)
            trainer.set_model(model.to(x.device))
    trainer.run(on_step=on_step)
    return trainer.model.eval()


def train_final(arch: Arch, x: torch.Tensor, y: torch.Tensor, teacher: Optional[torch.Tensor],
                recipe: Recipe, seed: int = 0,
                on_step: Optional[Callable[[int], None]] = None) -> nn.Module:
    """The export's final training of ``arch``: :func:`train_candidate` over the whole
    ``recipe``, then fake quantization removed. Returns the float model (pruned widths, the
    trained weights) on the CPU in eval mode, ready to export."""
    model = train_candidate(arch, x, y, teacher, recipe, seed=seed, on_step=on_step)
    return detach_fake_quant(model.cpu()).eval()


def proxy_recipe(p: ProxyConfig) -> Recipe:
    """The training recipe of the distilled proxy's budget."""
    return Recipe(epochs=p.epochs, batch=p.batch, lr=p.lr, temperature=p.temperature,
                  alpha=p.alpha)


def teacher_kl(logits: torch.Tensor, teacher: torch.Tensor) -> float:
    """KL(teacher || candidate) in nats, averaged over the images (temperature 1)."""
    return float(F.kl_div(F.log_softmax(logits.float(), 1), F.log_softmax(teacher.float(), 1),
                          reduction="batchmean", log_target=True))


def validation_measures(logits: torch.Tensor, data: ProxyData) -> dict:
    """A trained candidate's validation ``accuracy`` and, with the teacher's logits, its
    agreement with the teacher's top-1 (``teacher_agreement``) and ``teacher_kl``."""
    out = {"accuracy": accuracy(logits, data.val_y)}
    if data.val_teacher is not None:
        teacher = data.val_teacher.float()
        out["teacher_agreement"] = float((logits.argmax(1) == teacher.argmax(1)).float().mean())
        out["teacher_kl"] = teacher_kl(logits, teacher)
    return out


def proxy_score(measures: dict, score: str) -> float:
    """The proxy's score (``proxy.score``) from :func:`validation_measures`: validation
    ``accuracy``, or ``fidelity`` to the teacher, exp(-KL(teacher || candidate)), in (0, 1]."""
    if score == "accuracy":
        return measures["accuracy"]
    # fidelity, also the trained part of fidelity+naswot (see combined_score)
    if "teacher_kl" not in measures:
        raise ValueError("proxy.score=fidelity needs the teacher's logits on the validation "
                         "images")
    return math.exp(-measures["teacher_kl"])


def distilled_proxy(arch: Arch, data: ProxyData, cfg: Config,
                    stop_check: Optional[Callable[[float], Optional[str]]] = None,
                    rescore: Optional[Callable[[float], float]] = None,
                    on_step: Optional[Callable[[int], None]] = None) -> dict:
    """Train ``arch`` briefly and score it on the validation images: ``score`` (what
    ``proxy.score`` asks for: the study's accuracy objective), ``accuracy``, agreement with
    the teacher's top-1 and KL divergence from its predictions (``teacher_kl``, nats), and
    the cost in seconds.

    With ``proxy.early_stop.at`` set, the partial model is scored at that checkpoint
    (``checkpoint_score``, ``checkpoint_accuracy``) and ``stop_check(checkpoint_score)`` may
    end the training there by returning a reason; then ``score`` and ``accuracy`` are the
    checkpoint's, ``stopped_at`` the fraction of the budget spent and ``stopped_by`` the
    reason. ``rescore`` maps the trained score to the objective's (``proxy.score``
    fidelity+naswot: :func:`combined_score`), at the checkpoint and at the end alike; the
    trained score is kept as ``trained_score``. ``on_step`` is called after every optimizer
    step (for progress bars).
    """
    start = time.time()
    p = cfg.proxy
    rescore = rescore or (lambda v: v)
    recipe = proxy_recipe(p)
    out: dict = {}

    def at_checkpoint(model: nn.Module) -> bool:
        measures = validation_measures(predict_logits(model, data.val_x), data)
        out["checkpoint_accuracy"] = measures["accuracy"]
        out["checkpoint_score"] = rescore(proxy_score(measures, p.score))
        reason = None if stop_check is None else stop_check(out["checkpoint_score"])
        if reason:
            out["stopped_at"], out["stopped_by"] = p.early_stop.at, reason
        return bool(reason)

    checkpoint = None if p.early_stop.at is None else (p.early_stop.at, at_checkpoint)
    model = train_candidate(arch, data.train_x, data.train_y, data.train_teacher, recipe,
                            seed=cfg.seed, on_step=on_step, checkpoint=checkpoint)
    out.update(validation_measures(predict_logits(model, data.val_x), data))
    out["trained_score"] = proxy_score(out, p.score)
    out["score"] = rescore(out["trained_score"])
    if checkpoint is not None and "checkpoint_score" not in out:
        # a budget too short to stop within
        out["checkpoint_accuracy"], out["checkpoint_score"] = out["accuracy"], out["score"]
    out["cost_s"] = time.time() - start
    return out


COMBINED = COMBINED_SCORE
CALIBRATION_VERSION = 1


def combined_score(fidelity: float, naswot_score: float, calibration: dict) -> float:
    """``proxy.score=fidelity+naswot``: the proxy's fidelity and NASWOT, each standardized by
    its mean and spread over the calibration architectures, summed with equal weights.

    On the proxy benchmark's 48 architectures the sum ranks at Spearman 0.848 against full
    training with the scales :func:`calibrate` gives (0.857 with the 48's own), where
    fidelity alone ranks at 0.790 (equal weights, nothing fitted to the ground truth;
    ``scripts/results/proxy/``). Fixed scales, not the study's own: a trial's value cannot
    depend on the trials after it."""
    f, n = calibration["fidelity"], calibration["naswot"]
    return (fidelity - f["mean"]) / f["std"] + (naswot_score - n["mean"]) / n["std"]


def calibration_steps(cfg: Config, data: ProxyData) -> int:
    """Optimizer steps of a whole calibration (for its progress bar)."""
    return cfg.proxy.calibration_archs * proxy_recipe(cfg.proxy).total_steps(len(data.train_x))


def calibrate(cfg: Config, data: ProxyData, images: torch.Tensor, shape: dict,
              cache_dir: Path, on_step: Optional[Callable[[int], None]] = None,
              cached_only: bool = False) -> Optional[dict]:
    """The scales of :func:`combined_score`: ``proxy.calibration_archs`` architectures sampled
    uniformly from the space (seeded), each trained by the proxy (fidelity) and scored by
    NASWOT on ``images``; the mean and spread of both. Cached as JSON in ``cache_dir`` under
    a key of everything they depend on (the proxy, the space, the data and teacher, the
    seed), written atomically. ``on_step`` is called after every training step; with
    ``cached_only`` nothing is trained (None where the cache has no answer)."""
    import hashlib
    import json
    from dataclasses import asdict, replace

    from spaces.files import write_text

    p = cfg.proxy
    key_fields = {"proxy": {k: v for k, v in asdict(p).items()  # what the training uses
                            if k not in ("early_stop", "prefilter", "score", "supernet",
                                         "rescore", "promote")},
                  "space": cfg.space.identity(), "shape": shape, "bits": list(cfg.device.bits),
                  "seed": cfg.seed, "version": CALIBRATION_VERSION,
                  "data": tensor_hash(images),
                  "teacher": None if data.val_teacher is None else tensor_hash(
                      data.val_teacher.float())}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "calibration" / f"{key}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached
        except ValueError:
            pass  # unreadable: computed again and replaced
    if cached_only:
        return None
    start = time.time()
    trained = replace(cfg, proxy=replace(p, score="fidelity", early_stop=replace(
        p.early_stop, at=None)))
    archs = calibration_archs(cfg, shape)
    out = calibration_record(
        key, archs, [distilled_proxy(a, data, trained, on_step=on_step)["score"] for a in archs],
        [naswot(a, images, cfg.seed) for a in archs], time.time() - start)
    write_text(path, json.dumps(out, indent=1))
    return out


def calibration_archs(cfg: Config, shape: dict) -> list[Arch]:
    """The ``proxy.calibration_archs`` architectures (sampled uniformly, seeded) whose scores
    set the scales of :func:`combined_score`."""
    from spaces.space import RandomChoices, sample_arch

    return [sample_arch(RandomChoices(cfg.seed * 1_000_003 + 7919 + i), cfg.space,
                        bits=cfg.device.bits, **shape)
            for i in range(cfg.proxy.calibration_archs)]


def calibration_record(key: str, archs: list[Arch], fidelities: list[float],
                       naswots: list[float], seconds: float) -> dict:
    """The scales of :func:`combined_score` from the calibration architectures' fidelity and
    NASWOT: the mean and spread of each, as a study records them."""
    def stats(v: list[float]) -> dict:
        t = torch.tensor(v, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std()) or 1.0}

    return {"key": key, "score": COMBINED, "archs": [a.arch_id for a in archs],
            "fidelity": stats(fidelities), "naswot": stats(naswots),
            "seconds": round(seconds, 1), "version": CALIBRATION_VERSION}


def synflow(arch: Arch) -> float:
    """log of the SynFlow score of the pruned network (data-free, no training)."""
    model = build_model(arch, pruned=True).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    x = torch.ones(1, arch.in_chans, arch.input_size, arch.input_size, dtype=torch.float64)
    model(x).sum().backward()
    score = sum(float((p * p.grad).abs().sum().detach()) for p in model.parameters()
                if p.grad is not None)
    return math.log(score) if score > 0 else float("-inf")


def naswot(arch: Arch, images: torch.Tensor, seed: int = 0) -> float:
    """NASWOT (Mellor et al., 2021): log|det K| of the kernel of the binary activation codes
    of a minibatch at initialization, ``K[i, j]`` = number of ReLU / hard-swish units on which
    images i and j agree (both active or both not). No training; ``images`` uint8 (N, C, H, W).
    """
    torch.manual_seed(seed)
    model = build_model(arch, pruned=True).train()  # batch statistics, as the paper does
    n = len(images)
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        code = (out.detach().flatten(1) > 0).double()
        kernel.add_(code @ code.t() + (1 - code) @ (1 - code).t())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.ReLU, nn.Hardswish))]
    try:
        with torch.no_grad():
            model(to_float(images))
    finally:
        for h in handles:
            h.remove()
    return float(torch.linalg.slogdet(kernel)[1])


def zero_cost_scores(arch: Arch, images: torch.Tensor, seed: int = 0) -> dict:
    """Every zero-cost score of ``arch`` (no training): NASWOT on ``images``, synflow, the
    parameter count; and their cost in seconds."""
    start = time.time()
    out = {"naswot": naswot(arch, images, seed), "synflow": synflow(arch),
           "params": float(arch.params())}
    out["cost_s"] = time.time() - start
    return out


def zero_cost_proxy(scores: dict) -> dict:
    """``proxy=zero_cost``: NASWOT stands in for accuracy (it ranks the benchmark's
    architectures best of the zero-cost scores; ``scripts/proxy_benchmark.py``)."""
    return {"score": scores["naswot"], "accuracy": None, "cost_s": scores["cost_s"]}
