"""python -m search.export +device=NAME select=pareto|best|<trial> out=DIR

For each chosen trial: train to convergence with the export recipe (distillation from the
teacher, dense then pruned, fake quantization at the trial's bit-widths), then write
``DIR/trial_<n>/`` with model.onnx (fp32), model.int8.onnx (QDQ int8 on the 8-bit layers),
weights.safetensors, arch.json, arch_def.json (timm), metrics.json and card.md. Each folder is
built aside and renamed into place, so an interrupted export leaves no half-written folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import optuna
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from tqdm import tqdm

from latency_models.prediction import ENERGY_WORDS
from latency_models.profile import cpu_name, measure_many
from search.cli import HydraCommand
from search.config import Config, load
from search.data import Dataset, load_for, to_float
from search.edge_memory import card_section, memory_record
from search.errors import UserError
from search.pareto import feasible
from search.run import load_device_model
from search.storage import open_storage
from search.study import (
    SCORE_MEANING,
    complete_trials,
    pareto_trials,
    proxy_accuracy,
    proxy_score_name,
)
from search.teacher import TeacherCache
from search.train import Recipe
from search.urls import redact
from spaces.arch import Arch
from spaces.build import arch_def
from spaces.files import atomic_dir
from spaces.onnx_io import export_fp32, export_int8, onnx_accuracy, ort_session
from spaces.quant import clean_dead_channels

__all__ = ["calibration_images", "check_fp32", "COMMAND", "export_trial", "EXPORT_VERSION",
           "ExportError", "final_recipe", "FP32_TOLERANCE", "load_study", "main",
           "measure_and_predict", "model_card", "onnx_accuracy", "print_summary",
           "recipe_fingerprint", "RECIPE_WORDS", "run_export", "select_trials", "study_names",
           "training_record", "write_trial"]

# The fp32 file's largest difference from torch, relative to the largest logit (at least 1):
# float32 sums in another order differ by about 1e-6 of the values summed, and a deep network
# with large logits (a 224 px model's reach 30-100) differs more in absolute terms.
FP32_TOLERANCE = 1e-4


class ExportError(UserError):
    """The exported model does not match the trained one."""


def select_trials(cfg: Config, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = {t.number: t for t in complete_trials(study)}
    choice = str(cfg.select).strip()
    if choice == "pareto":
        chosen = pareto_trials(study)
    elif choice == "best":
        front = pareto_trials(study)
        chosen = front[:1]
    elif choice.isdigit():
        if int(choice) not in done:
            raise UserError(f"trial {choice} is not a complete trial of study "
                            f"{study.study_name}; complete trials: "
                            f"{', '.join(map(str, sorted(done))) or 'none'}")
        chosen = [done[int(choice)]]
    else:
        raise UserError(f"select={choice!r} is not 'pareto', 'best' or a trial number")
    if not chosen:
        raise UserError(f"study {study.study_name} has no complete feasible trial to export; "
                        "run `python -m search` first (or relax the budgets)")
    if choice.isdigit() and not feasible(chosen[0]):
        raise UserError(f"trial {choice} broke a budget and was not trained by the proxy; "
                        "choose a feasible trial")
    return chosen


def final_recipe(cfg: Config) -> Recipe:
    """The export's training recipe: the found models' and the baselines' final training."""
    return Recipe(epochs=cfg.export.epochs, batch=cfg.export.batch, lr=cfg.export.lr,
                  temperature=cfg.proxy.temperature, alpha=cfg.proxy.alpha, hflip=True)


def calibration_images(cfg: Config, dataset: Dataset, train_idx: torch.Tensor) -> np.ndarray:
    """The int8 calibration images: a seeded draw from the training split, float32 in [0, 1]."""
    order = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(cfg.seed))
    return to_float(dataset.train_x[train_idx[order[:cfg.export.calibration_images]]]).numpy()


def check_fp32(model: torch.nn.Module, path: Path, dataset: Dataset, what: str) -> float:
    """Largest difference between torch and the exported fp32 file on 64 test images.

    Raises:
        ExportError: over ``FP32_TOLERANCE`` of the largest logit (at least 1; the caller
            then writes nothing).
    """
    probe = to_float(dataset.test_x[:64])
    with torch.no_grad():
        ref = model.eval()(probe).numpy()
    got = ort_session(path).run(None, {"image": probe.numpy()})[0]
    diff = float(np.abs(ref - got).max())
    limit = FP32_TOLERANCE * max(1.0, float(np.abs(ref).max()))
    if not diff < limit:
        raise ExportError(f"{what}: the fp32 ONNX model differs from torch by {diff:.3g} "
                          f"(limit {limit:.3g}: {FP32_TOLERANCE} of the largest logit); "
                          "nothing was exported. Report this with the model's description")
    return diff


def export_trial(cfg: Config, trial: optuna.trial.FrozenTrial, dataset: Dataset,
                 teacher: TeacherCache, out_root: Path) -> dict:
    """Train ``trial``'s architecture with the final recipe and write its folder under
    ``out_root`` (:func:`write_trial`); returns its metrics."""
    from search.proxy import train_final

    arch = Arch.from_json(trial.user_attrs["arch_json"])
    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    recipe = final_recipe(cfg)
    device = cfg.search.torch_device()
    soft = teacher.logits(train_idx).to(device)
    steps = recipe.total_steps(len(train_idx))
    start = time.time()
    with tqdm(total=steps, desc=f"trial {trial.number}: final training", unit="step",
              leave=False) as bar:
        model = train_final(arch, dataset.train_x[train_idx].to(device),
                            dataset.train_y[train_idx].to(device), soft, recipe, seed=cfg.seed,
                            on_step=lambda _: bar.update())
    return write_trial(cfg, trial, model, dataset, teacher, out_root, time.time() - start,
                       device)


def write_trial(cfg: Config, trial: optuna.trial.FrozenTrial, model: torch.nn.Module,
                dataset: Dataset, teacher: TeacherCache, out_root: Path, train_s: float,
                device: str) -> dict:
    """Write ``out_root/trial_<n>/`` (ONNX fp32 and int8, weights, architecture, metrics, model
    card) from ``model``, the float model :func:`search.proxy.train_final` trained with this
    config's recipe (``train_s`` seconds on ``device``), atomically; returns its metrics."""
    arch = Arch.from_json(trial.user_attrs["arch_json"])
    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    dead = clean_dead_channels(model, to_float(dataset.test_x[:1]))

    with atomic_dir(out_root / f"trial_{trial.number}") as work:
        fp32_path, int8_path = work / "model.onnx", work / "model.int8.onnx"
        export_fp32(model, arch, fp32_path)
        diff = check_fp32(model, fp32_path, dataset, f"trial {trial.number}")
        int8_nodes = export_int8(fp32_path, arch, int8_path,
                                 calibration_images(cfg, dataset, train_idx))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(work / "weights.safetensors"))
        (work / "arch.json").write_text(arch.to_json())
        (work / "arch_def.json").write_text(json.dumps(
            {"arch_def": arch_def(arch), "builder": "timm.models.efficientnet.EfficientNet",
             "round_chs_fn": "identity", "stem_size": arch.stem_chs,
             "num_features": arch.head_chs, "in_chans": arch.in_chans,
             "num_classes": arch.num_classes, "note": "expanded widths are exact: build with "
             "timm's make_divisible replaced by round (see spaces/build.py)"}, indent=1))
        metrics = measure_and_predict(cfg, trial, arch, dataset, fp32_path, int8_path)
        metrics.update(memory_record(arch, {"model.onnx": fp32_path,
                                            "model.int8.onnx": int8_path}, cfg.finetune.batch))
        metrics.update(onnx_fp32_max_abs_diff=diff, int8_nodes=len(int8_nodes),
                       dead_channels_cleaned=dead,
                       training=training_record(cfg, teacher, train_s, device, RECIPE_WORDS))
        (work / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (work / "card.md").write_text(model_card(cfg, arch, metrics))
    return metrics


# Bumped when the way a trained model becomes its files changes (2: constant channels cleaned
# before the batch norms are folded), so that a report exports its models again.
EXPORT_VERSION = 2
RECIPE_WORDS = ("distillation from the cached teacher, dense for half the epochs, then pruned "
                "and fine-tuned with fake quantization")


def recipe_fingerprint(cfg: Config, teacher: TeacherCache) -> str:
    """A short hash of everything that decides a final training's result but the model."""
    import hashlib

    fields = {"recipe": final_recipe(cfg).__dict__, "seed": cfg.seed, "export": EXPORT_VERSION,
              "val_images": cfg.data.val_images, "calibration": cfg.export.calibration_images,
              "data": cfg.data.name, "teacher": teacher.meta.get("model"),
              "teacher_accuracy": teacher.meta.get("test_accuracy")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def training_record(cfg: Config, teacher: TeacherCache, seconds: float, device: str,
                    recipe: str) -> dict:
    """metrics.json's ``training`` entry of a final training (its fingerprint decides whether
    a later report trains the model again)."""
    return {"epochs": cfg.export.epochs, "seconds": round(seconds, 1), "recipe": recipe,
            "fingerprint": recipe_fingerprint(cfg, teacher), "device": device,
            "teacher": teacher.meta.get("model"),
            "teacher_test_accuracy": teacher.meta.get("test_accuracy")}


def measure_and_predict(cfg: Config, trial: optuna.trial.FrozenTrial, arch: Arch,
                        dataset: Dataset, fp32_path: Path, int8_path: Path) -> dict:
    import onnxruntime

    device_model = load_device_model(cfg)
    # The one pricing path: each graph records its architecture, so it is priced exactly as
    # the search priced the architecture (at 32 bits for the fp32 file).
    pred32, pred8 = device_model.price_many([fp32_path, int8_path])
    consistent = pred32.provenance["path"] == pred8.provenance["path"] == "onnx:arch"
    m32, m8 = measure_many([fp32_path, int8_path], threads=1, rounds=5,
                           runs=max(1, cfg.export.latency_runs // 5))
    return {
        "trial": trial.number, "arch_id": arch.arch_id, "params": arch.params(),
        "macs": arch.macs(), "size_kib": arch.size_kib(), "bits": list(arch.bits),
        "proxy_accuracy": proxy_accuracy(trial),
        "proxy": trial.user_attrs.get("proxy"), "proxy_score": trial.values[0],
        # output i of the model is classes[i]
        "classes": list(dataset.classes), "class_names": list(dataset.class_names),
        "proxy_score_name": proxy_score_name(trial),  # what the search optimized
        "test_accuracy": {"model.onnx": onnx_accuracy(fp32_path, dataset.test_x,
                                                       dataset.test_y),
                          "model.int8.onnx": onnx_accuracy(int8_path, dataset.test_x,
                                                            dataset.test_y),
                          "images": len(dataset.test_y), "measured_with": "onnxruntime"},
        "predicted": {"device": cfg.device.name,
                      "model.onnx": {"latency_ms": pred32.latency_ms,
                                     "energy_mj": pred32.energy_mj,
                                     "provenance": pred32.provenance},
                      "model.int8.onnx": {"latency_ms": pred8.latency_ms,
                                          "energy_mj": pred8.energy_mj,
                                          "provenance": pred8.provenance},
                      "onnx_ops_match_arch": consistent},
        "measured_here": {"model.onnx": m32, "model.int8.onnx": m8, "threads": 1, "batch": 1,
                          "cpu": cpu_name(), "onnxruntime": onnxruntime.__version__},
    }


def model_card(cfg: Config, arch: Arch, m: dict) -> str:
    p, h, acc = m["predicted"], m["measured_here"], m["test_accuracy"]
    stages = "\n".join(
        f"| {i} | {s.block} | {s.kernel} | {s.expansion} | {s.se_ratio} | {s.act} | {s.depth} "
        f"| {s.stride} | {s.out_chs} -> {s.kept_out_chs} | {s.prune_ratio} | "
        f"{', '.join(map(str, s.bits))} |" for i, s in enumerate(arch.stages))
    name = m.get("proxy_score_name", "accuracy")
    score = ("" if name not in SCORE_MEANING or name == "accuracy" else
             f" The search ranked it by its {name}: {m['proxy_score']:.4f} "
             f"({SCORE_MEANING[name]}).")
    searched = (f"Proxy accuracy during the search (validation split, {m['proxy']} proxy): "
                f"{100 * m['proxy_accuracy']:.2f}%." if m.get("proxy_accuracy") is not None
                else f"The search trained nothing ({m['proxy']} proxy).")
    classes = m.get("classes") or [str(i) for i in range(arch.num_classes)]
    names = m.get("class_names") or classes
    class_rows = "\n".join(f"| {i} | {c} | {n if n != c else ''} |"
                            for i, (c, n) in enumerate(zip(classes, names)))
    return f"""# Model card: trial {m['trial']} ({arch.arch_id})

Found by edgenas for device `{cfg.device.name}` on `{cfg.data.name}`.

## Use
Input: a float32 tensor `image` of shape (N, {arch.in_chans}, {arch.input_size}, {arch.input_size}) (NCHW), pixel values in [0, 1]
({'grey' if arch.in_chans == 1 else 'RGB'}); it is resized to {arch.resolution}x{arch.resolution} and normalized inside the graph.
Output: `logits` of shape (N, {arch.num_classes}), one unnormalized score per class (apply a
softmax for probabilities); the predicted class is the argmax.

```python
import numpy as np
import onnxruntime as ort

session = ort.InferenceSession("model.int8.onnx", providers=["CPUExecutionProvider"])
classes = {json.dumps(list(names))}
image = np.random.rand(1, {arch.in_chans}, {arch.input_size}, {arch.input_size}).astype(np.float32)  # your image, in [0, 1]
logits = session.run(None, {{"image": image}})[0]
probabilities = np.exp(logits - logits.max(1, keepdims=True))
probabilities /= probabilities.sum(1, keepdims=True)
print(classes[int(logits.argmax(1)[0])], float(probabilities.max()))
```

| output | class (label) | name |
|---|---|---|
{class_rows}

## Architecture
Stem {arch.stem_chs} channels ({arch.stem_bits} bits), head {arch.head_chs} channels
({arch.head_bits} bits), classifier {arch.classifier_bits} bits.

| stage | block | kernel | expansion | SE | act | depth | stride | channels (pruned) | prune ratio | bits per block |
|---|---|---|---|---|---|---|---|---|---|---|
{stages}

Parameters {m['params']:,}, MACs {m['macs']:,}, weights {m['size_kib']:.1f} KiB at their
bit-widths. Pruned channels are physically removed. Layers at 8 bits are int8 (QDQ) in
`model.int8.onnx`; layers at 16 bits are float in both files; 6 and 4 bits are simulated
(trained with fake quantization, exported as int8 or float).

## Accuracy (test set, {acc['images']} images, measured with onnxruntime)
| file | test accuracy |
|---|---|
| model.onnx (fp32) | {100 * acc['model.onnx']:.2f}% |
| model.int8.onnx | {100 * acc['model.int8.onnx']:.2f}% |

{searched}{score}

## Latency and energy
Predicted for `{cfg.device.name}` by its device model
({p['model.onnx']['provenance'].get('model_hash')}; latency
{p['model.onnx']['provenance']['latency']}, energy {p['model.onnx']['provenance']['energy']}):

| file | latency ms | energy mJ |
|---|---|---|
| model.onnx | {p['model.onnx']['latency_ms']:.3f} | {p['model.onnx']['energy_mj']:.3f} |
| model.int8.onnx | {p['model.int8.onnx']['latency_ms']:.3f} | {p['model.int8.onnx']['energy_mj']:.3f} |

Energy is {p['model.onnx']['provenance']['energy']}: {ENERGY_WORDS.get(p['model.onnx']['provenance']['energy'], '')}. Where the latency
source reads "modelled", the device has no measurements for that precision (see
`conf/device/`).

Measured on the exporting machine ({h['cpu']}, onnxruntime {h['onnxruntime']}, 1 thread,
batch 1, median): model.onnx {h['model.onnx']['median_ms']:.3f} ms, model.int8.onnx
{h['model.int8.onnx']['median_ms']:.3f} ms.

{card_section(m) if 'train_memory_kib' in m else ''}
## Training
{m['training']['recipe']}; {m['training']['epochs']} epochs, teacher {m['training']['teacher']}
(test accuracy {100 * (m['training']['teacher_test_accuracy'] or 0):.2f}%).
"""


def study_names(cfg: Config, storage: Optional[optuna.storages.BaseStorage] = None
                ) -> list[str]:
    """Names of the studies in the configured storage (``storage`` if already open)."""
    if storage is None:
        storage = open_storage(cfg.storage.url, cfg.search.heartbeat_s, cfg.storage.retry_s)
    return [s.study_name for s in optuna.get_all_study_summaries(storage)]


def load_study(cfg: Config) -> optuna.Study:
    """The configured study, checked to have been searched with this device model.

    Raises:
        UserError: no such study, or another device model.
    """
    storage = open_storage(cfg.storage.url, cfg.search.heartbeat_s, cfg.storage.retry_s)
    names = study_names(cfg, storage)
    if cfg.study.name not in names:
        raise UserError(f"no study {cfg.study.name!r} in {redact(cfg.storage.url)} (studies "
                        f"there: {', '.join(names) or 'none'}); run `python -m search "
                        f"+device={cfg.device.name}` first or pass study.name=NAME")
    study = optuna.load_study(study_name=cfg.study.name, storage=storage)
    device_hash = study.user_attrs.get("device_model_hash")
    if device_hash and device_hash != load_device_model(cfg).hash:
        raise UserError(f"study {cfg.study.name!r} was searched with another {cfg.device.name} "
                        f"device model ({device_hash}); export with the same device model")
    return study


def run_export(cfg: Config) -> None:
    torch.set_num_threads(cfg.search.thread_count())
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own messages say what failed
    study = load_study(cfg)
    trials = select_trials(cfg, study)
    dataset = load_for(cfg)
    for note in dataset.notes:
        print(note)
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)
    out_root = Path(cfg.out or Path(cfg.out_dir) / "export")
    print(f"exporting {len(trials)} trial(s) of {study.study_name} to {out_root} "
          f"({cfg.export.epochs} epochs each)")
    done = []
    with tqdm(total=len(trials), desc="export", unit="model") as bar:
        for t in trials:
            bar.set_postfix_str(f"trial {t.number}")
            m = export_trial(cfg, t, dataset, teacher, out_root)
            acc = m["test_accuracy"]
            bar.write(f"trial {t.number}: test accuracy fp32 {100 * acc['model.onnx']:.2f}% "
                      f"int8 {100 * acc['model.int8.onnx']:.2f}% -> "
                      f"{out_root / f'trial_{t.number}'}")
            done.append(m)
            bar.update()
    print_summary(cfg, done, out_root)


def print_summary(cfg: Config, metrics: list[dict], out_root: Path) -> None:
    """The exported models in a table, and the commands that use them."""
    from rich.console import Console
    from rich.table import Table

    from search.cli import suggested_command
    from spaces.cli import python_cmd, shell_join

    table = Table(title=f"exported to {out_root}")
    for col in ("model", "test acc fp32 / int8", f"{cfg.device.name} ms fp32 / int8",
                "here ms fp32 / int8", "size KiB"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in metrics:
        acc, pred, here = m["test_accuracy"], m["predicted"], m["measured_here"]
        table.add_row(
            f"trial_{m['trial']}",
            f"{100 * acc['model.onnx']:.2f}% / {100 * acc['model.int8.onnx']:.2f}%",
            f"{pred['model.onnx']['latency_ms']:.3f} / {pred['model.int8.onnx']['latency_ms']:.3f}",
            f"{here['model.onnx']['median_ms']:.3f} / {here['model.int8.onnx']['median_ms']:.3f}",
            f"{m['size_kib']:.1f}")
    console = Console()
    console.print(table)
    console.print(f"{cfg.device.name} ms: predicted by its device model; here ms: measured on "
                  "this machine (onnxruntime, 1 thread, batch 1, median). Each folder holds "
                  "model.onnx, model.int8.onnx, weights.safetensors, arch.json, metrics.json "
                  "and card.md (how to run it).", highlight=False)
    console.print("next:", highlight=False)
    console.print(f"  {shell_join([python_cmd(), '-m', 'latency_models.predict', f'+device={cfg.device.name}', f'model={out_root}'])}"
                  "   # price the files on the device", highlight=False, soft_wrap=True,
                  markup=False)
    console.print(f"  {suggested_command('search.report', f'report.exports={out_root}', 'out=report')}"
                  "   # against hand-designed models", highlight=False, soft_wrap=True,
                  markup=False)


def main(dc: DictConfig) -> None:
    run_export(load(dc))


COMMAND = HydraCommand(
    "search.export",
    "Train the chosen trials of a study with the export recipe and write, for each,\n"
    "out/trial_<n>/: model.onnx (fp32), model.int8.onnx, weights.safetensors, arch.json,\n"
    "metrics.json and card.md. select=best (one model, the most accurate of the front) is\n"
    "the quick first try; select=pareto trains the whole front; select=N trial N.\n"
    "Give the same overrides as the search (device, data, storage, study) to find its study.",
    ["+device=rpi4 select=best out=exports/", "+device=rpi4 select=pareto out=exports/",
     "+device=rpi4 select=12 export.epochs=8 out=exports/"])

if __name__ == "__main__":
    COMMAND.run(main)
