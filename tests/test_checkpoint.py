"""Checkpoints: round trip, atomic writes, and refusal of corrupt, truncated or pickled files."""
import json
import os

import numpy as np
import pytest

import netspec
from netspec.checkpoint import read_checkpoint, save_checkpoint
from netspec.errors import CheckpointError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "run"
    spec = {"name": "ck", "input": {"shape": [1, 8, 8]},
            "layers": [{"type": "conv2d", "filters": 2, "kernel": 3}, {"type": "batchnorm"}, {"type": "relu"},
                       {"type": "dense", "units": 3}],
            "loss": "softmax_cross_entropy",
            "train": {"data": {"source": "inline", "x": np.random.default_rng(0).random((6, 1, 8, 8)).tolist(),
                               "t": [0, 1, 2, 0, 1, 2]},
                      "optimizer": {"type": "momentum"}, "epochs": 2, "batch_size": 3}}
    h = netspec.train(spec, out=out)
    return out / "model.npz", h.model


def test_round_trip(ckpt):
    path, model = ckpt
    loaded = netspec.load(path)
    for k, v in {**model.params, **model.buffers}.items():
        assert np.array_equal(v, {**loaded.params, **loaded.buffers}[k]), k
    meta, arrays = read_checkpoint(path)
    assert meta["netspec_version"] == netspec.__version__ and meta["spec"]["name"] == "ck"
    assert {"optim/v/conv1.W", "optim/t", "buffer/bn1.running_mean", "sampler/perm"} <= set(arrays)
    x = np.random.default_rng(1).random((2, 1, 8, 8))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    half = netspec.load(path, dtype="float16")
    W = half.params["conv1.W"]   # float16 values, kept in float32 for the float32 kernels
    assert half.dtype == np.float16 and np.array_equal(W, model.params["conv1.W"].astype(np.float16))
    assert half.predict(x).dtype == np.float16


def test_truncated_file_is_refused(ckpt, tmp_path):
    data = open(ckpt[0], "rb").read()
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated checkpoint"):
        netspec.load(bad)


def test_garbage_file_is_refused(tmp_path):
    bad = tmp_path / "g.npz"
    bad.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(CheckpointError, match="g.npz"):
        netspec.load(bad)


def test_flipped_bytes_are_refused(ckpt, tmp_path):
    data = bytearray(open(ckpt[0], "rb").read())
    for i in range(200, len(data) - 200, 97):
        data[i] ^= 0xFF
    bad = tmp_path / "flip.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        netspec.load(bad)


def test_pickled_object_inside_npz_is_refused(tmp_path):
    bad = tmp_path / "pickle.npz"
    np.savez(bad, meta=np.array(json.dumps({"format": "netspec-checkpoint"})),
             **{"param/x": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        netspec.load(bad)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a netspec checkpoint"):
        netspec.load(p)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        netspec.load(tmp_path / "missing.npz")


def test_wrong_shapes_are_refused(ckpt, tmp_path):
    meta, arrays = read_checkpoint(ckpt[0])
    arrays["param/dense1.W"] = np.zeros((2, 2), np.float32)
    p = tmp_path / "shape.npz"
    np.savez(p, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(CheckpointError, match=r"dense1.W is shaped \[2, 2\]"):
        netspec.load(p)


def test_nan_parameters_are_refused(ckpt, tmp_path):
    meta, arrays = read_checkpoint(ckpt[0])
    arrays["param/conv1.W"] = np.full_like(arrays["param/conv1.W"], np.nan)
    p = tmp_path / "nan.npz"
    np.savez(p, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(CheckpointError, match="NaN"):
        netspec.load(p)


def test_write_is_atomic(ckpt, tmp_path, monkeypatch):
    path, model = ckpt
    target = tmp_path / "model.npz"
    save_checkpoint(target, model)
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, model)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


def test_checkpoint_cli_errors_exit_2(tmp_path, capsys):
    from netspec.cli import main
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"junk")
    assert main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "x.npz" in err and "Traceback" not in err


def test_graph_export_description_rebuilds_the_same_outputs(ckpt):
    """model.graph() plus the named arrays is enough to recompute the model outside netspec's Model."""
    _, model = ckpt
    g = model.graph()
    assert [n["op"] for n in g["nodes"]] == ["conv2d", "batchnorm", "relu", "dense"]
    assert g["nodes"][0]["attrs"] == {"filters": 2, "kernel": [3, 3], "stride": 1, "pad": 0, "bias": True}
    assert g["nodes"][1]["buffers"] == {"running_mean": "bn1.running_mean", "running_var": "bn1.running_var"}
    arrays = {**model.params, **model.buffers}
    x = np.random.default_rng(5).random((2, 1, 8, 8))
    # an independent interpreter of the graph, written with plain numpy loops
    vals = {"input": x}
    for n in g["nodes"]:
        a, v = n["attrs"], vals[n["inputs"][0]]
        if n["op"] == "conv2d":
            W, b = arrays[n["params"]["W"]], arrays[n["params"]["b"]]
            F, _, kh, kw = W.shape
            OH, OW = n["output_shape"][1:]
            out = np.zeros((len(v), F, OH, OW))
            for i in range(OH):
                for j in range(OW):
                    out[:, :, i, j] = np.tensordot(v[:, :, i:i + kh, j:j + kw], W, axes=([1, 2, 3], [1, 2, 3]))
            vals[n["name"]] = out + b[None, :, None, None]
        elif n["op"] == "batchnorm":
            m_, var = arrays[n["buffers"]["running_mean"]], arrays[n["buffers"]["running_var"]]
            gam, bet = arrays[n["params"]["gamma"]], arrays[n["params"]["beta"]]
            r = lambda z: z[None, :, None, None]
            vals[n["name"]] = r(gam) * (v - r(m_)) / np.sqrt(r(var) + a["eps"]) + r(bet)
        elif n["op"] == "relu":
            vals[n["name"]] = np.maximum(v, 0)
        elif n["op"] == "dense":
            vals[n["name"]] = v.reshape(len(v), -1) @ arrays[n["params"]["W"]] + arrays[n["params"]["b"]]
    np.testing.assert_allclose(vals[g["output"]], model.predict(x), rtol=1e-5, atol=1e-6)
