"""The packages are this repository's (not PyPI's `spaces`), and a non-editable install finds
its configs and device models from any folder, plus the user's own device files."""

import subprocess
import sys
from pathlib import Path

import search
import spaces
from tests.conftest import ROOT


def test_packages_are_imported_from_this_repository():
    assert spaces.__file__.startswith(str(ROOT))
    assert search.__file__.startswith(str(ROOT))


def test_installed_package_finds_configs_and_user_devices(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(target), str(ROOT)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    assert (target / "conf" / "device" / "rpi4.yaml").is_file()
    assert (target / "latency_models" / "data" / "rpi4.json").is_file()
    work = tmp_path / "elsewhere"
    (work / "conf" / "device").mkdir(parents=True)
    (work / "conf" / "device" / "mypi.yaml").write_text(
        "name: mypi\nmodel: rpi4.json\nbits: [32]\ndescription: my board\n")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    arch = work / "arch.json"
    arch.write_text((ROOT / "tests" / "data" / "arch.json").read_text())

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=120)

    pred = run("-m", "latency_models.predict", "+device=rpi4", f"model={arch}")
    assert pred.returncode == 0, pred.stderr
    assert '"latency_ms"' in pred.stdout and str(target) not in pred.stderr
    cfg = run("-m", "search", "+device=mypi", "--cfg", "job")
    assert cfg.returncode == 0, cfg.stderr
    assert "name: mypi" in cfg.stdout and "space:" in cfg.stdout
    user_pred = run("-m", "latency_models.predict", "+device=mypi", f"model={arch}")
    assert user_pred.returncode == 0 and '"device": "rpi4"' in user_pred.stdout


def test_wheel_in_a_fresh_venv_runs_from_another_folder(tmp_path):
    """A non-editable install (the wheel) ships every config file: ``python -m search --cfg
    job`` composes the default config from a folder that is not the repository."""
    import sysconfig
    import venv

    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "warning" not in (built.stdout + built.stderr).lower(), built.stderr
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # The dependencies come from this test's environment (appended to sys.path, after the
    # fresh venv's own site-packages, where the wheel goes; its .pth files are not read).
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "--quiet", "--no-deps", *map(str, wheels.glob("*.whl"))],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(python), "-c", "import search, conf; print(search.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(site), where.stdout + where.stderr
    cfg = subprocess.run([str(python), "-m", "search", "--cfg", "job", "+device=rpi4"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert cfg.returncode == 0, cfg.stderr
    assert "name: rpi4" in cfg.stdout and "fashion_mnist" in cfg.stdout
    assert "kernel:" in cfg.stdout  # conf/space/mobilenet.yaml
