"""The packages are this repository's (not PyPI's `spaces`), and a non-editable install finds
its configs and device models from any folder, plus the user's own device files."""

import subprocess
import sys

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
