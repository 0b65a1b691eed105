"""python -m search.report [+device=NAME] out=DIR: found models against hand-designed ones.

1. The study's chosen trials (``select``, the Pareto front by default) are exported with the
   export recipe where ``report.exports`` does not hold them yet (``python -m search.export``).
2. Every baseline of ``report.baselines`` is trained with the same recipe and teacher and
   exported to ``DIR/baselines/NAME/`` (:mod:`search.baselines`).
3. Every model, found or baseline, is scored the same way from its ONNX files: test accuracy
   measured with onnxruntime, latency measured here (1 thread, batch 1, every file in each of
   ``report.latency_rounds`` interleaved rounds, median), latency and energy predicted for the
   device from the graph's ops, parameters and MACs counted in the graph.
4. ``DIR/report.json``, ``report.md`` (table and dominance figures), ``report.png`` and
   ``report.html`` (accuracy against latency with the found models' front and the baselines).

Without ``+device`` the device is ``rpi4``. Every step resumes: exported models whose recipe is
unchanged are kept, so an interrupted report picks up where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from latency_models.features import CONV_KINDS
from search.cli import HydraCommand
from search.config import BASELINES, CONF_DIR, Config, load
from search.errors import UserError
from search.report_plots import LATENCIES, PRECISIONS, plot_html, plot_png
from spaces.files import write_text

__all__ = ["baseline_models", "beaten_words", "CHANCE_MARGIN", "COMMAND", "DEFAULT_DEVICE",
           "dominance", "each_with_progress", "entry", "found_models", "GAIN_POINTS", "main",
           "markdown", "modelled_words", "recorded", "run_report", "score", "SPEEDUP", "summary",
           "trained_where", "with_default_device"]

DEFAULT_DEVICE = "rpi4"
GAIN_POINTS = 1.0  # target: at least this many points more accurate at no more latency,
SPEEDUP = 1.5      # or at least this many times faster at no less accuracy
CHANCE_MARGIN = 0.05  # a baseline less accurate than chance + this did not train


# ---- what is compared ---------------------------------------------------------------------
def found_models(cfg: Config, exports: Path, dataset, teacher) -> list[dict]:
    """The exported trials to report: those under ``exports``, after exporting the study's
    chosen trials that are missing there or were trained with another recipe."""
    from search.export import (
        export_trial,
        load_study,
        recipe_fingerprint,
        select_trials,
        study_names,
    )

    if cfg.study.name in study_names(cfg):
        fingerprint = recipe_fingerprint(cfg, teacher)
        trials = select_trials(cfg, load_study(cfg))

        def up_to_date(trial: optuna.trial.FrozenTrial) -> bool:
            # Exported with this recipe, and this trial's architecture (a study deleted and
            # run again under the same name numbers other architectures alike).
            folder = exports / f"trial_{trial.number}"
            return (recorded(folder, "training", "fingerprint") == fingerprint
                    and recorded(folder, "arch_id") == trial.user_attrs.get("arch_id"))

        todo = {f"trial {t.number}": t for t in trials if not up_to_date(t)}
        each_with_progress(todo, f"exporting {len(todo)} of the {len(trials)} chosen trials "
                           f"to {exports}", "exporting found models", "exporting",
                           lambda t: export_trial(cfg, t, dataset, teacher, exports))
        chosen = [exports / f"trial_{t.number}" for t in trials]
    else:
        chosen = sorted(p for p in exports.glob("trial_*") if (p / "metrics.json").is_file())
        if not chosen:
            raise UserError(f"no exported models in {exports} and no study {cfg.study.name!r} "
                            "to export them from: run `python -m search "
                            f"+device={cfg.device.name}` first, or point report.exports at a "
                            "folder written by `python -m search.export`")
    out = []
    for folder in chosen:
        m = json.loads((folder / "metrics.json").read_text())
        out.append({"name": f"trial_{m['trial']}", "kind": "found", "folder": folder,
                    "trial": m["trial"], "arch_id": m.get("arch_id"),
                    "proxy_accuracy": m.get("proxy_accuracy"),
                    "training_s": m.get("training", {}).get("seconds"),
                    "training_device": m.get("training", {}).get("device")})
    return out


def baseline_models(cfg: Config, out: Path, dataset, teacher) -> list[dict]:
    """Every configured baseline, trained and exported under ``out/baselines`` if needed."""
    from search.baselines import baseline_fingerprint, export_baseline
    from search.export import recipe_fingerprint

    fingerprint = recipe_fingerprint(cfg, teacher)
    todo = {f"baseline {name}": name for name in cfg.report.baselines
            if recorded(out / "baselines" / name, "training", "fingerprint")
            != baseline_fingerprint(fingerprint, name)}
    each_with_progress(todo, f"training {len(todo)} baselines ({cfg.export.epochs} epochs "
                       "each)", "training baselines", "training",
                       lambda name: export_baseline(cfg, name, dataset, teacher,
                                                    out / "baselines"))
    models = []
    for name in cfg.report.baselines:
        folder = out / "baselines" / name
        m = json.loads((folder / "metrics.json").read_text())
        models.append({"name": name, "kind": "baseline", "folder": folder,
                       "description": BASELINES[name][1],
                       "training_s": m["training"]["seconds"],
                       "training_device": m["training"].get("device")})
    return models


def each_with_progress(todo: dict[str, Any], header: str, desc: str, verb: str,
                       fn: Callable[[Any], object]) -> None:
    """``fn`` on each value of ``todo`` (keyed by what to call it) under one progress bar with
    its ETA, saying each one's name as it starts and its time when it ends."""
    if not todo:
        return
    print(header)
    with tqdm(total=len(todo), desc=desc, unit="model") as bar:
        for name, item in todo.items():
            bar.write(f"{verb} {name}")
            start = time.time()
            fn(item)
            bar.write(f"  {name}: {time.time() - start:.0f} s")
            bar.update()


def recorded(folder: Path, *keys: str) -> Any:
    """``metrics.json[keys[0]][keys[1]]...`` of an exported model's folder; None where the
    folder, the file or the entry is missing or unreadable."""
    try:
        value = json.loads((folder / "metrics.json").read_text())
        for key in keys:
            value = value[key]
        return value
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---- scoring ------------------------------------------------------------------------------
def score(cfg: Config, models: list[dict], dataset) -> dict:
    """Fill each model's figures, every model measured the same way; returns the context."""
    import onnx
    import onnxruntime

    from latency_models.ops import onnx_ops
    from latency_models.profile import cpu_name, measure_many
    from search.export import onnx_accuracy
    from search.run import load_device_model

    device_model = load_device_model(cfg)
    files = [m["folder"] / f for m in models for f in PRECISIONS.values()]
    print(f"measuring {len(files)} ONNX files here (1 thread, {cfg.report.latency_rounds} "
          "interleaved rounds)")
    with tqdm(total=cfg.report.latency_rounds, desc="measuring latency here",
              unit="round") as bar:
        timings = iter(measure_many(files, threads=1, rounds=cfg.report.latency_rounds,
                                    runs=20, on_round=bar.update))
    for m in tqdm(models, desc="test accuracy and predictions", unit="model"):
        m["files"], m["accuracy"], m["host_ms"], m["device_ms"] = {}, {}, {}, {}
        m["device_energy_mj"], m["provenance"], m["host_spread_ms"] = {}, {}, {}
        for precision, file in PRECISIONS.items():
            path = m["folder"] / file
            graph = onnx.load(str(path))
            ops = onnx_ops(graph)
            pred = device_model.price(path)  # a found model as its architecture
            timing = next(timings)
            m["files"][precision] = str(path)
            m["accuracy"][precision] = onnx_accuracy(path, dataset.test_x, dataset.test_y)
            m["host_ms"][precision] = timing["median_ms"]
            m["host_spread_ms"][precision] = [timing["p10_ms"], timing["p90_ms"]]
            m["device_ms"][precision] = pred.latency_ms
            m["device_energy_mj"][precision] = pred.energy_mj
            m["provenance"][precision] = {k: pred.provenance.get(k) for k in
                                          ("latency", "energy", "extrapolated", "model_hash",
                                           "path")}
            if precision == "fp32":
                m["macs"] = sum(op.macs for op in ops
                                if op.kind in CONV_KINDS)
                m["params"] = sum(math.prod(t.dims) for t in graph.graph.initializer
                                  if len(t.dims) > 0)
    return {"device": cfg.device.name, "device_model_hash": device_model.hash,
            "device_latency_source": device_model.latency_source,
            "device_energy_source": device_model.energy_source,
            "host": {"cpu": cpu_name(), "onnxruntime": onnxruntime.__version__, "threads": 1,
                     "batch": 1, "rounds": cfg.report.latency_rounds, "runs_per_round": 20},
            "test_images": len(dataset.test_y), "dataset": cfg.data.name}


def dominance(models: list[dict], chance: float = 0.0) -> list[dict]:
    """Per baseline, precision and latency: the found models' best accuracy gain at no more
    latency and best speed-up at no less accuracy, and whether either meets the target.

    A baseline within ``CHANCE_MARGIN`` of ``chance`` accuracy (it did not learn with the
    common recipe) is flagged ``at_chance``: beating it says nothing about the search."""
    found = [m for m in models if m["kind"] == "found"]
    rows = []
    for b in (m for m in models if m["kind"] == "baseline"):
        for precision in PRECISIONS:
            for latency in LATENCIES:
                acc_b, lat_b = b["accuracy"][precision], b[latency][precision]
                gains = [(100 * (f["accuracy"][precision] - acc_b), f["name"]) for f in found
                         if f[latency][precision] <= lat_b]
                speed = [(lat_b / f[latency][precision], f["name"]) for f in found
                         if f["accuracy"][precision] >= acc_b]
                gain = max(gains, default=None)
                fast = max(speed, default=None)
                rows.append({
                    "baseline": b["name"], "precision": precision, "latency": latency,
                    "gain_points": None if gain is None else gain[0],
                    "gain_by": None if gain is None else gain[1],
                    "speedup": None if fast is None else fast[0],
                    "speedup_by": None if fast is None else fast[1],
                    "met": bool((gain is not None and gain[0] >= GAIN_POINTS)
                                or (fast is not None and fast[0] >= SPEEDUP)),
                    "at_chance": bool(acc_b < chance + CHANCE_MARGIN)})
    return rows


# ---- outputs ------------------------------------------------------------------------------
def entry(m: dict) -> dict:
    keys = ("name", "kind", "files", "accuracy", "host_ms", "host_spread_ms", "device_ms",
            "device_energy_mj", "provenance", "params", "macs", "training_s", "training_device",
            "trial", "arch_id", "proxy_accuracy", "description")
    return {k: (str(m[k]) if isinstance(m[k], Path) else m[k]) for k in keys if k in m}


def trained_where(models: list[dict]) -> str:
    """``; trained on DEVICE`` (each device with its count where the models differ)."""
    where = Counter(m.get("training_device") or "unrecorded" for m in models)
    if len(where) == 1:
        return f"; trained on {next(iter(where))}"
    return "; trained on " + ", ".join(f"{d} ({n} models)" for d, n in where.most_common())


def modelled_words(models: list[dict], dev: str) -> str:
    """A sentence naming the predicted latencies that are modelled (a precision the device
    model has no measurements for, priced as another) or transferred (priced by ratios
    learned on other devices), where there are any."""
    out = []
    how = {"modelled": "priced as another precision's",
           "transferred": "priced by ratios to the device's own fp32 costs learned on other "
                          "devices"}
    for precision in ("fp32", "int8"):
        for word, priced in how.items():
            n = sum(m.get("provenance", {}).get(precision, {}).get("latency") == word
                    for m in models)
            if n:
                out.append(f" `{dev}` {precision} latency is {word} for {n} of {len(models)} "
                           f"models: the device model has no {precision} measurements for "
                           f"their ops, {priced} (provenance in report.json).")
    return "".join(out)


def markdown(report: dict) -> str:
    ctx, dev = report["context"], report["context"]["device"]
    lines = [f"# Found models against hand-designed edge models ({ctx['dataset']}, {dev})", "",
             f"Test accuracy on {ctx['test_images']:,} images measured with onnxruntime on each "
             f"exported file; host latency measured here ({ctx['host']['cpu']}, onnxruntime "
             f"{ctx['host']['onnxruntime']}, 1 thread, batch 1, median of "
             f"{ctx['host']['rounds']} interleaved rounds); `{dev}` latency and energy "
             f"predicted from each graph's ops by the device model {ctx['device_model_hash']} "
             f"(latency {ctx['device_latency_source']}, energy {ctx['device_energy_source']}).",
             f"All models trained with the same recipe: {report['recipe']}"
             f"{trained_where(report['models'])}.{modelled_words(report['models'], dev)}", "",
             f"| model | kind | params | MACs | acc fp32 % | acc int8 % | host fp32 ms | "
             f"host int8 ms | {dev} fp32 ms | {dev} int8 ms | {dev} int8 mJ |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in sorted(report["models"], key=lambda m: (m["kind"] != "found",
                                                     m["device_ms"]["int8"])):
        lines.append(
            f"| {m['name']} | {m['kind']} | {m['params']:,} | {m['macs'] / 1e6:.2f}M | "
            f"{100 * m['accuracy']['fp32']:.2f} | {100 * m['accuracy']['int8']:.2f} | "
            f"{m['host_ms']['fp32']:.3f} | {m['host_ms']['int8']:.3f} | "
            f"{m['device_ms']['fp32']:.3f} | {m['device_ms']['int8']:.3f} | "
            f"{m['device_energy_mj']['int8']:.3f} |")
    s = report["summary"]
    lines += ["", f"## Dominance (target: {GAIN_POINTS:g} point more accurate at no more "
              f"latency, or {SPEEDUP:g} times faster at no less accuracy)", "",
              "| precision | latency | baselines beaten |", "|---|---|---|"]
    for key, v in s.items():
        lines.append(f"| {key.split('/')[0]} | {LATENCIES[key.split('/')[1]]} | "
                     f"{beaten_words(v)} |")
    lines += ["", "| baseline | precision | latency | best gain (points) at <= latency | "
              "best speed-up at >= accuracy | met |", "|---|---|---|---|---|---|"]
    for r in report["dominance"]:
        gain = "none as fast" if r["gain_points"] is None else \
            f"{r['gain_points']:+.2f} ({r['gain_by']})"
        fast = "none as accurate" if r["speedup"] is None else \
            f"{r['speedup']:.2f}x ({r['speedup_by']})"
        lines.append(f"| {r['baseline']} | {r['precision']} | {LATENCIES[r['latency']]} | "
                     f"{gain} | {fast} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        s = out.setdefault(f"{r['precision']}/{r['latency']}",
                           {"met": 0, "of": 0, "met_at_chance": []})
        s["of"] += 1
        s["met"] += int(r["met"])
        if r["met"] and r["at_chance"]:
            s["met_at_chance"].append(r["baseline"])
    return out


def beaten_words(v: dict) -> str:
    """'8 of 10', with the beaten baselines that never learned named."""
    return f"{v['met']} of {v['of']}" + (
        f" ({', '.join(v['met_at_chance'])} at chance accuracy: did not train with the recipe)"
        if v["met_at_chance"] else "")


# ---- entry point --------------------------------------------------------------------------
def run_report(cfg: Config) -> dict:
    import torch

    from search.data import load_for
    from search.export import RECIPE_WORDS
    from search.teacher import TeacherCache

    if not cfg.out:
        raise UserError("say where the report goes: python -m search.report out=DIR")
    out = Path(cfg.out)
    exports = Path(cfg.report.exports or Path(cfg.out_dir) / "export")
    torch.set_num_threads(cfg.search.thread_count())
    start = time.time()
    dataset = load_for(cfg)
    teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                           cfg.seed)
    # Trained (or loaded) first: its accuracy is part of every model's recipe fingerprint, so a
    # teacher cache deleted and trained again to the same accuracy keeps the models valid.
    teacher.model()
    models = found_models(cfg, exports, dataset, teacher)
    models += baseline_models(cfg, out, dataset, teacher)
    context = score(cfg, models, dataset)
    rows = dominance(models, chance=1 / dataset.num_classes)
    report = {"context": context, "recipe": f"{RECIPE_WORDS}; {cfg.export.epochs} epochs, "
              f"teacher {teacher.meta.get('model')} (test accuracy "
              f"{100 * (teacher.meta.get('test_accuracy') or 0):.2f}%)",
              "targets": {"gain_points": GAIN_POINTS, "speedup": SPEEDUP},
              "models": [entry(m) for m in models], "dominance": rows,
              "summary": summary(rows), "seconds": round(time.time() - start, 1)}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(report, indent=1))
    write_text(out / "report.md", markdown(report))
    plot_png(report, out / "report.png")
    plot_html(report, out / "report.html", cfg.report.plotly_js)
    print(markdown(report).split("\n## Dominance")[0].split("\n\n", 2)[-1])
    for key, v in report["summary"].items():
        print(f"{key}: {beaten_words(v)} baselines beaten")
    print(f"report: {out / 'report.md'}, report.json, report.png, report.html")
    return report


def with_default_device(dc: DictConfig) -> DictConfig:
    """The composed config with ``device`` set to :data:`DEFAULT_DEVICE` when none was given."""
    if OmegaConf.is_missing(dc.device, "name"):
        with open_dict(dc):
            dc.device = OmegaConf.merge(dc.device, OmegaConf.load(
                CONF_DIR / "device" / f"{DEFAULT_DEVICE}.yaml"))
    return dc


def main(dc: DictConfig) -> None:
    run_report(load(with_default_device(dc)))


COMMAND = HydraCommand(
    "search.report",
    "The found models against hand-designed edge models (MobileNetV3, LCNet, MnasNet,\n"
    "MobileNetV2, SqueezeNet), all trained with the export recipe and scored the same way:\n"
    "DIR/report.md, report.json, report.png and report.html. Without +device: rpi4.",
    ["out=report/", "+device=rpi4 out=report/ report.baselines=[lcnet_050,mobilenetv3_small_050]"])

if __name__ == "__main__":
    COMMAND.run(main)
