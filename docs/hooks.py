"""MkDocs hook: the result plots under ``scripts/results/`` are served as ``results/img/...``,
so that the pages show them without a copy in ``docs/`` (each figure lives in one place)."""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "scripts" / "results"


def on_files(files, config):
    for png in sorted(RESULTS.rglob("*.png")):
        uri = "results/img/" + png.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
