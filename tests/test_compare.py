"""netspec compare: a table of final numbers and overlaid curves from any run directories (tune trials
included); a directory that is not a run, or a broken metrics file, is one error line."""
import json

from extras import need

from netspec import cli
from netspec.compare import params_of, read_run
from netspec.runner import trainer_for


def tiny(validation=None, optimizer="sgd", epochs=2):
    data = {"source": "mnist-5k", "flatten": True, "limit_train": 100, "limit_test": 50}
    if validation is not None:
        data["validation"] = validation
    return {"name": "tiny", "input": {"shape": [784]},
            "layers": [{"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dense", "units": 10}],
            "loss": "softmax_cross_entropy",
            "train": {"data": data, "optimizer": {"type": optimizer}, "epochs": epochs, "batch_size": 50}}


def train(out, **kw):
    trainer_for(tiny(**kw), out=out, quiet=True).run()
    return out


def test_table_json_and_figure(tmp_path, capsys):
    a = train(tmp_path / "a" / "trials" / "0000", validation=0.2, optimizer="adam")
    b = train(tmp_path / "b" / "trials" / "0000", optimizer="momentum", epochs=3)
    assert cli.main(["compare", str(a), str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    # tune trials all end in trials/NNNN: labels take as much of the path as tells them apart
    assert [r["run"] for r in rows] == ["a/trials/0000", "b/trials/0000"]
    assert [r["differs"] for r in rows] == [  # what tells the curves apart, in the figure's legend
        {"train.data.validation": 0.2, "train.optimizer.type": "adam", "train.optimizer.lr": 0.001},
        {"train.data.validation": None, "train.optimizer.type": "momentum", "train.optimizer.lr": 0.01}]
    result_a = json.loads((a / "result.json").read_text())
    last_b = json.loads((b / "metrics.jsonl").read_text().splitlines()[-1])
    assert (rows[0]["optimizer"], rows[0]["epochs"], rows[0]["val_acc"], rows[0]["test_acc"]) == \
        ("adam", 2, result_a["val_acc"], result_a["test_acc"])
    assert rows[0]["epoch_test_acc"] is None  # with a validation split the test set is read at the end only
    assert (rows[1]["optimizer"], rows[1]["epochs"], rows[1]["val_acc"], rows[1]["epoch_test_acc"]) == \
        ("momentum", 3, None, last_b["test_acc"])
    assert rows[0]["params"] == rows[1]["params"] == 784 * 8 + 8 + 8 * 10 + 10
    assert params_of(read_run(a).spec) == rows[0]["params"]  # from the shapes, for runs without result.json

    assert cli.main(["compare", str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "optimizer", "lr", "epochs", "train", "loss", "val", "acc", "test", "acc",
                                "(epoch)", "test", "acc", "seconds", "params"]
    assert lines[2].split()[:4] == ["a/trials/0000", "adam", "0.001", "2"]
    assert lines[3].split()[5] == "-" and lines[3].split()[-1] == "6,370"

    need("matplotlib")
    fig = tmp_path / "cmp.png"
    assert cli.main(["compare", str(a), str(b), "-o", str(fig)]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {fig}\n")
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_what_is_not_a_run_is_one_line(tmp_path, capsys):
    run = train(tmp_path / "run")
    assert cli.main(["compare", str(run), str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nothing'}: not a run directory (no such directory)\n"
    (tmp_path / "empty").mkdir()
    assert cli.main(["compare", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'empty'}: not a run directory (no metrics.jsonl)\n"
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")
    assert cli.main(["compare", str(run)]) == 2
    assert capsys.readouterr().err == f"error: {run / 'metrics.jsonl'} line 3: expected a JSON object, found list\n"
