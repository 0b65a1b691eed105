"""Profile this machine: measure sampled architectures with onnxruntime and write a CSV.

    python -m latency_models.profile out=latency_models/data/host_measurements.csv \
        n=200 seed=0

Each sampled architecture is exported twice with random weights (all-fp32, and int8 QDQ on the
layers it puts at 8 bits) and timed with onnxruntime's CPU execution provider, pinned to
``threads`` threads, batch 1, after a warm-up, in interleaved rounds (see ``measure_many``).
The CSV keeps the architecture JSON of each row, so a device model can be refitted without
re-measuring.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from spaces.arch import Arch
from spaces.files import atomic_path

FIELDS = ("arch_id", "precision", "median_ms", "p10_ms", "p90_ms", "runs", "threads",
          "onnxruntime", "cpu", "arch_json")


def _feed(sess, batch: int = 1) -> dict:
    inp = sess.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    return {inp.name: np.random.default_rng(0).random(shape, dtype=np.float32)}


def measure_many(paths: list, threads: int = 1, rounds: int = 7, runs: int = 20,
                 warmup: int = 10, batch: int = 1) -> list[dict]:
    """Latency (ms) of several ONNX files, measured side by side.

    Timings on shared machines drift by tens of percent within seconds, so every file is
    measured in each of ``rounds`` interleaved rounds (median of ``runs`` runs per round) and
    the reported figure is the median over rounds; p10/p90 are over all runs.
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
    out = []
    for rounds_ms, all_ms in zip(per_round, every):
        p10, p90 = np.percentile(all_ms, [10, 90])
        out.append({"median_ms": float(np.median(rounds_ms)), "p10_ms": float(p10),
                    "p90_ms": float(p90), "runs": len(all_ms)})
    return out


def measure_onnx(path: str | os.PathLike, threads: int = 1, runs: int = 100,
                 batch: int = 1) -> dict:
    """Median latency (ms) of one ONNX file at ``batch`` (see :func:`measure_many`)."""
    return measure_many([path], threads=threads, rounds=5, runs=max(1, runs // 5),
                        batch=batch)[0]


def all_bits(arch: Arch, bits: int) -> Arch:
    """The architecture with every layer at ``bits``."""
    stages = tuple(replace(s, bits=(bits,) * s.depth) for s in arch.stages)
    return replace(arch, stages=stages, stem_bits=bits, head_bits=bits, classifier_bits=bits)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile(n: int, seed: int, out: str, threads: int = 1, rounds: int = 7,
            runs: int = 20) -> None:
    import onnxruntime
    import torch

    from spaces.build import build_model
    from spaces.onnx_io import export_fp32, export_int8
    from spaces.space import RandomChoices, SpaceConfig, sample_arch

    torch.manual_seed(seed)
    space = SpaceConfig()
    calib = np.random.default_rng(seed).random((32, 1, 28, 28), dtype=np.float32)
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            arch = sample_arch(RandomChoices(seed * 100003 + i), space, in_chans=1,
                               input_size=28, num_classes=10, bits=[32, 8])
            fp32 = all_bits(arch, 32)
            p32, p8 = Path(tmp) / f"{i}.onnx", Path(tmp) / f"{i}.int8.onnx"
            export_fp32(build_model(fp32).eval(), fp32, p32)
            rows.append({"arch_id": fp32.arch_id, "precision": "fp32",
                         "arch_json": fp32.to_json(indent=None)})
            paths.append(p32)
            if 8 in arch.bits:
                export_int8(p32, arch, p8, calib)
                rows.append({"arch_id": arch.arch_id, "precision": "mixed-int8",
                             "arch_json": arch.to_json(indent=None)})
                paths.append(p8)
        print(f"exported {len(paths)} models; measuring {rounds} interleaved rounds",
              flush=True)
        for row, m in zip(rows, measure_many(paths, threads=threads, rounds=rounds,
                                             runs=runs)):
            row.update(m, threads=threads, onnxruntime=onnxruntime.__version__, cpu=cpu_name())
    with atomic_path(out) as tmp_out:
        with open(tmp_out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {len(rows)} measurements to {out}")


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    bad = [a for a in argv if "=" not in a] + [k for k in args if k not in
                                               ("out", "n", "seed", "threads", "rounds", "runs")]
    if bad:
        print(f"error: unknown arguments {bad}; usage: python -m latency_models.profile "
              "out=FILE.csv n=200 seed=0 threads=1 rounds=7 runs=20", file=sys.stderr)
        return 2
    profile(n=int(args.get("n", 200)), seed=int(args.get("seed", 0)),
            out=args.get("out", "latency_models/data/host_measurements.csv"),
            threads=int(args.get("threads", 1)), rounds=int(args.get("rounds", 7)),
            runs=int(args.get("runs", 20)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
