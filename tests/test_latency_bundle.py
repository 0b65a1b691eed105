"""Adding a device: bundle -> on-device script -> fit -> a device the search can use."""

import csv
import gzip
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from latency_models import device_script, fit
from latency_models.features import precision_transitions
from latency_models.model import DeviceModel
from latency_models.ops import Op, arch_ops, layer_ops, onnx_ops, signature
from latency_models.power import energy_from_log, write_power_log
from latency_models.profile import write_bundle
from latency_models.sources import MeasurementError, read_bundle
from spaces.arch import all_bits
from spaces.build import build_model
from spaces.onnx_io import export_fp32, export_int8, extract_layers, ort_session
from tests.conftest import ROOT, cli_env
from tests.test_arch import sample


def test_layers_cut_from_exports_have_the_ops_of_their_layer(tmp_path):
    calib = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    arch = sample(3, bits=(32, 8))
    fp32 = all_bits(arch, 32)
    export_fp32(build_model(fp32).eval(), fp32, tmp_path / "m.onnx")
    export_int8(tmp_path / "m.onnx", arch, tmp_path / "q.onnx", calib)
    for a, path in ((fp32, "m.onnx"), (arch, "q.onnx")):
        layers = {layer.name: layer for layer in a.layers()}
        cut = extract_layers(onnx.load(str(tmp_path / path)), a)
        assert set(cut) == set(layers)
        for name, model in cut.items():
            assert signature(onnx_ops(model)) == signature(layer_ops(layers[name])), name
        onnx.save(cut["head"], str(tmp_path / "head.onnx"))
        ort_session(tmp_path / "head.onnx")  # runs on its own


@pytest.fixture(scope="module")
def measured_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    manifest = write_bundle(folder, networks=6, seed=1, fp16=1)
    assert device_script.main(["--bundle", str(folder), "--rounds", "2", "--runs", "3",
                               "--warmup", "1"]) == 0
    return folder, manifest


def test_bundle_covers_networks_layers_and_precisions(measured_bundle):
    folder, manifest = measured_bundle
    units = manifest["models"]
    assert {u["unit"] for u in units} == {"network", "layer"}
    assert {"fp32", "int8", "fp16"} <= {u["precision"] for u in units}
    assert all((folder / u["file"]).is_file() for u in units)
    info = json.loads((folder / "device.json").read_text())
    assert info["threads"] == 1 and info["onnxruntime"] and info["cpu"]
    assert isinstance(info["cpu_flags"], list)
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(units) and all(float(r["median_ms"]) > 0 for r in rows)
    # the script needs only numpy and onnxruntime
    source = (folder / "run_on_device.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines()
               if line.strip().startswith(("import ", "from "))}
    assert imports <= {"argparse", "csv", "hashlib", "json", "os", "platform", "sys", "time",
                       "numpy", "onnxruntime"}


def test_a_gzipped_bundle_reads_as_the_plain_one_and_a_damaged_one_is_refused(
        measured_bundle, tmp_path):
    """The shipped host bundle keeps its manifest (and may keep its results) gzipped."""
    folder, _ = measured_bundle
    packed = tmp_path / "packed"
    packed.mkdir()
    for name in ("manifest.json", "results.csv"):
        (packed / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes()))
    plain, zipped = read_bundle(folder), read_bundle(packed)
    assert zipped["samples"] == plain["samples"] and zipped["units"] == plain["units"]
    assert list(zipped["latency_ms"]) == list(plain["latency_ms"])
    (packed / "manifest.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MeasurementError, match="manifest.json.gz is not valid JSON"):
        read_bundle(packed)


def test_fit_from_bundle_writes_model_and_device_config(measured_bundle, tmp_path,
                                                         monkeypatch, capsys):
    folder, _ = measured_bundle
    monkeypatch.chdir(tmp_path)
    assert fit.main(["device=myboard", f"bundle={folder}", "power_w=4"]) == 0
    out = capsys.readouterr().out
    assert "held-out" in out and "conf/device/myboard.yaml" in out
    # a bundle this small has too few networks for the network correction, and says so
    assert "network correction: none (too few networks" in out
    model = DeviceModel.load(tmp_path / "conf" / "device" / "myboard.json")
    assert model.correction is None
    assert model.meta["measured_on"]["threads"] == 1 and len(model.lookup)
    assert {"32", "8", "16"} <= set(model.ops.coef_)
    conf = (tmp_path / "conf" / "device" / "myboard.yaml").read_text()
    assert "name: myboard" in conf and "model: conf/device/myboard.json" in conf
    pred = subprocess.run([sys.executable, "-m", "latency_models.predict", "+device=myboard",
                           f"model={folder / 'models' / 'n000.fp32.onnx'}"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)["provenance"]["latency"] == "measured"


def test_bundle_results_that_do_not_fit_are_clear_errors(measured_bundle, tmp_path):
    folder, _ = measured_bundle
    with pytest.raises(MeasurementError, match="no manifest.json"):
        read_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text((folder / "manifest.json").read_text())
    with pytest.raises(MeasurementError, match="run_on_device.py"):
        read_bundle(tmp_path)
    lines = (folder / "results.csv").read_text().splitlines()
    (tmp_path / "results.csv").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(MeasurementError, match="did not finish"):
        read_bundle(tmp_path)
    (tmp_path / "results.csv").write_text(lines[0] + "\nmodels/other.onnx,1,1,1,3,0:1\n")
    with pytest.raises(MeasurementError, match="not in this bundle"):
        read_bundle(tmp_path)
    (tmp_path / "results.csv").write_text(lines[0] + "\n" + lines[1].replace(
        lines[1].split(",")[1], "nan", 1) + "\n")
    with pytest.raises(MeasurementError, match="not a positive number"):
        read_bundle(tmp_path)


def test_write_bundle_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        write_bundle(tmp_path, networks=1)


def test_energy_from_a_power_log(tmp_path):
    results = tmp_path / "results.csv"
    results.write_text("file,median_ms,windows\na.onnx,2.0,10:12;20:22\nb.onnx,1.0,30:33\n")
    t = np.arange(0, 40, 0.5)
    w = np.where(t < 25, 5.0, 3.0)
    write_power_log(tmp_path / "log.csv", t, w)
    assert energy_from_log(results, tmp_path / "log.csv") == pytest.approx([10.0, 3.0])
    write_power_log(tmp_path / "slow.csv", np.array([0.0, 11.0, 40.0]), np.ones(3))
    with pytest.raises(MeasurementError, match="--window 3"):
        energy_from_log(results, tmp_path / "slow.csv")
    write_power_log(tmp_path / "mw.csv", t, w * 1000)
    with pytest.raises(MeasurementError, match="milliwatts"):
        energy_from_log(results, tmp_path / "mw.csv")


def units(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = int(rng.integers(8, 64))
        out.append([Op("conv", int(rng.integers(1e5, 1e7)), int(rng.integers(1e3, 1e5)), 32,
                       c, c, 3, 1, 8),
                    Op("pwconv", int(rng.integers(1e5, 1e7)), int(rng.integers(1e3, 1e5)), 32,
                       c, c, 1, 1, 8),
                    Op("eltwise", 0, int(rng.integers(1e3, 1e5)))])
    return out


def cost(ops, conv_ms_per_mmac, pw_ms_per_mmac):
    return 0.02 + sum(o.macs / 1e6 * (conv_ms_per_mmac if o.kind == "conv" else
                                      pw_ms_per_mmac if o.kind == "pwconv" else 0) for o in ops)


def test_transfer_calibrates_a_rich_model_with_few_measurements():
    rich = units(80, 0)
    source = DeviceModel("a", 1.0).fit(rich, [cost(u, 1.0, 0.5) for u in rich])
    few, test = units(12, 1), units(40, 2)
    target = DeviceModel("b", 2.0).transfer(source, few, [cost(u, 3.0, 0.5) for u in few])
    pred = np.array([target.price(u).latency_ms for u in test])
    true = np.array([cost(u, 3.0, 0.5) for u in test])
    assert np.max(np.abs(pred / true - 1)) < 0.05
    assert target.price(test[0]).provenance["latency"] == "transferred"
    assert target.meta["transferred_from"]["device"] == "a"
    # without the transfer, the source's model is off by the conv cost ratio
    assert np.median(np.array([source.price(u).latency_ms for u in test]) / true) < 0.6


def test_transfer_of_a_profiled_device_keeps_its_layer_model():
    """A machine twice as fast as the host, calibrated with 12 networks: the architecture
    path keeps host's layer model and only rescales its composition."""
    from latency_models.devices import MODEL_DIR
    from latency_models.ops import arch_units

    host = DeviceModel.load(MODEL_DIR / "host.json")
    archs = [sample(s, bits=(32, 8)) for s in range(40)]
    truth = [0.5 * host.price(a).latency_ms for a in archs]
    few = archs[:12]
    target = DeviceModel("fast", 15.0).transfer(
        host, [arch_ops(a) for a in few], truth[:12],
        units=[arch_units(a, tuple(host.native_bits)) for a in few])
    assert target.layers is host.layers and not len(target.lookup)
    assert "kept" in target.meta["transferred_from"]["layer_model"]
    err = np.abs([target.price(a).latency_ms / t - 1 for a, t in
                  zip(archs[12:], truth[12:])])
    # (host's own prices use its measured layers, which are not carried over)
    assert np.median(err) < 0.03 and np.max(err) < 0.2, err
    assert target.price(archs[20]).provenance["latency"] == "transferred"
    # the linear transfer alone (no units) follows host's layer model less closely
    linear = DeviceModel("fast", 15.0).transfer(host, [arch_ops(a) for a in few], truth[:12])
    lin = np.abs([linear.price(a).latency_ms / t - 1 for a, t in
                  zip(archs[12:], truth[12:])])
    assert np.median(lin) > 2 * np.median(err), (np.median(lin), np.median(err))


def test_measured_energy_is_fitted_and_labelled():
    rich = units(60, 3)
    lat = [cost(u, 1.0, 0.5) for u in rich]
    energy = [cost(u, 4.0, 1.0) for u in rich]  # energy per op kind, not power x latency
    model = DeviceModel("tx", 6.0, energy_source="measured").fit(rich[:50], lat[:50],
                                                                 energy_mj=energy[:50])
    for u, e in zip(rich[50:], energy[50:]):
        p = model.price(u)
        assert p.energy_mj == pytest.approx(e, rel=0.02)
        assert p.provenance["energy"] == "measured"
    plain = DeviceModel("pi", 5.0).fit(rich, lat)
    p = plain.price(rich[0])
    assert p.provenance["energy"] == "modelled" and p.energy_mj == pytest.approx(
        5.0 * p.latency_ms)


def test_fit_cli_bad_input_is_one_paragraph(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("arch_json,median_ms\n")
    for args, message in ((["device=x", "power_w=1"], "exactly one source"),
                          (["device=x", "power_w=-1", f"measurements={bad}"], "positive"),
                          (["device=x", "power_w=1", f"measurements={bad}"], "is empty"),
                          (["device=x", "power_w=1", f"bundle={tmp_path}"], "manifest.json")):
        res = subprocess.run([sys.executable, "-m", "latency_models.fit", *args], cwd=tmp_path,
                             env=cli_env(), capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "conf").exists()
    assert ROOT.is_dir()


def layer(rng):
    cin, cout = (int(v) for v in rng.integers(4, 96, 2))
    size = int(rng.choice([4, 7, 14]))
    return [Op("pwconv", cin * cout * size * size, (cin + cout) * size * size, 32, cin, cout, 1,
               1, size)]


def layer_ms(ops):
    op = ops[0]  # a kernel that is twice as slow when channels are not a multiple of 8
    return 0.004 + op.macs / 2e8 * (2.0 if op.cout % 8 else 1.0)


def test_layer_model_learns_what_the_linear_model_cannot_and_composes_networks():
    rng = np.random.default_rng(0)
    layers = [layer(rng) for _ in range(400)]
    networks = [[layer(rng) for _ in range(int(rng.integers(3, 9)))] for _ in range(60)]

    def net_ms(units):
        return 1.05 * sum(layer_ms(u) for u in units) - 0.002 * len(units) + 0.01

    model = DeviceModel("dev", 1.0).fit([[op for u in n for op in u] for n in networks],
                                        [net_ms(n) for n in networks])
    model.fit_layers(layers, [layer_ms(u) for u in layers], networks,
                     [net_ms(n) for n in networks])
    assert len(model.composition.terms_) == 5 and model.layers.linear_.coef_
    fresh = [[layer(rng) for _ in range(6)] for _ in range(30)]
    pred = np.array([model.price(n).latency_ms for n in fresh])
    true = np.array([net_ms(n) for n in fresh])
    assert np.median(np.abs(pred / true - 1)) < 0.05
    # the linear op model alone cannot see the alignment step
    flat = np.array([model.price([op for u in n for op in u]).latency_ms for n in fresh])
    assert np.median(np.abs(flat / true - 1)) > np.median(np.abs(pred / true - 1))
    # layers measured alone are looked up
    seen = model.price(layers[:5])
    assert seen.provenance["measured_share"] == 1.0 and seen.provenance["latency"] == "measured"


def test_composition_prices_precision_changes_between_layers():
    # Inside a network every change between float and int8 layers costs a quantize or
    # dequantize step that no layer measured alone shows; the composition learns its price.
    rng = np.random.default_rng(2)

    def at(bits, unit):
        return [Op(o.kind, o.macs, o.elems, bits, o.cin, o.cout, o.kernel, o.stride, o.size)
                for o in unit]

    def mixed():
        return at(int(rng.choice([32, 8])), layer(rng))

    layers = [mixed() for _ in range(400)]
    networks = [[mixed() for _ in range(int(rng.integers(3, 9)))] for _ in range(80)]

    def net_ms(units):
        return sum(layer_ms(u) for u in units) + 0.006 * precision_transitions(units)

    flat = [[op for u in n for op in u] for n in networks]
    model = DeviceModel("dev", 1.0, fallback={"8": 32}).fit(flat, [net_ms(n) for n in networks])
    model.fit_layers(layers, [layer_ms(u) for u in layers], networks,
                     [net_ms(n) for n in networks])
    assert model.composition.terms_[4] == pytest.approx(0.006, rel=0.2)
    fresh = [[mixed() for _ in range(6)] for _ in range(30)]
    true = np.array([net_ms(n) for n in fresh])
    pred = np.array([model.price(n).latency_ms for n in fresh])
    model.composition.terms_[4] = 0.0  # without the term
    model.composition = model.composition  # (a fresh price cache)
    without = np.array([model.price(n).latency_ms for n in fresh])
    assert np.median(np.abs(pred / true - 1)) < 0.02 < np.median(np.abs(without / true - 1))


def test_layer_model_round_trips_through_json(tmp_path):
    rng = np.random.default_rng(1)
    layers = [layer(rng) for _ in range(100)]
    networks = [[layer(rng) for _ in range(4)] for _ in range(20)]
    ms = [sum(layer_ms(u) for u in n) for n in networks]
    model = DeviceModel("dev", 1.0).fit([[op for u in n for op in u] for n in networks], ms)
    model.fit_layers(layers, [layer_ms(u) for u in layers], networks, ms)
    model.save(tmp_path / "m.json")
    again = DeviceModel.load(tmp_path / "m.json")
    probe = [layer(rng) for _ in range(5)]
    assert again.price(probe).latency_ms == pytest.approx(
        model.price(probe).latency_ms, rel=1e-9)
    assert "pickle" not in (tmp_path / "m.json").read_text()


def test_a_chunk_measured_in_a_slow_spell_is_measured_again(tmp_path, monkeypatch):
    folder = tmp_path / "b"
    write_bundle(folder, networks=2, seed=2, fp16=0)
    real, calls, second = device_script.measure_chunk, [], {}

    def spell(bundle, chunk, anchor, args):  # chunk 2 first runs 1.6 times slower, all of it
        per_file, _ = real(bundle, chunk, anchor, args)
        ms = 0.1  # the reference file, steady but for the spell (real noise kept out)
        calls.append(chunk[0])
        if chunk[0] == slow and calls.count(slow) == 1:
            return {n: [[[t * 1.6 for t in r[0]], *r[1:]] for r in rounds]
                    for n, rounds in per_file.items()}, ms * 1.6
        if chunk[0] == slow:
            second.update({n: np.median([np.median(r[0]) for r in rounds])
                           for n, rounds in per_file.items()})
        return per_file, ms

    files = [m["file"] for m in json.loads((folder / "manifest.json").read_text())["models"]]
    slow = files[4]
    monkeypatch.setattr(device_script, "measure_chunk", spell)
    assert device_script.main(["--bundle", str(folder), "--rounds", "3", "--runs", "10",
                               "--warmup", "2", "--chunk", "4"]) == 0
    assert calls.count(slow) == 2 and all(calls.count(c) == 1 for c in calls if c != slow)
    with open(folder / "results.csv") as f:
        got = {r["file"]: float(r["median_ms"]) for r in csv.DictReader(f)}
    assert second and all(got[n] == pytest.approx(ms) for n, ms in second.items())
    info = json.loads((folder / "device.json").read_text())["reference"]
    assert info["file"] == files[0] and info["chunks_measured_again"] == 1
    assert len(info["median_ms_by_chunk"]) == -(-len(files) // 4)


def test_the_device_script_refuses_a_bundle_copied_incompletely(tmp_path, capsys):
    folder = tmp_path / "b"
    manifest = write_bundle(folder, networks=1, seed=2, fp16=0)
    files = [m["file"] for m in manifest["models"]]
    assert all(len(m["sha256"]) == 64 for m in manifest["models"])
    (folder / files[1]).write_bytes((folder / files[1]).read_bytes()[:100])  # cut short
    (folder / files[2]).unlink()
    with pytest.raises(SystemExit) as exc:
        device_script.main(["--bundle", str(folder), "--rounds", "1", "--runs", "1"])
    message = str(exc.value)
    assert f"2 of the bundle's {len(files)} model files" in message
    assert f"{files[1]} differs from its checksum" in message and f"{files[2]} missing" in message
    assert "copy the whole bundle folder" in message
    assert not (folder / "results.csv").exists() and not (folder / "results.partial.json").exists()


def test_energy_counter_on_the_device_makes_energy_measured(tmp_path, monkeypatch):
    folder = tmp_path / "b"
    write_bundle(folder, networks=3, seed=2, fp16=0)
    counter = iter(range(0, 10**9, 4000))  # +4 mJ between two reads of the counter
    monkeypatch.setattr(device_script, "read_energy_uj", lambda path: next(counter))
    assert device_script.main(["--bundle", str(folder), "--rounds", "1", "--runs", "4",
                               "--warmup", "0"]) == 0
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["energy_mj"]) == pytest.approx(1.0) for r in rows)  # 4 mJ / 4 runs
    assert read_bundle(folder)["energy_mj"] == [pytest.approx(1.0)] * len(rows)
    monkeypatch.chdir(tmp_path)
    assert fit.main(["device=rapl", f"bundle={folder}", "power_w=10"]) == 0
    model = DeviceModel.load(tmp_path / "conf" / "device" / "rapl.json")
    assert model.energy_source == "measured" and model.ops.energy_coef_
    from spaces.arch import Arch

    manifest = json.loads((folder / "manifest.json").read_text())
    arch = Arch.from_json(next(u["arch_json"] for u in manifest["models"]
                               if u["unit"] == "network"))
    assert model.price(arch).provenance["energy"] == "measured"


def test_profile_measures_a_chunk_caught_in_a_slow_spell_again(monkeypatch):
    from latency_models import profile as prof

    calls = []

    def fake(paths, **kwargs):  # the reference (paths[0]) takes 1 ms; chunk "c" first 1.7 ms
        calls.append(paths[1])
        slow = 1.7 if paths[1] == "c" and calls.count("c") == 1 else 1.0
        return [{"median_ms": slow * (1.0 if i == 0 else 2.0)} for i, _ in enumerate(paths)]

    monkeypatch.setattr(prof, "measure_many", fake)
    got = prof.measure_chunked(list("abcdef"), chunk=2)
    assert calls == ["a", "c", "e", "c"]
    assert [m["median_ms"] for m in got] == [2.0] * 6


def test_network_correction_learns_what_adding_up_layers_misses_and_only_when_it_helps(
        tmp_path):
    archs = [sample(s, bits=(32, 8)) for s in range(300)]
    rng = np.random.default_rng(0)
    composed = np.array([0.02 + a.macs() / 5e7 for a in archs])
    # A whole-network effect that layers measured alone cannot show: each hard-swish stage
    # makes the network 12% slower than its layers add up to.
    effect = np.array([1.12 ** sum(st.act == "hswish" for st in a.stages) for a in archs])
    measured = composed * effect * rng.normal(1.0, 0.01, len(archs))
    model = DeviceModel("dev", 1.0)
    cv = model.fit_network_model(archs[:200], composed[:200], measured[:200])
    rounds = model.correction.rounds_
    assert rounds > 0 and cv[str(rounds)] > cv["0"] and model.correction.stages_ == 4
    fixed = composed[200:] * model.network_factor(archs[200:], composed[200:])

    def miss(p):
        return np.median(np.abs(p / measured[200:] - 1))

    assert miss(fixed) < 0.03 < 0.1 < miss(composed[200:])
    model.save(tmp_path / "m.json")  # stored as LightGBM's text model inside the JSON
    again = DeviceModel.load(tmp_path / "m.json")
    assert again.correction.rounds_ == rounds and again.hash == model.hash
    assert np.allclose(again.network_factor(archs[200:], composed[200:]),
                       model.network_factor(archs[200:], composed[200:]))
    # noise alone: no number of rounds beats none, so nothing is stored and nothing changes
    noise = DeviceModel("dev", 1.0)
    noise.fit_network_model(archs[:200], composed[:200],
                            composed[:200] * rng.normal(1.0, 0.02, 200))
    assert not noise.correction.trees_
    assert np.all(noise.network_factor(archs[:5], composed[:5]) == 1.0)
    assert "network_model" not in noise.to_dict()  # older models keep their hashes
    # too few networks to fit it
    few = DeviceModel("dev", 1.0)
    assert few.fit_network_model(archs[:20], composed[:20], measured[:20]) == {}
    assert not few.correction.trees_


def test_the_shipped_host_model_corrects_whole_networks_alike_one_by_one_and_in_bulk():
    from latency_models.devices import MODEL_DIR

    host = DeviceModel.load(MODEL_DIR / "host.json")
    assert host.correction.rounds_ > 0
    archs = [sample(1000 + s, bits=(32, 8)) for s in range(20)]
    one = [host.price(a) for a in archs]
    bulk = [p.latency_ms for p in host.price_many(archs)]
    assert np.allclose([p.latency_ms for p in one], bulk)
    assert all(p.provenance["network_correction"] > 0 for p in one)
    assert len({p.provenance["network_correction"] for p in one}) > 1
