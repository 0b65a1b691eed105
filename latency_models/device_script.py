#!/usr/bin/env python3
"""Measure a profiling bundle on the device: needs only Python 3.8+, numpy and onnxruntime.

Copy the whole bundle folder (this script, manifest.json, models/) to the device and run

    python3 run_on_device.py                  # 1 thread, 7 interleaved rounds of 20 runs
    python3 run_on_device.py --threads 4      # the threads your application will use

It writes ``results.csv`` (one row per ONNX file: median, 10th and 90th percentile in ms,
number of timed runs, the wall-clock windows (Unix seconds) of its timed runs, for aligning a
power-meter log (use ``--window 3`` when you log power), and, on x86 Linux machines whose RAPL
counter is readable, the energy per inference measured by it) and ``device.json``
(onnxruntime version, CPU model and instruction-set flags, frequency governor, threads), both
beside this script.
Copy them back and fit the device model:

    python -m latency_models.fit device=NAME bundle=BUNDLE_DIR power_w=WATTS

Timing: files are measured in chunks of ``--chunk`` (100); in a chunk each file gets its own
session (sequential execution, fixed threads) and warm-up runs, then every file is timed once
per round, round after round, so that a slow minute (thermal throttling, a background job)
touches all files alike; a file's figure is the median of its per-round medians. A slow spell
that lasts a whole chunk would still shift it, so the bundle's first file is timed with every
chunk as a reference, and chunks where it ran more than ``--steady`` (10%) away from its
median over all chunks are measured again (``device.json`` records the reference's times).
For steady figures set the governor to ``performance`` (the script warns when it is not) and
close other programs. An interrupted run resumes: finished chunks are kept in
``results.partial.json``.
"""

import argparse
import csv
import json
import os
import platform
import sys
import time

__all__ = ["cpu_flags", "cpu_model", "damaged_files", "feed", "FORMAT", "governor", "ISA_FLAGS",
           "main", "measure_chunk", "RAPL", "read_energy_uj", "session", "settle", "unsteady"]

FORMAT = "edgenas-profile-bundle"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "cpu model", "processor") and ":" in line:
                    value = line.split(":", 1)[1].strip()
                    if value and not value.isdigit():
                        return value
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Instruction-set extensions that decide which kernels onnxruntime can use (int8 dot products
# above all): two machines with the same CPU name can differ here.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
             "asimd", "asimddp", "i8mm", "sve", "neon")


def cpu_flags(path="/proc/cpuinfo"):
    """The ``ISA_FLAGS`` this CPU reports (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    found = set()
    try:
        with open(path) as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features") and ":" in line:
                    found.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    return [flag for flag in ISA_FLAGS if flag in found]


RAPL = "/sys/class/powercap/intel-rapl:0/energy_uj"  # package energy counter (x86 Linux)


def read_energy_uj(path):
    """The RAPL energy counter in microjoules, or None where it cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def governor():
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def session(path, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def feed(sess):
    import numpy as np

    out = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = np.float16 if "float16" in inp.type else np.float32
        out[inp.name] = np.random.default_rng(0).random(shape).astype(dtype)
    return out


def damaged_files(bundle, models):
    """The manifest's model files that are missing, or whose bytes differ from the checksum
    the manifest records (bundles written before checksums: presence only), as messages."""
    import hashlib

    bad = []
    for entry in models:
        path = os.path.join(bundle, entry["file"])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            bad.append(f"{entry['file']} missing")
            continue
        if "sha256" in entry and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            bad.append(f"{entry['file']} differs from its checksum")
    return bad


def measure_chunk(bundle, chunk, anchor, args):
    """Time the files of one chunk in interleaved rounds, with the bundle's reference file
    ``anchor`` timed in every round too. Returns {file: [[times ms], start, end, mJ] per round}
    for the chunk's files and the anchor's median (ms) in this chunk."""
    import numpy as np

    names = list(chunk) if anchor in chunk else [anchor] + list(chunk)
    sessions = []
    for name in names:
        sess = session(os.path.join(bundle, name), args.threads)
        x = feed(sess)
        for _ in range(args.warmup):
            sess.run(None, x)
        sessions.append((sess, x))
    per_file = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, (sess, x) in zip(names, sessions):
            times = []
            e_start = read_energy_uj(args.rapl)
            t_start = time.time()
            while len(times) < args.runs or time.time() - t_start < args.window:
                t0 = time.perf_counter()
                sess.run(None, x)
                times.append((time.perf_counter() - t0) * 1e3)
            e_end = read_energy_uj(args.rapl)
            # energy per inference (mJ) over this window; None without a counter or when
            # it wrapped around
            mj = (e_end - e_start) / 1e3 / len(times) if e_start is not None and \
                e_end is not None and e_end > e_start else None
            per_file[name].append([times, t_start, time.time(), mj])
    anchor_ms = float(np.median([np.median(r[0]) for r in per_file[anchor]]))
    return {name: per_file[name] for name in chunk}, anchor_ms


def settle(anchor_ms, measure, steady, retries):
    """Measure again the chunks caught in a slow spell.

    ``anchor_ms[c]`` is the reference file's median in chunk c (updated in place). A chunk
    where it ran more than ``steady`` away from its median over all chunks is measured again
    with ``measure(c) -> (result, reference ms)``, up to ``retries`` times; an attempt is kept
    only when its reference is closer. Yields ``(c, off before, off after, result or None)``
    per attempt, ``result`` being None when the attempt was not kept. Returns nothing; what
    stays unsteady is ``unsteady(anchor_ms, steady)``.
    """
    import numpy as np

    reference = float(np.median(anchor_ms))
    for c in range(len(anchor_ms)):
        for _ in range(retries if steady else 0):
            before = abs(anchor_ms[c] / reference - 1)
            if before <= steady:
                break
            result, ms = measure(c)
            kept = abs(ms / reference - 1) < before
            if kept:
                anchor_ms[c] = ms
            yield c, before, abs(anchor_ms[c] / reference - 1), result if kept else None


def unsteady(anchor_ms, steady):
    """Chunks whose reference ran more than ``steady`` away from its median over all chunks."""
    import numpy as np

    reference = float(np.median(anchor_ms))
    return [c for c, ms in enumerate(anchor_ms) if steady and abs(ms / reference - 1) > steady]


def _duration(seconds):
    """``seconds`` as ``1 h 05 min``, ``4 min 10 s`` or ``12 s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def main(argv=None):
    import numpy as np

    parser = argparse.ArgumentParser(description="Measure an edgenas profiling bundle.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per file per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rapl", default=RAPL,
                        help="RAPL energy counter to read around every timed window (ignored "
                             "where it cannot be read; reading it may need root)")
    parser.add_argument("--chunk", type=int, default=100,
                        help="files loaded and measured together (interleaved rounds)")
    parser.add_argument("--window", type=float, default=0.0,
                        help="time each file for at least this many seconds per round; with a "
                             "power meter logging once a second use 3 or more")
    parser.add_argument("--steady", type=float, default=0.1,
                        help="re-measure a chunk in which the reference file (the bundle's "
                             "first, timed with every chunk) ran more than this fraction away "
                             "from its median over all chunks: a slow spell (throttling, a busy "
                             "neighbour) that interleaved rounds cannot even out; 0: never")
    parser.add_argument("--retries", type=int, default=3,
                        help="re-measurements per unsteady chunk, at most")
    parser.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    if min(args.threads, args.rounds, args.runs, args.chunk) < 1 or min(
            args.warmup, args.steady, args.retries) < 0:
        parser.error("--threads, --rounds, --runs and --chunk must be at least 1, --warmup, "
                     "--steady and --retries at least 0")
    try:
        with open(os.path.join(args.bundle, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {args.bundle} has no readable manifest.json ({exc}); run this script "
                 "from the bundle folder that `python -m latency_models.profile bundle=DIR` "
                 "wrote, with its models/ folder beside it")
    if manifest.get("format") != FORMAT:
        sys.exit(f"error: {args.bundle}/manifest.json is not an edgenas profiling bundle")
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("error: onnxruntime is not installed; install it with "
                 "`python3 -m pip install onnxruntime numpy`")
    if governor() not in ("performance", "unknown"):
        print(f"warning: CPU frequency governor is {governor()!r}; figures are steadier with "
              "'performance' (sudo cpupower frequency-set -g performance)", file=sys.stderr)
    files = [m["file"] for m in manifest["models"]]
    bad = damaged_files(args.bundle, manifest["models"])
    if bad:
        sys.exit(f"error: {len(bad)} of the bundle's {len(files)} model files are missing or "
                 f"damaged ({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''}): copy the "
                 "whole bundle folder to the device again (e.g. `scp -r` or `rsync -a`) and "
                 "run this script from it")
    partial_path = os.path.join(args.bundle, "results.partial.json")
    state = {"settings": [3, args.threads, args.runs, args.window, args.rounds, args.chunk],
             "done": {}, "anchor_ms": {}, "remeasured": 0}
    if os.path.exists(partial_path):
        with open(partial_path) as f:
            old = json.load(f)
        if old.get("settings") == state["settings"]:
            state = old
            print(f"resuming: {len(state['done'])} of {len(files)} files already measured")
    # Files are measured in chunks: a few hundred live sessions at once would not fit a small
    # board's memory, and even on a large machine they slow each other down (cache pressure:
    # 7% on the project's benchmark machine with 3,300 sessions loaded).
    chunks = [files[i:i + args.chunk] for i in range(0, len(files), args.chunk)]
    anchor = files[0]

    def save():
        with open(partial_path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(partial_path + ".tmp", partial_path)

    started, done_before = time.time(), len(state["done"])
    for c, chunk in enumerate(chunks):
        if all(name in state["done"] for name in chunk):
            continue
        per_file, state["anchor_ms"][str(c)] = measure_chunk(args.bundle, chunk, anchor, args)
        state["done"].update(per_file)
        save()
        rate = (len(state["done"]) - done_before) / max(time.time() - started, 1e-9)
        left = (len(files) - len(state["done"])) / rate if rate > 0 else 0
        print(f"chunk {c + 1}/{len(chunks)} measured ({len(state['done'])} of {len(files)} "
              f"files, about {_duration(left)} left)", flush=True)

    # A slow spell longer than a round shifts a whole chunk; the reference file timed with
    # every chunk shows it, and such chunks are measured again.
    anchor_ms = [state["anchor_ms"][str(c)] for c in range(len(chunks))]
    for c, before, after, per_file in settle(
            anchor_ms, lambda c: measure_chunk(args.bundle, chunks[c], anchor, args),
            args.steady, args.retries):
        state["remeasured"] += 1
        if per_file is not None:
            state["anchor_ms"][str(c)] = anchor_ms[c]
            state["done"].update(per_file)
        save()
        print(f"chunk {c + 1}/{len(chunks)} measured again: the reference file ran "
              f"{before:.0%} off its usual speed, now {after:.0%}", flush=True)
    still = [c + 1 for c in unsteady(anchor_ms, args.steady)]
    if still:
        print(f"warning: chunks {still} stayed more than {args.steady:.0%} off the reference "
              "speed after re-measuring; the machine's speed wandered (measure again on a "
              "quieter machine, or with more --rounds)", file=sys.stderr)
    rows = []
    for name in files:
        per_round = state["done"][name]
        every = [t for r in per_round for t in r[0]]
        p10, p90 = np.percentile(every, [10, 90])
        energies = [r[3] for r in per_round if r[3] is not None]
        rows.append({"file": name,
                     "median_ms": float(np.median([np.median(r[0]) for r in per_round])),
                     "p10_ms": float(p10), "p90_ms": float(p90), "runs": len(every),
                     "windows": ";".join(f"{r[1]:.3f}:{r[2]:.3f}" for r in per_round),
                     "energy_mj": float(np.median(energies)) if len(energies) == len(
                         per_round) else ""})
    out = os.path.join(args.bundle, "results.csv")
    with open(out + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out + ".tmp", out)
    info = {"onnxruntime": ort.__version__, "cpu": cpu_model(), "cpu_flags": cpu_flags(),
            "governor": governor(),
            "energy_counter": args.rapl if read_energy_uj(args.rapl) is not None else None,
            "threads": args.threads, "rounds": args.rounds, "runs": args.runs,
            "reference": {"file": anchor, "median_ms_by_chunk": [
                round(ms, 6) for ms in anchor_ms],
                "chunks_measured_again": state["remeasured"], "unsteady_chunks": still},
            "machine": platform.machine(), "system": platform.platform(),
            "python": platform.python_version(), "bundle": manifest.get("id", "")}
    with open(os.path.join(args.bundle, "device.json"), "w") as f:
        json.dump(info, f, indent=1)
    os.remove(partial_path)
    print(f"wrote {out} and device.json ({len(rows)} files); copy them back and run "
          "`python -m latency_models.fit device=NAME bundle=THIS_FOLDER power_w=WATTS`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
