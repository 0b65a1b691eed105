"""Profile a device: measure sampled architectures here, or write a bundle for another device.

    # this machine: measure 200 sampled networks (fp32 and mixed int8), write a CSV
    python -m latency_models.profile out=host_measurements.csv n=200 seed=0
    # another device: write a bundle of ONNX benchmarks and the script that measures them
    python -m latency_models.profile bundle=rpi-bundle networks=60 seed=0

A bundle holds, for ``networks`` architectures sampled from the search space (squeeze-
excitation, kernels 3/5/7, pruned widths, mixed 8-bit layers): each network in fp32, in int8
QDQ where it has 8-bit layers and (for the first ``fp16`` of them) in fp16; and every distinct
layer of those networks cut out as a model of its own, fp32 and int8. ``manifest.json`` lists
every file with its op list; ``run_on_device.py`` measures them with only numpy and
onnxruntime (copy the folder to the device); ``python -m latency_models.fit bundle=DIR`` fits
the device model from the results.

Each sampled architecture is exported twice with random weights (all-fp32, and int8 QDQ on the
layers it puts at 8 bits) and timed with onnxruntime's CPU execution provider, pinned to
``threads`` threads, batch 1, after a warm-up, in interleaved rounds (see ``measure_many``).
The CSV keeps the architecture JSON of each row, so a device model can be refitted without
re-measuring.
"""

from __future__ import annotations

import csv
import hashlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from latency_models.sources import BUNDLE_FORMAT, BUNDLE_VERSION
from spaces.arch import all_bits
from spaces.cli import HydraApp, arg
from spaces.files import atomic_path

__all__ = ["BUNDLE_README", "COMMAND", "cpu_name", "FIELDS", "main", "measure_chunked",
           "measure_many", "measure_onnx", "ops_json", "profile", "ProfileConfig", "run",
           "write_bundle"]

FIELDS = ("arch_id", "precision", "median_ms", "p10_ms", "p90_ms", "runs", "threads",
          "onnxruntime", "cpu", "arch_json")


def _feed(sess, batch: int = 1) -> dict:
    inp = sess.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    return {inp.name: np.random.default_rng(0).random(shape, dtype=np.float32)}


def measure_many(paths: list, threads: int = 1, rounds: int = 7, runs: int = 20,
                 warmup: int = 10, batch: int = 1,
                 on_round: Optional[Callable[[], None]] = None,
                 keep_rounds: bool = False) -> list[dict]:
    """Latency (ms) of several ONNX files, measured side by side.

    Timings on shared machines drift by tens of percent within seconds, so every file is
    measured in each of ``rounds`` interleaved rounds (median of ``runs`` runs per round) and
    the reported figure is the median over rounds; p10/p90 are over all runs; with
    ``keep_rounds``, ``round_ms`` holds the rounds' medians in order. ``on_round`` is called
    after each round (for progress bars).
    """
    from spaces.onnx_io import ort_session

    sessions = [ort_session(p, threads) for p in paths]
    feeds = [_feed(s, batch) for s in sessions]
    for sess, feed in zip(sessions, feeds):
        for _ in range(warmup):
            sess.run(None, feed)
    per_round: list[list[float]] = [[] for _ in paths]
    every: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - t0) * 1e3)
            per_round[i].append(float(np.median(times)))
            every[i] += times
        if on_round is not None:
            on_round()
    out = []
    for rounds_ms, all_ms in zip(per_round, every):
        p10, p90 = np.percentile(all_ms, [10, 90])
        out.append({"median_ms": float(np.median(rounds_ms)), "p10_ms": float(p10),
                    "p90_ms": float(p90), "runs": len(all_ms),
                    **({"round_ms": rounds_ms} if keep_rounds else {})})
    return out


def measure_chunked(paths: list, chunk: int = 100, steady: float = 0.1, retries: int = 3,
                    **kwargs) -> list[dict]:
    """:func:`measure_many` over chunks of ``chunk`` files, with ``paths[0]`` timed in every
    chunk as a reference: a chunk where it ran more than ``steady`` away from its median over
    all chunks (a slow spell that lasted the whole chunk) is measured again, up to
    ``retries`` times, keeping the steadiest attempt (``run_on_device.py``'s rule:
    :func:`latency_models.device_script.settle`)."""
    from latency_models.device_script import settle

    def run(c: int) -> tuple[list[dict], float]:
        got = measure_many([paths[0]] + parts[c], **kwargs)
        return got[1:], got[0]["median_ms"]

    parts = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    results, anchor_ms = map(list, zip(*[run(c) for c in range(len(parts))]))
    for c, _, _, again in settle(anchor_ms, run, steady, retries):
        if again is not None:
            results[c] = again
    return [m for got in results for m in got]


def measure_onnx(path: str | os.PathLike, threads: int = 1, runs: int = 100,
                 batch: int = 1) -> dict:
    """Median latency (ms) of one ONNX file at ``batch`` (see :func:`measure_many`)."""
    return measure_many([path], threads=threads, rounds=5, runs=max(1, runs // 5),
                        batch=batch)[0]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile(n: int, seed: int, out: str, threads: int = 1, rounds: int = 7,
            runs: int = 20, round_ms: list | None = None, announce: bool = True) -> None:
    """Export ``n`` architectures sampled from the default space (seed ``seed``) in fp32 and,
    where they have 8-bit layers, mixed int8; measure them here side by side and write the
    CSV ``out`` (``FIELDS``). ``round_ms``, where given, receives each row's round medians
    (how steady the machine was)."""
    import onnxruntime
    import torch
    from tqdm import tqdm

    from spaces.build import as_trained, build_model
    from spaces.onnx_io import export_fp32, export_int8
    from spaces.space import RandomChoices, SpaceConfig, sample_arch

    torch.manual_seed(seed)
    space = SpaceConfig()
    calib = np.random.default_rng(seed).random((32, 1, 28, 28), dtype=np.float32)
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in tqdm(range(n), desc="exporting networks", unit="net"):
            arch = sample_arch(RandomChoices(seed * 100003 + i), space, in_chans=1,
                               input_size=28, num_classes=10, bits=[32, 8])
            fp32 = all_bits(arch, 32)
            p32, p8 = Path(tmp) / f"{i}.onnx", Path(tmp) / f"{i}.int8.onnx"
            export_fp32(as_trained(build_model(fp32), seed * 100003 + i).eval(), fp32, p32)
            rows.append({"arch_id": fp32.arch_id, "precision": "fp32",
                         "arch_json": fp32.to_json(indent=None)})
            paths.append(p32)
            if 8 in arch.bits:
                export_int8(p32, arch, p8, calib)
                rows.append({"arch_id": arch.arch_id, "precision": "mixed-int8",
                             "arch_json": arch.to_json(indent=None)})
                paths.append(p8)
        print(f"exported {len(paths)} models; measuring {rounds} interleaved rounds"
              + (" (the same network at the same speed in every round: keep the machine "
                 "otherwise idle)" if round_ms is not None else ""), flush=True)
        # In chunks of 100 live sessions, as run_on_device.py does: thousands of loaded
        # sessions slow each other down (cache pressure). The first file is timed with every
        # chunk as a reference; a chunk caught in a slow spell is measured again.
        chunks = -(-len(paths) // 100)
        with tqdm(total=chunks * rounds, desc="measuring", unit="round") as bar:
            measured = measure_chunked(paths, threads=threads, rounds=rounds, runs=runs,
                                       on_round=bar.update, keep_rounds=round_ms is not None)
        for row, m in zip(rows, measured):
            if round_ms is not None:
                round_ms.append(m["round_ms"])
            m = {k: v for k, v in m.items() if k != "round_ms"}
            row.update(m, threads=threads, onnxruntime=onnxruntime.__version__, cpu=cpu_name())
    with atomic_path(out) as tmp_out:
        with open(tmp_out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    if announce:
        print(f"wrote {len(rows)} measurements to {out}")




def ops_json(ops: list) -> list[list[int]]:
    return [[op.kind, op.macs, op.elems, op.bits, op.cin, op.cout, op.kernel, op.stride,
             op.size] for op in ops]


def write_bundle(out: str | os.PathLike, networks: int = 60, seed: int = 0,
                 fp16: int = 8) -> dict:
    """Write a profiling bundle (see the module docstring); returns its manifest."""
    import json
    import shutil

    import onnx
    import torch
    from tqdm import tqdm

    from latency_models.ops import arch_ops, layer_ops, onnx_ops, signature
    from spaces.build import as_trained, build_model
    from spaces.files import write_bytes, write_text
    from spaces.onnx_io import export_fp32, export_int8, extract_layers
    from spaces.space import RandomChoices, SpaceConfig, sample_arch

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"bundle folder {out} exists and is not empty; choose a new "
                              "folder (a bundle's files must match its manifest)")
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    space = SpaceConfig()
    calib = np.random.default_rng(seed).random((32, 1, 28, 28), dtype=np.float32)
    entries, seen_layers = [], set()

    def add(model: onnx.ModelProto, name: str, **entry) -> None:
        data = model.SerializeToString()
        write_bytes(out / "models" / name, data)
        # the file's checksum: the device script refuses a file damaged or cut short in the
        # copy, and the bundle's id below covers the ONNX bytes, not only their description
        entries.append({"file": f"models/{name}", "sha256": hashlib.sha256(data).hexdigest(),
                        **entry})

    bar = tqdm(total=networks, desc="writing bundle", unit="net")
    for i in range(networks):
        arch = sample_arch(RandomChoices(seed * 100003 + i), space, in_chans=1, input_size=28,
                           num_classes=10, bits=[32, 8])
        fp32 = all_bits(arch, 32)
        with tempfile.TemporaryDirectory() as tmp:
            p32, p8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            export_fp32(as_trained(build_model(fp32), seed * 100003 + i).eval(), fp32, p32)
            variants = [("fp32", fp32, onnx.load(str(p32)))]
            if 8 in arch.bits:
                export_int8(p32, arch, p8, calib)
                variants.append(("int8", arch, onnx.load(str(p8))))
        for precision, a, graph in variants:
            add(graph, f"n{i:03d}.{precision}.onnx", unit="network", network=i,
                precision=precision, arch_json=a.to_json(indent=None), ops=ops_json(arch_ops(a)))
            layers = {layer.name: layer for layer in a.layers()}
            for name, sub in extract_layers(graph, a).items():
                ops = layer_ops(layers[name])
                sig = signature(ops)
                if sig in seen_layers:
                    continue
                seen_layers.add(sig)
                add(sub, f"n{i:03d}.{precision}.{name}.onnx", unit="layer", network=i,
                    precision=precision, layer=name, ops=ops_json(ops))
        if i < fp16:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            half = convert_float_to_float16(variants[0][2], keep_io_types=True)
            add(half, f"n{i:03d}.fp16.onnx", unit="network", network=i, precision="fp16",
                arch_json=fp32.to_json(indent=None), ops=ops_json(onnx_ops(half)))
        bar.update()
        bar.set_postfix_str(f"{len(entries)} files")
    bar.close()
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "seed": seed,
                "networks": networks, "input": [1, 1, 28, 28], "models": entries}
    manifest["id"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()
                                    ).hexdigest()[:12]
    write_text(out / "manifest.json", json.dumps(manifest, separators=(",", ":")))
    shutil.copyfile(Path(__file__).with_name("device_script.py"), out / "run_on_device.py")
    write_text(out / "README.txt", BUNDLE_README.format(n=len(entries)))
    return manifest


BUNDLE_README = """edgenas profiling bundle: {n} ONNX files to time on the device.

On the device (Python 3.8+):
    python3 -m pip install onnxruntime numpy
    python3 run_on_device.py --threads 1        # writes results.csv and device.json
Optional, with a power meter logging timestamp,watts: add --window 3 and keep the log.

Back on the machine with edgenas:
    python -m latency_models.fit device=NAME bundle=THIS_FOLDER power_w=WATTS \
        [power_log=meter.csv]
"""


@dataclass
class ProfileConfig:
    """``python -m latency_models.profile``: measure here (``out=``) or write a bundle for
    another device (``bundle=``)."""

    out: str = arg("host_measurements.csv", "measure here: the CSV to write")
    n: int = arg(200, "measure here: networks to sample")
    threads: int = arg(1, "measure here: onnxruntime threads")
    rounds: int = arg(7, "measure here: interleaved rounds, median over them")
    runs: int = arg(20, "measure here: runs per round")
    bundle: Optional[str] = arg(None, "another device: the new bundle folder to write")
    networks: int = arg(60, "bundle: networks to sample")
    fp16: int = arg(8, "bundle: how many of them also in fp16")
    seed: int = arg(0, "the sampling seed")


COMMAND = HydraApp(
    module="latency_models.profile",
    summary="Profile a device. Here: measure networks sampled from the search space and write\n"
            "a CSV for `latency_models.fit measurements=`. For another device: write a bundle\n"
            "of ONNX files and the script that measures them there (bundle=DIR).",
    schema=ProfileConfig,
    examples=["out=host_measurements.csv n=200 seed=0", "bundle=pi-bundle networks=60"],
    usage_args="(out=FILE.csv | bundle=DIR)",
)


def run(cfg: ProfileConfig) -> int:
    """Measure here, or write a bundle. Returns the exit status."""
    if min(cfg.n, cfg.threads, cfg.rounds, cfg.runs, cfg.networks) < 1 or cfg.fp16 < 0:
        print("error: n, threads, rounds, runs and networks must be at least 1, fp16 at least "
              f"0. {COMMAND.usage()}", file=sys.stderr)
        return 2
    if cfg.bundle:
        try:
            manifest = write_bundle(cfg.bundle, networks=cfg.networks, seed=cfg.seed,
                                    fp16=cfg.fp16)
        except (FileExistsError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {cfg.bundle}: {len(manifest['models'])} ONNX files, manifest.json, "
              "run_on_device.py; copy the folder to the device and run "
              "`python3 run_on_device.py` there")
        return 0
    profile(n=cfg.n, seed=cfg.seed, out=cfg.out, threads=cfg.threads, rounds=cfg.rounds,
            runs=cfg.runs)
    return 0


def main(argv: list[str] | None = None) -> int:
    return COMMAND.run(run, argv)


if __name__ == "__main__":
    sys.exit(main())
