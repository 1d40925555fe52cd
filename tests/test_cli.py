"""The command line: user errors print one message and exit 2, never a traceback."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import netspec
from netspec import cli
from netspec.layers.dense import Dense

REPO = Path(__file__).resolve().parent.parent
SPECS_DIR = REPO / "specs"

TYPO = ("input: {shape: [1, 8, 8]}\nlayers:\n  - type: conv2d\n    filtres: 30\n    kernel: 3\n"
        "  - {type: dense, units: 2}\nloss: mse\n")
SHAPE = ("input: {shape: [1, 5, 5]}\nlayers:\n  - {type: conv2d, name: big, filters: 2, kernel: 7}\n"
         "  - {type: dense, units: 2}\nloss: mse\n")
BROKEN = "input: {shape: [4]\nlayers: []\n"


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_validate_good_specs(capsys):
    paths = sorted(SPECS_DIR.glob("*.yaml"))
    rc, out, err = run(capsys, "validate", *paths)
    assert (rc, err) == (0, "")
    assert out.splitlines() == [f"{p}: ok" for p in paths]


def test_validate_typo(capsys, write_spec):
    path = write_spec(TYPO)
    assert run(capsys, "validate", path) == (
        2, "", f"error: {path}:4:5: layers[0].filtres: unknown key 'filtres'; did you mean 'filters'?\n")


def test_validate_shape_error(capsys, write_spec):
    path = write_spec(SHAPE)
    assert run(capsys, "validate", path) == (
        2, "", f"error: {path}:3:5: layers[0]: layer 'big' (conv2d) receives [1, 5, 5] from 'input': "
               "kernel 7x7 is larger than the padded input 5x5 (output height = (5 + 2*0 - 7) / 1 + 1 = -1 < 1)\n")


def test_validate_broken_yaml(capsys, write_spec):
    path = write_spec(BROKEN)
    assert run(capsys, "validate", path) == (
        2, "", f"error: {path}:2:1: invalid YAML: while parsing a flow mapping expected ',' or '}}', "
               "but got '<scalar>'\n")


def test_validate_missing_file(capsys, tmp_path):
    path = tmp_path / "missing.yaml"
    assert run(capsys, "validate", path) == (2, "", f"error: {path}: spec file not found: {path}\n")


def test_several_errors_print_one_per_line(capsys, write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense, units: 0}\n  - {type: relu, foo: 1}\nloss: mse\n")
    rc, out, err = run(capsys, "validate", path)
    assert (rc, out) == (2, "")
    assert err.splitlines() == ["error:", f"{path}:3:26: layers[0].units: must be > 0 (got 0)",
                                f"{path}:4:18: layers[1].foo: unknown key 'foo'"]


@pytest.mark.parametrize("case", ["typo", "shape", "broken", "missing"])
def test_real_process_exits_2_without_traceback(tmp_path, case):
    path = tmp_path / f"{case}.yaml"
    text = {"typo": TYPO, "shape": SHAPE, "broken": BROKEN, "missing": None}[case]
    if text is not None:
        path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "netspec", "validate", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path}")
    assert len(proc.stderr.splitlines()) == 1


def test_summary_json(capsys):
    rc, out, err = run(capsys, "summary", SPECS_DIR / "simple_convnet.yaml", "--json")
    assert (rc, err) == (0, "")
    s = json.loads(out)
    assert s["total_params"] == 433890
    assert [(r["name"], r["type"], r["output_shape"], r["params"]) for r in s["layers"]] == [
        ("conv1", "conv2d", [30, 24, 24], 780), ("relu1", "relu", [30, 24, 24], 0),
        ("pool1", "maxpool2d", [30, 12, 12], 0), ("affine1", "dense", [100], 432100),
        ("relu2", "relu", [100], 0), ("affine2", "dense", [10], 1010)]
    assert s["dtype"] == "float32"


def test_summary_table(capsys):
    rc, out, err = run(capsys, "summary", SPECS_DIR / "simple_net.yaml")
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "simple_net  (loss: softmax_cross_entropy, dtype: float64, FLOPs per sample, forward)",
        "layer  type   output shape  params  FLOPs",
        "-----------------------------------------",
        "input         2",
        "W      dense  3                  6     12",
        "-----------------------------------------",
        "total                            6     12",
    ]


def test_summary_of_a_bad_spec_exits_2(capsys, write_spec):
    rc, out, err = run(capsys, "summary", write_spec(SHAPE), "--json")
    assert (rc, out) == (2, "")
    assert err.startswith("error: ") and "kernel 7x7 is larger than the padded input 5x5" in err


def test_gradcheck_passes(capsys):
    rc, out, err = run(capsys, "gradcheck", SPECS_DIR / "two_layer_net.yaml", "--max-elements", "5", "--json")
    assert (rc, err) == (0, "")
    report = json.loads(out)
    assert report["ok"] is True
    assert set(report["params"]) == {"affine1.W", "affine1.b", "affine2.W", "affine2.b"}
    assert {k: r["checked"] for k, r in report["params"].items()} == {
        "affine1.W": 5, "affine1.b": 5, "affine2.W": 5, "affine2.b": 5}
    assert all(r["error"] <= 1e-5 for r in report["params"].values())


def test_gradcheck_text_output(capsys):
    rc, out, err = run(capsys, "gradcheck", SPECS_DIR / "simple_net.yaml")
    lines = out.splitlines()
    assert rc == 0
    assert lines[0] == (f"gradient check of {SPECS_DIR / 'simple_net.yaml'}: float64, central differences "
                        "h=1e-05, batch 2, up to 40 sampled elements per array")
    assert lines[1].split()[:2] == ["W.W", "6/6"] and lines[1].endswith("ok")
    assert lines[2].startswith("PASS: worst ")


def test_gradcheck_fails_on_a_broken_backward(capsys, monkeypatch):
    original = Dense.backward

    def backward(self, dout, need_dx=True):
        dx = original(self, dout, need_dx)
        self.grads["W"] = 2 * self.grads["W"]
        return dx

    monkeypatch.setattr(Dense, "backward", backward)
    rc, out, err = run(capsys, "gradcheck", SPECS_DIR / "simple_net.yaml")
    assert rc == 1
    assert out.splitlines()[1].endswith("FAIL")
    assert out.splitlines()[-1].startswith("FAIL: worst 5.00e-01")


def test_info_names_the_backend(capsys, monkeypatch):
    for heavy in ("torch", "sklearn", "matplotlib"):   # keep the test fast: report them as absent
        monkeypatch.setitem(sys.modules, heavy, None)
    rc, out, err = run(capsys, "info", "--json")
    assert (rc, err) == (0, "")
    info = json.loads(out)
    assert info["backend"] == netspec.BACKEND
    assert info["netspec"] == netspec.__version__
    assert info["torch"] is None
    rc, out, err = run(capsys, "info")
    assert f"backend: {netspec.BACKEND}" in out


def test_schema_is_json_with_schema_key(capsys):
    rc, out, err = run(capsys, "schema")
    assert (rc, err) == (0, "")
    schema = json.loads(out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema == netspec.spec.json_schema()
    assert {"input", "layers", "loss"} <= set(schema["required"])


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
