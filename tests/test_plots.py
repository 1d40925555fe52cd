"""Run-directory pictures: written with matplotlib, skipped without it, never required."""
import builtins
import os

from extras import need

import netspec
from netspec.cli import main
from netspec.specs_dir import resolve_spec_path


def tiny_conv():
    return {"name": "tiny", "seed": 1, "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "conv2d", "filters": 3, "kernel": 4, "stride": 4}, {"type": "relu"},
                       {"type": "dense", "units": 10}],
            "loss": "softmax_cross_entropy",
            "train": {"data": {"source": "mnist-5k", "limit_train": 200, "limit_test": 100},
                      "optimizer": {"type": "adam"}, "epochs": 2, "batch_size": 50}}


def test_pictures_are_written_with_matplotlib(tmp_path):
    need("matplotlib")
    netspec.train(tiny_conv(), out=tmp_path)
    for name in ("curves.png", "misclassified.png", "filters.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 200, name


def test_training_works_without_matplotlib(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    h = netspec.train(tiny_conv(), out=tmp_path)
    assert h.test_acc is not None
    assert sorted(os.listdir(tmp_path)) == [".lock", "metrics.jsonl", "model.npz", "result.json", "spec.resolved.json"]


def test_shipped_specs_resolve_by_name(tmp_path, capsys):
    path = resolve_spec_path("simple_convnet")
    assert path.endswith("simple_convnet.yaml") and os.path.exists(path)
    assert resolve_spec_path(None) == path  # the default spec of `netspec run`
    assert main(["summary", "deep_convnet", "--json"]) == 0
    assert '"total_params": 123552' in capsys.readouterr().out
    assert main(["run", "no_such_spec"]) == 2
    assert "spec file not found: no_such_spec" in capsys.readouterr().err
