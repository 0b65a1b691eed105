"""Benchmark 4 of the latency models: architecture predictions per second on one core.

    python scripts/latency_speed.py [--n 20000] [--device rpi4]

Samples ``--n`` architectures from the default space (mixed 32/8-bit layers), then prices
them four ways, single-threaded, timed in CPU time: op by op
(``DeviceModel.price(arch_ops(arch))``, what a graph that is no architecture of the space
gets), one architecture at a time (``DeviceModel.price(arch)``, what a trial gets), and
``DeviceModel.price_many`` in batches of 1,000 and all at once (vectorized where that gives
the device's own prices). Prints the medians of 3 repetitions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from latency_models.devices import MODEL_DIR  # noqa: E402
from latency_models.model import DeviceModel  # noqa: E402
from latency_models.ops import arch_ops  # noqa: E402
from spaces.space import RandomChoices, SpaceConfig, sample_arch  # noqa: E402


def rate(fn, n: int, reps: int = 3) -> float:
    # CPU time of this process: on a shared VM wall-clock time varies by a third from run to
    # run with what the neighbours do (steal), CPU time much less.
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return n / float(np.median(times))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--device", default="rpi4")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    space = SpaceConfig()
    archs = [sample_arch(RandomChoices(i), space, in_chans=1, input_size=28, num_classes=10,
                         bits=[32, 8]) for i in range(args.n)]
    model = DeviceModel.load(MODEL_DIR / f"{args.device}.json")
    few = archs[:2000]
    # the batches first: pricing one at a time fills the model's per-layer memo, whose
    # hundreds of thousands of objects then slow every allocation-heavy step (garbage
    # collection), which would charge the batches for it
    batched = rate(lambda: [model.price_many(archs[i:i + 1000])
                            for i in range(0, len(archs), 1000)], len(archs))
    whole = rate(lambda: model.price_many(archs), len(archs))
    ops = rate(lambda: [model.price(arch_ops(a)) for a in few], len(few))
    one = rate(lambda: [model.price(a) for a in few], len(few))
    print(f"device {args.device}, {args.n} architectures, one core (CPU time)")
    print(f"op by op, one at a time:       {ops:,.0f} predictions/s")
    print(f"price(arch), one at a time:    {one:,.0f} predictions/s")
    print(f"price_many, batches of 1,000:  {batched:,.0f} predictions/s")
    print(f"price_many, one batch:         {whole:,.0f} predictions/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
