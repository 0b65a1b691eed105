"""``python -m search.score +device=NAME archs=PATH out=FILE.csv``: score a list of
architectures with the search's accuracy proxy, as the search scores its trials.

``archs=`` is a folder holding ``arch.json`` files at any depth (as ``python -m spaces.sample``
and ``python -m search.export`` write them) or a JSON-lines file (one architecture's JSON a
line). Each architecture is checked against the configured space, bit-widths and data (its
input size, channels and classes) before anything trains; the proxy (``proxy=``, with its
settings) is prepared once, as for a search (teacher, supernet, score scales), and scores each
one. The CSV has the columns ``arch_id`` and ``score`` (what the search's accuracy objective
would hold), then one column per measure the proxy records (validation accuracy, fidelity,
cost in seconds, ...) and the zero-cost scores the search records for every trial.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from omegaconf import DictConfig

from search.cli import HydraCommand
from search.config import Config, load
from search.errors import UserError
from spaces.arch import Arch, ArchError

__all__ = ["COMMAND", "read_archs", "score_archs", "run_score"]

HOW = ("give archs= a folder holding arch.json files (as python -m spaces.sample writes "
       "them) or a JSON-lines file with one architecture's JSON a line")


def read_archs(path: str | Path) -> list[tuple[str, Arch]]:
    """The architectures of ``path`` (a folder of ``arch.json`` files at any depth, in path
    order, or a JSON-lines file), each with where it was read (``file`` or ``file:line``).

    Raises:
        UserError: a path that does not exist, a folder without ``arch.json``, an empty file,
            or an entry that is not an architecture (named).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("arch.json"))
        if not files:
            raise UserError(f"archs={path} holds no arch.json file (searched at any depth); "
                            f"{HOW}")
        entries = [(str(f), _read_text(f)) for f in files]
    elif path.is_file():
        entries = [(f"{path}:{n}", line) for n, line in
                   enumerate(_read_text(path).splitlines(), 1) if line.strip()]
        if not entries:
            raise UserError(f"archs={path} is empty; {HOW}")
        if len(entries) > 1 and entries[0][1].strip() == "{":  # one pretty-printed arch.json
            entries = [(str(path), _read_text(path))]
    else:
        raise UserError(f"archs={path}: no such file or folder; {HOW}")
    out = []
    for where, text in entries:
        try:
            out.append((where, Arch.from_json(text)))
        except ArchError as exc:
            raise UserError(f"{where} is not an architecture ({exc}); {HOW}") from None
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); {HOW}") from None


def check_archs(cfg: Config, archs: list[tuple[str, Arch]], shape: dict) -> None:
    """Refuse, naming the file, an architecture of another input size, channels or classes
    than the data's, or one the configured space (``space=``, ``+device``'s bit-widths) does
    not hold."""
    from spaces.space import outside_space

    for where, arch in archs:
        mine = dict(in_chans=arch.in_chans, input_size=arch.input_size,
                    num_classes=arch.num_classes)
        if mine != shape:
            raise UserError(
                f"{where}: architecture {arch.arch_id} takes {arch.in_chans}x"
                f"{arch.input_size}x{arch.input_size} images of {arch.num_classes} classes, "
                f"the data ({cfg.data.name}) are {shape['in_chans']}x{shape['input_size']}x"
                f"{shape['input_size']} of {shape['num_classes']} classes; give the data= it "
                "was made for, or sample architectures for this data")
        problems = outside_space(arch, cfg.space, cfg.device.bits)
        if problems:
            raise UserError(
                f"{where}: architecture {arch.arch_id} is not in space={cfg.space.name} with "
                f"{cfg.device.name}'s bit-widths {list(cfg.device.bits)}: "
                f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}. Give the "
                "space= (and +device) it was sampled for")


def score_archs(cfg: Config, archs: list[tuple[str, Arch]], progress: bool = False
                ) -> list[dict]:
    """Each architecture scored by ``proxy=``: a row ``arch_id``, ``score``, the proxy's
    measures and the zero-cost scores. The data, the proxy (teacher, supernet, scales) are
    prepared as for a search; ``progress``: a bar over the architectures."""
    import torch
    from rich.console import Console
    from tqdm import tqdm

    from search.data import load_for
    from search.proxies import TrialInfo, make_proxy
    from search.proxy import zero_cost_scores

    console = Console(stderr=True)
    torch.set_num_threads(cfg.search.thread_count())
    dataset = load_for(cfg)
    shape = dict(in_chans=dataset.in_chans, input_size=dataset.size,
                 num_classes=dataset.num_classes)
    check_archs(cfg, archs, shape)
    train_idx, _ = dataset.split(cfg.data.val_images, cfg.seed)
    images = dataset.train_x[train_idx[:64]]
    proxy = make_proxy(cfg)
    proxy.prepare(dataset, None, shape, images, console)
    rows = []
    for _, arch in tqdm(archs, unit="arch", desc=f"scoring ({cfg.proxy.kind})",
                        disable=not progress):
        zc = zero_cost_scores(arch, images, cfg.seed)
        result = proxy.score(arch, TrialInfo(zc, {}))
        row = {"arch_id": arch.arch_id, "score": result["score"]}
        row.update((k, v) for k, v in result.items() if k != "score" and _scalar(v))
        row.update({"naswot": zc["naswot"], "synflow": zc["synflow"],
                    "zero_cost_s": zc["cost_s"]})
        rows.append(row)
    return rows


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def write_rows(rows: list[dict], out: Path) -> None:
    """The CSV: ``arch_id``, ``score``, then every other column in order of first appearance
    (a measure a row lacks is empty)."""
    from spaces.files import atomic_path

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)


def run_score(cfg: Config) -> None:
    if not cfg.archs or not cfg.out:
        raise UserError("search.score needs archs=PATH (a folder of arch.json files or a "
                        "JSON-lines file) and out=FILE.csv, e.g. python -m search.score "
                        "+device=rpi4 proxy=supernet archs=samples/ out=scores.csv")
    out = Path(cfg.out).expanduser()
    if out.is_dir():
        raise UserError(f"out={out} is a folder; give the CSV file to write, e.g. "
                        f"out={out / 'scores.csv'}")
    archs = read_archs(cfg.archs)
    start = time.time()
    rows = score_archs(cfg, archs, progress=True)
    write_rows(rows, out)
    print(f"{len(rows)} architectures scored by proxy={cfg.proxy.kind} ({cfg.proxy.score}) in "
          f"{time.time() - start:.0f} s: {out}")


def main(dc: DictConfig) -> None:
    run_score(load(dc))


COMMAND = HydraCommand(
    "search.score",
    "Score a list of architectures with the search's accuracy proxy (proxy=, its settings,\n"
    "data= and space= as for the search) and write a CSV: arch_id, score (the search's\n"
    "accuracy objective), one column per measure the proxy records. archs= is a folder of\n"
    "arch.json files (at any depth: python -m spaces.sample's, an export's) or a JSON-lines\n"
    "file with one architecture a line.",
    ["+device=rpi4 proxy=supernet archs=samples/ out=scores.csv",
     "+device=rpi4 archs=exports/ out=distilled.csv",
     "+device=rpi4 proxy=zero_cost archs=candidates.jsonl out=naswot.csv"])

if __name__ == "__main__":
    COMMAND.run(main)
