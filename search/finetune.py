"""python -m search.finetune model=EXPORT_DIR data=imagefolder data.root=DIR update=SCHEME
epochs=N out=OUT_DIR

Fine-tunes an exported model on the device's own images, on the CPU, within its memory:
``update=head`` (the classifier), ``bias`` (every bias and the classifier), ``last:K`` (the
last K blocks, the head convolution and the classifier), ``all``, or ``auto`` (the most
capable scheme whose predicted step memory fits ``budget.train_memory_kib``). ``head=new``
replaces the classifier for a folder with other classes; otherwise the folder's class
subfolders must be classes the model knows (its ``metrics.json`` lists them).

Writes OUT_DIR as an export is written (model.onnx, model.int8.onnx re-calibrated on the new
images, weights.safetensors, arch.json, metrics.json, card.md), all at once at the end: a run
that is stopped or killed leaves nothing half-written, and the original export is only read.
Imports only what a Raspberry Pi runs (torch, timm, numpy, safetensors, pillow, onnx,
onnxruntime): no Optuna, no Hydra, no database.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

from latency_models.train_memory import train_memory
from search.data import Dataset, load_image_folder
from search.edge_memory import card_section, memory_record
from search.errors import UserError, guarded
from search.step_memory import measure_step, train_step
from spaces.arch import Arch, ArchError
from spaces.schemes import FinetuneConfig, Scheme, SchemeError, parse_scheme, schemes_by_capability

__all__ = ["FinetuneArgs", "choose_scheme", "load_export", "main", "parse_args", "run"]

HELP = __doc__


@dataclass
class FinetuneArgs:
    model: str = ""  # the export folder (weights.safetensors, arch.json, metrics.json)
    data: str = "imagefolder"
    data_root: str = ""  # data.root: DIR/<class>/<image> (DIR/test/<class>/... if present)
    update: str = "auto"  # head | bias | last:K | all | auto
    epochs: Optional[int] = None  # default: finetune.epochs
    out: str = ""
    head: str = "keep"  # keep | new
    budget_kib: Optional[float] = None  # budget.train_memory_kib
    seed: int = 0
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # finetune.batch, ...


KEYS = {"model": "model", "data": "data", "data.root": "data_root", "update": "update",
        "epochs": "epochs", "out": "out", "head": "head",
        "budget.train_memory_kib": "budget_kib", "seed": "seed"}
FINETUNE_KEYS = ("batch", "lr", "threads", "epochs")


def parse_args(argv: list[str]) -> FinetuneArgs:
    """``key=value`` arguments (see :data:`HELP`) as :class:`FinetuneArgs`."""
    args = FinetuneArgs()
    known = sorted(KEYS) + [f"finetune.{k}" for k in FINETUNE_KEYS] + ["debug"]
    for token in argv:
        key, eq, value = token.partition("=")
        key = key.lstrip("+")
        if not eq:
            raise UserError(f"argument {token!r} is not key=value; known keys: "
                            f"{', '.join(known)} (python -m search.finetune --help)")
        try:
            if key in ("budget.train_memory_kib",):
                args.budget_kib = None if value in ("null", "") else float(value)
            elif key in ("epochs", "seed"):
                setattr(args, KEYS[key], int(value))
            elif key in KEYS:
                setattr(args, KEYS[key], value)
            elif key.startswith("finetune.") and key[9:] in FINETUNE_KEYS:
                name = key[9:]
                setattr(args.finetune, name, float(value) if name == "lr" else int(value))
            elif key == "debug":
                continue
            else:
                raise UserError(f"unknown argument {key!r}; known keys: {', '.join(known)}")
        except ValueError:
            raise UserError(f"{key}={value!r} is not a number") from None
    if not args.model:
        raise UserError("model=EXPORT_DIR is required: a folder written by python -m "
                        "search.export (or by search.finetune), e.g. model=outputs/"
                        "rpi4-fashion_mnist-mobilenet/export/trial_12")
    if args.data != "imagefolder":
        raise UserError(f"data={args.data!r}: fine-tuning reads the device's own images, "
                        "data=imagefolder data.root=DIR (one subfolder of images per class)")
    if not args.out:
        raise UserError("out=OUT_DIR is required: the new model's folder (it must not exist)")
    if args.head not in ("keep", "new"):
        raise UserError(f"head={args.head!r} is not keep or new (new: a new classifier for "
                        "the folder's classes)")
    f = args.finetune
    if min(f.batch, f.threads) < 1 or f.lr <= 0 or (args.epochs or f.epochs) < 1:
        raise UserError("finetune.batch, finetune.threads and epochs must be at least 1, "
                        "finetune.lr positive")
    if args.budget_kib is not None and args.budget_kib <= 0:
        raise UserError(f"budget.train_memory_kib={args.budget_kib} must be positive")
    return args


def load_export(folder: Path) -> tuple[Arch, torch.nn.Module, dict]:
    """(architecture, the float model with its trained weights, metrics.json) of an export
    folder, checked."""
    from safetensors.torch import load_file

    from spaces.build import build_model

    if not folder.is_dir():
        raise UserError(f"model={folder}: no such folder; pass an export folder (python -m "
                        "search.export writes one per model, e.g. .../export/trial_12)")
    missing = [n for n in ("arch.json", "weights.safetensors", "metrics.json")
               if not (folder / n).is_file()]
    if missing:
        raise UserError(f"model={folder} has no {', '.join(missing)}: fine-tuning needs the "
                        "weights and architecture an export writes; export the model with "
                        "python -m search.export (a bare .onnx file cannot be fine-tuned)")
    try:
        arch = Arch.from_json((folder / "arch.json").read_text())
    except ArchError as exc:
        raise UserError(f"{folder / 'arch.json'} was written by another version of edgenas "
                        f"({exc}); export the model again with this version") from None
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        state = load_file(str(folder / "weights.safetensors"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot read {folder}'s files ({exc.__class__.__name__}: "
                        f"{str(exc)[:120]}); export the model again") from None
    model = build_model(arch).eval()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{folder / 'weights.safetensors'} does not match {folder / 'arch.json'}"
                        " (written by another version, or files from two models); export the "
                        "model again") from None
    return arch, model, metrics


def choose_scheme(arch: Arch, update: str, budget_kib: Optional[float], batch: int
                  ) -> tuple[Scheme, float]:
    """(the scheme, its predicted step memory in KiB): ``update`` itself, or for ``auto``
    the most capable one within ``budget_kib`` (``all`` without a budget)."""
    n_blocks = sum(s.depth for s in arch.stages)
    try:
        if update != "auto":
            scheme = parse_scheme(update, n_blocks)
            need = train_memory(arch, scheme, batch).total_kib
            if budget_kib is not None and need > budget_kib:
                raise UserError(f"update={scheme} needs {need:,.0f} KiB at batch {batch} "
                                f"(predicted), over budget.train_memory_kib={budget_kib:,.0f}; "
                                "use update=auto, a smaller finetune.batch, or a larger budget")
            return scheme, need
    except SchemeError as exc:
        raise UserError(str(exc)) from None
    priced = [(s, train_memory(arch, s, batch).total_kib) for s in schemes_by_capability(n_blocks)]
    if budget_kib is None:
        return priced[0]
    for scheme, need in priced:
        if need <= budget_kib:
            return scheme, need
    smallest = min(priced, key=lambda p: p[1])
    raise UserError(f"budget.train_memory_kib={budget_kib:,.0f} is below every update scheme "
                    f"of this model at batch {batch}: the smallest reachable is "
                    f"{smallest[1]:,.0f} KiB (update={smallest[0]}); raise the budget or lower "
                    "finetune.batch")


def _labels(data: Dataset, model_classes: list[str], head: str) -> tuple[Dataset, list[str]]:
    """The folder's labels as the model's output indices (or the folder's own classes for a
    new head)."""
    if head == "new":
        return data, list(data.classes)
    unknown = [c for c in data.classes if c not in model_classes]
    if unknown:
        raise UserError(f"the folder has classes the model does not know: "
                        f"{', '.join(unknown[:10])} (the model's: "
                        f"{', '.join(model_classes[:20])}); rename the class folders to the "
                        "model's classes, or pass head=new to train a new classifier for the "
                        "folder's classes")
    index = torch.tensor([model_classes.index(c) for c in data.classes])
    return replace(data, train_y=index[data.train_y], test_y=index[data.test_y],
                   num_classes=len(model_classes), classes=list(model_classes),
                   class_names=list(model_classes)), list(model_classes)


def _new_head(arch: Arch, model: torch.nn.Module, n_classes: int, seed: int
              ) -> tuple[Arch, torch.nn.Module]:
    from spaces.build import build_model

    new_arch = replace(arch, num_classes=n_classes)
    torch.manual_seed(seed)
    new = build_model(new_arch).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("net.classifier")}
    new.load_state_dict(state, strict=False)
    return new_arch, new


def _accuracies(fp32: Path, int8: Path, data: Dataset) -> dict:
    from spaces.onnx_io import onnx_accuracy

    return {"model.onnx": onnx_accuracy(fp32, data.test_x, data.test_y),
            "model.int8.onnx": onnx_accuracy(int8, data.test_x, data.test_y)}


def run(args: FinetuneArgs) -> dict:
    """Fine-tune and write ``args.out``; returns its metrics."""
    from safetensors.torch import save_file

    from spaces.files import atomic_dir
    from spaces.lean import LeanNet
    from spaces.onnx_io import export_fp32, export_int8

    out, source = Path(args.out).expanduser(), Path(args.model).expanduser()
    if out.exists():
        raise UserError(f"out={out} exists; choose another folder or remove it (fine-tuning "
                        "never overwrites a model)")
    if out.resolve() == source.resolve():
        raise UserError("out= must differ from model=: the original export is never modified")
    f = args.finetune
    torch.set_num_threads(f.threads)
    arch, model, metrics = load_export(source)
    model_classes = metrics.get("classes")
    if not model_classes and args.head != "new":
        raise UserError(f"{source / 'metrics.json'} has no classes (an export of an older "
                        "version); export the model again, or pass head=new")
    data = load_image_folder(args.data_root, arch.in_chans, arch.input_size, args.seed)
    data, classes = _labels(data, model_classes or [], args.head)
    if args.head == "new":
        arch, model = _new_head(arch, model, len(classes), args.seed)
    scheme, predicted = choose_scheme(arch, args.update, args.budget_kib, f.batch)
    epochs = args.epochs or f.epochs
    batch = min(f.batch, len(data.train_y))
    print(f"fine-tuning {source.name} ({arch.arch_id}) on {len(data.train_y)} images "
          f"({len(data.test_y)} held out), update={scheme}: {predicted:,.0f} KiB per step "
          f"at batch {f.batch} (predicted), {epochs} epochs", file=sys.stderr)

    before_fp32, before_int8 = source / "model.onnx", source / "model.int8.onnx"
    before = _accuracies(before_fp32, before_int8, data) if args.head == "keep" and \
        before_fp32.is_file() and before_int8.is_file() else None

    lean = LeanNet(model, arch)
    params = lean.set_scheme(scheme)
    opt = torch.optim.SGD(params, lr=f.lr, momentum=0.9)
    steps_per_epoch = math.ceil(len(data.train_y) / batch)
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(args.seed)
    lean.train()
    measured, per_epoch, step = None, [], 0
    for epoch in range(epochs):
        start, losses = time.time(), []
        order = torch.randperm(len(data.train_y), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x, y = data.train_x[idx].float() / 255.0, data.train_y[idx]
            if step == 1 and len(idx) == batch:  # the optimizer's state exists from step 0
                measured = measure_step(lean, opt, x, y)
            else:
                losses.append(train_step(lean, opt, x, y))
            sched.step()
            step += 1
        per_epoch.append(time.time() - start)
        if not all(math.isfinite(v) for v in losses):
            raise UserError(f"fine-tuning diverged in epoch {epoch + 1} (the loss is no longer "
                            f"a number); nothing was written. Lower the learning rate, e.g. "
                            f"finetune.lr={f.lr / 3:.2g}, or use a smaller update scheme")
        print(f"  epoch {epoch + 1}/{epochs}: loss {sum(losses) / max(1, len(losses)):.4f}, "
              f"{per_epoch[-1]:.1f} s", file=sys.stderr)
    lean.eval()
    tuned = lean.to_edgenet().eval()

    calibration = (data.train_x[torch.randperm(len(data.train_y), generator=gen)[:256]]
                   .float() / 255.0).numpy()
    with atomic_dir(out) as work:
        fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
        export_fp32(tuned, arch, fp32)
        export_int8(fp32, arch, int8, calibration)
        save_file({k: v.contiguous() for k, v in tuned.state_dict().items()},
                  str(work / "weights.safetensors"))
        (work / "arch.json").write_text(arch.to_json())
        after = _accuracies(fp32, int8, data)
        record = {
            "arch_id": arch.arch_id, "source": str(source), "source_arch_id":
                metrics.get("arch_id"), "trial": metrics.get("trial"),
            "classes": classes, "class_names": classes if args.head == "new" else
                metrics.get("class_names", classes),
            "params": arch.params(), "macs": arch.macs(), "size_kib": arch.size_kib(),
            "bits": list(arch.bits),
            "finetuning": {
                "update": str(scheme), "update_requested": args.update, "head": args.head,
                "epochs": epochs, "batch": batch, "lr": f.lr, "threads": f.threads,
                "optimizer": "SGD, momentum 0.9, cosine schedule, batch norms folded",
                "images": {"train": len(data.train_y), "test": len(data.test_y)},
                "seconds": round(sum(per_epoch), 2),
                "seconds_per_epoch": [round(s, 2) for s in per_epoch],
                "predicted_train_memory_kib": round(predicted, 1),
                "measured_peak_kib": None if measured is None else round(measured, 1),
                "measured_with": "glibc mallinfo2 after every torch op of one step, plus "
                                 "weights, optimizer state and the batch (search/step_memory.py)",
                "budget_train_memory_kib": args.budget_kib,
            },
            "test_accuracy": {"before": before, "after": after, "images": len(data.test_y),
                              "measured_with": "onnxruntime"},
        }
        record.update(memory_record(arch, {"model.onnx": fp32, "model.int8.onnx": int8},
                                    f.batch))
        (work / "metrics.json").write_text(json.dumps(record, indent=1))
        (work / "card.md").write_text(_card(arch, record))
    return record


def _card(arch: Arch, m: dict) -> str:
    ft, acc = m["finetuning"], m["test_accuracy"]

    def pct(d: dict | None, key: str) -> str:
        return "-" if d is None else f"{100 * d[key]:.2f}%"

    measured = "-" if ft["measured_peak_kib"] is None else f"{ft['measured_peak_kib']:,.0f}"
    rows = "\n".join(f"| {f} | {pct(acc['before'], f)} | {pct(acc['after'], f)} |"
                     for f in ("model.onnx", "model.int8.onnx"))
    return f"""# Model card: {arch.arch_id}, fine-tuned on the device

Fine-tuned from `{m['source']}` (arch_id {m['source_arch_id']}) by `python -m search.finetune`:
update `{ft['update']}` (requested `{ft['update_requested']}`, classifier {ft['head']}),
{ft['epochs']} epochs at batch {ft['batch']}, {ft['optimizer']}; {ft['images']['train']}
training images, {ft['seconds']:.1f} s on {ft['threads']} thread(s).

Input: float32 `image` (N, {arch.in_chans}, {arch.input_size}, {arch.input_size}) in [0, 1];
output `logits` (N, {arch.num_classes}): output i is class i of `metrics.json`'s `classes`
({', '.join(m['classes'][:20])}).

## Accuracy (the folder's test split, {acc['images']} images, onnxruntime)
| file | before | after |
|---|---|---|
{rows}

Fine-tuning step memory: {ft['predicted_train_memory_kib']:,.0f} KiB predicted, {measured} KiB
measured ({ft['measured_with']}).

{card_section(m)}"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0
    def task() -> None:
        try:
            run(parse_args(argv))
        except KeyboardInterrupt:
            print("interrupted: nothing was written; the original export is untouched",
                  file=sys.stderr)
            sys.exit(130)

    guarded(task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
