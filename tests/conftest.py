"""Shared fixtures: tiny architectures, a CLI runner that works from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spaces.arch import Arch, Stage

ROOT = Path(__file__).resolve().parent.parent

# The in-process tests train and run tiny models: one thread is as fast for them, and it never
# oversubscribes the cores that a test's CLI subprocesses or the rest of the machine use (two
# OpenMP threads on a busy 2-core machine made one training test 15-40 times slower).
torch.set_num_threads(1)


def tiny_arch(bits: int = 32, prune: float = 0.0, se: float = 0.25, resolution: int = 28,
              act: str = "hswish") -> Arch:
    """Two stages, 28x28 input: builds and trains in milliseconds."""
    return Arch(
        in_chans=1, input_size=28, num_classes=4, resolution=resolution, stem_chs=8,
        stem_bits=bits,
        stages=(
            Stage("ds", 3, 1, se, "relu", 1, 1, 8, 0.0, (bits,)),
            Stage("ir", 5, 3, se, act, 2, 2, 16, prune, (bits, 32)),
        ),
        head_chs=32, head_bits=bits, classifier_bits=32,
    )


@pytest.fixture
def arch() -> Arch:
    return tiny_arch()


def cli_env(extra: dict | None = None) -> dict:
    """The environment of a CLI subprocess: the repository importable, warnings quiet."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    env.pop("EDGENAS_DEBUG", None)
    env.update(extra or {})
    return env


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m ...`` in a subprocess and wait for it."""
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=cli_env(env),
                          capture_output=True, text=True, timeout=timeout)


def run_here(*args: str, cwd: Path | None = None, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """Run ``-m MODULE ARGS`` in this process, as ``python -m`` runs it (the module's
    ``__main__`` code, its exit status, its stdout and stderr), without a new interpreter.

    A CLI subprocess spends about 4 seconds importing torch and timm before it reaches the
    bad input a test gives it; here they are imported already. The process-wide state the
    CLI changes (working folder, environment, warning filters, torch threads) is put back.
    ``run_cli`` stays the proof that a real process behaves the same (a few cases run both
    ways)."""
    import contextlib
    import io
    import runpy
    import warnings

    assert args[0] == "-m", args
    module, argv = args[1], list(args[2:])
    out, err = io.StringIO(), io.StringIO()
    saved = (sys.argv, os.getcwd(), dict(os.environ), torch.get_num_threads())
    os.environ.update(cli_env(env))
    os.environ.pop("EDGENAS_DEBUG", None)
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = [module, *argv]
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")  # PYTHONWARNINGS=ignore in a subprocess
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        os.environ.clear()
        os.environ.update(saved[2])
        torch.set_num_threads(saved[3])
    return subprocess.CompletedProcess([module, *argv], code, out.getvalue(), err.getvalue())


def start_cli(args: list[str], capture: bool = False, env: dict | None = None
              ) -> subprocess.Popen:
    """Start ``python -m ...`` in the background (to kill or interrupt it).

    SIGINT gets its default disposition in the child, as in a terminal: a test run started in
    the background of a non-interactive shell inherits SIGINT ignored, and Python then never
    raises KeyboardInterrupt (the Ctrl-C test would wait for nothing)."""
    import signal

    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=cli_env(env), stdout=out,
                            stderr=out, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def search_args(tmp: Path, *extra: str, device: str = "rpi4", storage: str | None = None,
                out: str = "out") -> list[str]:
    """A fast search on synthetic data with everything under ``tmp``."""
    return ["-m", "search", f"+device={device}", "data=synthetic", "proxy=zero_cost",
            f"storage.url={storage or f'sqlite:///{tmp}/study.db'}", f"out_dir={tmp}/{out}",
            f"cache_dir={tmp}/cache", "search.n_trials=3", "search.threads=1", *extra]


def _local_postgres():
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_postgres",
                                                  ROOT / "scripts" / "local_postgres.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server on 127.0.0.1 for this test session: (module, data folder,
    URL). Skipped where the server programs are missing, unless EDGENAS_REQUIRE_POSTGRES=1
    (CI), where that is a failure."""
    import shutil
    import tempfile

    pg = _local_postgres()
    try:
        pg.bindir()
    except pg.PostgresMissing as exc:
        if os.environ.get("EDGENAS_REQUIRE_POSTGRES") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    parent = Path(tempfile.mkdtemp(prefix="edgenas-pg-"))
    parent.chmod(0o755)  # the server may run as the postgres user
    data = parent / "data"
    url = pg.start(data)
    try:
        yield pg, data, url
    finally:
        try:
            pg.stop(data)
        finally:
            shutil.rmtree(data.parent, ignore_errors=True)
