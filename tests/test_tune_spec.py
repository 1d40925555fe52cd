"""The tune section of a spec (no Optuna needed): every mistake is one positioned spec error with a
did-you-mean, and a trial's spec is the spec as written with the values set (block arguments before
expansion, so every copy changes; a new optimizer type with its own defaults)."""
import subprocess
import sys
import textwrap

import pytest

from netspec import cli
from netspec.errors import SpecError
from netspec.spec import load_spec, searchable, spec_to_dict

SPEC = """\
netspec: 1
name: tiny
input: {shape: [784]}
layers:
  - {type: dense, name: hidden, units: 20}
  - {type: relu}
  - {type: dense, units: 10}
loss: softmax_cross_entropy
train:
  data: {source: mnist-5k, flatten: true, limit_train: 300, validation: 0.2}
  optimizer: {type: sgd, lr: 0.1}
  epochs: 2
tune:
  trials: 4
  space:
"""

BLOCKS = """\
netspec: 1
name: blocky
input: {shape: [1, 8, 8]}
blocks:
  unit:
    params: {filters: int, act: {type: str, default: relu}}
    layers:
      - {type: conv2d, name: conv, filters: $filters, kernel: 3, pad: 1}
      - {type: $act, name: act}
layers:
  - {type: unit, name: stage, repeat: 2, filters: 4}
  - {type: dense, name: head, units: 3}
loss: softmax_cross_entropy
train:
  data: {source: inline, x: [[[[0.0]]]], t: [0], x_test: [[[[0.0]]]], t_test: [0], validation: 1}
  epochs: 1
tune:
  space:
"""


def spec_with(write_spec, base, *space_lines):
    return write_spec(base + "".join(f"    {line}\n" for line in space_lines))


def errors_of(path):
    with pytest.raises(SpecError) as err:
        load_spec(path)
    return str(err.value).splitlines()


def test_a_good_space_validates(write_spec, capsys):
    path = spec_with(write_spec, SPEC, "train.optimizer.lr: {log_uniform: [1.0e-3, 1.0]}",
                     "train.optimizer.weight_decay: {log_uniform: [1.0e-8, 1.0e-4]}",
                     "layers.hidden.units: {choice: [10, 20]}", "layers.relu1.type: {choice: [relu, sigmoid]}",
                     "train.epochs: {int: [1, 3]}")
    assert cli.main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"
    spec = load_spec(path)
    assert spec.tune.objective == "val_acc" and spec.tune.trials == 4
    assert "tune" not in spec_to_dict(spec)  # a run's resolved spec is the network, not the search


def test_paths_that_name_nothing(write_spec):
    path = spec_with(write_spec, SPEC, "train.optimizer.lrr: {log_uniform: [1.0e-3, 1.0]}",
                     "trian.epochs: {int: [1, 3]}", "layers.hiden.units: {choice: [10, 20]}",
                     "layers.hidden.unit: {choice: [10, 20]}", "train.optimizer.momentum: {uniform: [0.5, 0.9]}",
                     "train.schedule.warmup_epochs: {int: [1, 2]}", "layers.hidden: {choice: [1, 2]}")
    assert errors_of(path) == [
        f"{path}:16:5: tune.space.train.optimizer.lrr: train.optimizer has no key 'lrr'; did you mean 'lr'?",
        f"{path}:17:5: tune.space.trian.epochs: the spec has no key 'trian'; did you mean 'train'?",
        f"{path}:18:5: tune.space.layers.hiden.units: no layer or block use named 'hiden'; did you mean 'hidden'?",
        f"{path}:19:5: tune.space.layers.hidden.unit: layer 'hidden' (dense) has no key 'unit'; did you mean "
        "'units'?",
        f"{path}:20:5: tune.space.train.optimizer.momentum: train.optimizer has no key 'momentum' (its keys: "
        "weight_decay, decay_bias_and_norm, type, lr)",
        f"{path}:21:5: tune.space.train.schedule.warmup_epochs: train.schedule is not set in this spec; there is "
        "no 'warmup_epochs' in it (write it in the spec to tune inside it)",
        f"{path}:22:5: tune.space.layers.hidden: name a key of 'hidden': layers.hidden.<key>",
    ]


def at(path, line, token):
    """'file:line:col' of the first ``token`` on ``line`` of the file: where an error must point."""
    return f"{path}:{line}:{path.read_text().splitlines()[line - 1].index(token) + 1}"


def test_ranges_and_values_that_cannot_be(write_spec):
    path = spec_with(write_spec, SPEC, "train.optimizer.lr: {log_uniform: [0, 1.0e-2]}",
                     "train.optimizer.weight_decay: {uniform: [1.0e-4, 1.0e-8]}",
                     "layers.hidden.units: {int: [5, 5]}", "train.epochs: {choise: [1, 2]}",
                     "train.batch_size: {int: [1, 3], choice: [4]}")
    assert errors_of(path) == [
        f"{at(path, 16, '[')}: tune.space.train.optimizer.lr.log_uniform: a log range must stay above zero: the low "
        "end is 0; use uniform for a range that reaches zero",
        f"{at(path, 17, '[')}: tune.space.train.optimizer.weight_decay.uniform: empty range: the low end 0.0001 "
        "must be below the high end 1e-08",
        f"{at(path, 18, '[')}: tune.space.layers.hidden.units.int: empty range: the low end 5 must be below the "
        "high end 5",
        f"{at(path, 19, 'choise')}: tune.space.train.epochs.choise: unknown key 'choise'; did you mean 'choice'?",
        f"{at(path, 20, '{')}: tune.space.train.batch_size: give exactly one distribution: log_uniform, uniform, "
        "int, choice (found int and choice)",
    ]


def test_every_end_of_a_range_and_every_choice_must_give_a_valid_spec(write_spec):
    path = spec_with(write_spec, SPEC, "layers.hidden.units: {uniform: [10, 20]}", "train.epochs: {int: [0, 2]}",
                     "layers.relu1.type: {choice: [relu, sigmoidd]}")
    lines = errors_of(path)
    assert lines[0] == (f"{path}:16:5: tune.space.layers.hidden.units: the low end, 10.0, does not give a valid "
                        "spec: layers[0].units: expected an integer, got 10.0")
    assert lines[1] == (f"{path}:17:5: tune.space.train.epochs: the low end, 0, does not give a valid spec: "
                        "train.epochs: must be > 0 (got 0)")
    assert lines[2].startswith(f"{path}:18:5: tune.space.layers.relu1.type: a choice, 'sigmoidd', does not give a "
                               "valid spec: layers[1]: unknown layer type 'sigmoidd'; did you mean 'sigmoid'?")


def test_tuning_needs_a_validation_split_and_a_fitting_objective(write_spec, capsys):
    path = write_spec(SPEC.replace(", validation: 0.2", "") + "    train.optimizer.lr: {uniform: [0.1, 1]}\n")
    assert cli.main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}:14:3: tune: tuning needs a validation split, so that no trial is judged on the test set: "
        "add train.data.validation (a fraction such as 0.2, or a count)\n")
    regression = SPEC.replace("softmax_cross_entropy", "mse").replace("  trials: 4\n", "  objective: val_acc\n")
    path = write_spec(regression + "    train.optimizer.lr: {uniform: [0.1, 1]}\n")
    assert errors_of(path) == [f"{path}:14:14: tune.objective: val_acc needs a classification loss (this spec's "
                               "is mse); use val_loss"]
    path = write_spec(SPEC.replace("softmax_cross_entropy", "mse") + "    train.optimizer.lr: {uniform: [0.1, 1]}\n")
    assert load_spec(path).tune.objective == "val_loss"  # the default for a regression


def test_a_grid_takes_choices_and_integers_and_its_size_is_the_default_budget(write_spec):
    grid = SPEC.replace("  trials: 4\n", "  sampler: grid\n")
    spec = load_spec(spec_with(write_spec, grid, "layers.hidden.units: {choice: [10, 20, 30]}",
                               "train.epochs: {int: [1, 2]}"))
    assert spec.tune.trials == 6
    path = spec_with(write_spec, grid.replace("sampler: grid", "sampler: grid\n  trials: 7"),
                     "layers.hidden.units: {choice: [10, 20, 30]}", "train.epochs: {int: [1, 2]}")
    assert errors_of(path) == [f"{path}:14:3: tune: trials 7 is more than the grid's 6 combinations"]
    path = spec_with(write_spec, grid, "train.optimizer.lr: {uniform: [0.1, 1]}")
    assert errors_of(path) == [f"{path}:14:3: tune: the grid sampler takes choice and int distributions only; "
                               "train.optimizer.lr is uniform"]


def test_trial_specs_set_values_where_the_spec_writes_them(write_spec):
    path = spec_with(write_spec, SPEC, "train.optimizer.type: {choice: [sgd, adam]}",
                     "train.optimizer.weight_decay: {log_uniform: [1.0e-8, 1.0e-4]}",
                     "layers.relu1.type: {choice: [relu, tanh]}")
    search = searchable(path)
    spec = search.spec_for({"train.optimizer.type": "adam", "train.optimizer.weight_decay": 1e-5,
                            "layers.relu1.type": "tanh"})
    opt = spec.train.optimizer
    # the file writes lr 0.1: kept; adam's own defaults fill the rest
    assert (opt.type, opt.lr, opt.beta1, opt.weight_decay) == ("adam", 0.1, 0.9, 1e-5)
    assert [l.type for l in spec.layers] == ["dense", "tanh", "dense"]
    assert spec.layer_names == ["hidden", "relu1", "dense1"] and spec.tune is None
    assert search.baseline() == (None, "the spec's own train.optimizer.weight_decay (0.0) lies outside its "
                                       "log_uniform [1e-08, 0.0001]")


def test_block_arguments_and_scoped_layers(write_spec):
    path = spec_with(write_spec, BLOCKS, "layers.stage.filters: {choice: [2, 4, 8]}",
                     "layers.stage.repeat: {int: [1, 3]}", "layers.stage2.conv.kernel: {choice: [1, 3]}")
    search = searchable(path)
    spec = search.spec_for({"layers.stage.filters": 8, "layers.stage.repeat": 3, "layers.stage2.conv.kernel": 1})
    assert spec.layer_names == ["stage1.conv", "stage1.act", "stage2.conv", "stage2.act", "stage3.conv",
                                "stage3.act", "head"]
    assert [(l.filters, l.kernel) for l in spec.layers if l.type == "conv2d"] == [(8, (3, 3)), (8, (1, 1)), (8, (3, 3))]
    assert search.baseline() == ({"layers.stage.filters": 4, "layers.stage.repeat": 2,
                                  "layers.stage2.conv.kernel": 3}, None)
    path = spec_with(write_spec, BLOCKS, "layers.stage.filter: {choice: [2, 4]}", "layers.stage.act: {choice: [relu]}")
    assert errors_of(path) == [
        f"{path}:19:5: tune.space.layers.stage.filter: 'stage' uses block 'unit': tune one of its parameters or "
        "repeat (act, filters, repeat), not 'filter'; did you mean 'filters'?"]


def test_tune_without_optuna_says_so_in_one_line(write_spec):
    path = spec_with(write_spec, SPEC, "train.optimizer.lr: {log_uniform: [1.0e-3, 1.0]}")
    probe = textwrap.dedent("""
        import sys
        sys.modules["optuna"] = None  # as if it were not installed
        from netspec.cli import main
        sys.exit(main(["tune", sys.argv[1]]))
    """)
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("error: netspec tune needs Optuna, which is not installed: pip install 'netspec[tune]' "
                           "(optuna, sqlalchemy, and psycopg for PostgreSQL)\n")
