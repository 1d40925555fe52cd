"""The spec format as Pydantic models: the single source of truth for the schema.

Layers form a discriminated union on ``type`` built from the layer registry;
every model forbids unknown keys so typos are caught, never ignored.
"""
from typing import Annotated, Literal, Optional

from pydantic import Field, PrivateAttr, StrictInt, ValidationError, ValidationInfo, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .._strict import Strict
from ..data.spec import AugmentSpec, DataSpec
from ..errors import did_you_mean
from ..layers import LAYERS, LOSSES, layer_spec_union
from ..layers.base import Name
from ..optim_spec import OptimizerSpec, ScheduleSpec
from .blocks import BlockDef, Names
from .loader import format_path
from .tune import TuneSpec

FORMAT_VERSION = 1

LayerSpecUnion = layer_spec_union()
LossName = Literal[tuple(LOSSES)]


class InputSpec(Strict):
    shape: list[Annotated[StrictInt, Field(gt=0)]] = Field(
        min_length=1, max_length=3, description="shape of one sample: [features] or [C, H, W]")


class EarlyStopping(Strict):
    """Stop when ``metric`` has not improved for ``patience`` epochs."""
    metric: Literal["test_acc", "test_loss", "train_loss", "train_acc", "val_acc", "val_loss"] = Field(
        "test_acc", description="with a validation split: val_acc (or val_loss) unless given; the test "
        "set is then evaluated only at the end")
    patience: StrictInt = Field(3, gt=0)
    min_delta: float = Field(0.0, ge=0)


class TrainSpec(Strict):
    """How to train: data, optimizer and schedule, budget (epochs or steps), batches, evaluation."""
    data: DataSpec = Field(description="where the training and test arrays come from")
    optimizer: OptimizerSpec = Field(default_factory=lambda: {"type": "sgd"}, validate_default=True)
    schedule: Optional[ScheduleSpec] = Field(None, description="learning-rate schedule per epoch")
    epochs: Optional[StrictInt] = Field(None, gt=0, description="passes over the data (or steps / steps_per_epoch)")
    steps: Optional[StrictInt] = Field(None, gt=0, description="step budget instead of epochs")
    steps_per_epoch: Optional[StrictInt] = Field(
        None, gt=0, description="steps between evaluations; default: ceil(train size / batch size)")
    batch_size: StrictInt = Field(100, gt=0)
    sampling: Literal["shuffle", "replacement"] = Field(
        "shuffle", description="shuffled epochs, or the book's random draw with replacement per step")
    eval_samples: Optional[StrictInt] = Field(
        None, gt=0, description="evaluate accuracy on only the first N samples each epoch")
    eval_batch_size: StrictInt = Field(1000, gt=0)
    early_stopping: Optional[EarlyStopping] = None
    augment: Optional[AugmentSpec] = None
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, allow_inf_nan=False,
        description="train on targets (1 - e) * one_hot + e / classes (softmax_cross_entropy only; "
        "evaluation uses the true labels)")
    log_every: StrictInt = Field(0, ge=0, description="print the loss every N steps (0: per epoch only)")
    checkpoint_every: StrictInt = Field(1, gt=0, description="epochs between checkpoints")

    @model_validator(mode="after")
    def _budget(self):
        if self.epochs is None and self.steps is None:
            raise ValueError("give a training budget: epochs or steps")
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give epochs or steps, not both")
        return self


class NetSpec(Strict):
    """A network: input, layers in order, loss, and how to train it."""
    netspec: Literal[1] = Field(FORMAT_VERSION, description="format version")
    name: str = Field("model", pattern=r"^[A-Za-z0-9_.\-]+$", max_length=100)
    description: Optional[str] = None
    seed: StrictInt = Field(0, ge=0, description="every random stream (init, batches, dropout) derives from it")
    dtype: Literal["float32", "float64"] = "float32"
    input: InputSpec
    include: list[str] = Field(
        default_factory=list, description="files whose blocks this spec uses (paths relative to this file)")
    blocks: dict[Name, BlockDef] = Field(
        default_factory=dict, description="named, parametrised lists of layers, used like a layer: "
        "{type: <block>, name: <scope>, repeat: N, <param>: <value>}")
    layers: list[LayerSpecUnion] = Field(min_length=1)
    loss: LossName
    train: Optional[TrainSpec] = None
    tune: Optional[TuneSpec] = Field(
        None, description="what `netspec tune` searches: spec paths and their distributions (netspec run "
        "ignores it)")

    _source: Optional[str] = PrivateAttr(None)
    _positions: object = PrivateAttr(None)
    _names: list = PrivateAttr(default_factory=list)
    _inputs: list = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _graph(self, info: ValidationInfo):
        """Name every layer and check the graph: reserved and duplicate names, ``inputs``
        references, input counts, and outputs that nothing uses.

        The file and positions, when the spec came from a file, arrive in the validation
        context (``{"source": ..., "positions": ...}``) and are kept for later messages.
        """
        ctx = info.context or {}
        self._source, self._positions = ctx.get("source"), ctx.get("positions")
        self._names, self._inputs, issues = _name_and_wire(self.layers)
        if self.train is not None and self.train.label_smoothing and self.loss != "softmax_cross_entropy":
            issues.append((("train", "label_smoothing"), f"label smoothing needs loss softmax_cross_entropy, "
                           f"not {self.loss}", self.train.label_smoothing))
        if self.train is not None and self.train.early_stopping is not None:
            issues.extend(self._early_stopping_metric())
        if self.tune is not None:
            issues.extend(self._tune_needs())
        if issues:
            raise ValidationError.from_exception_data("NetSpec", [
                InitErrorDetails(type=PydanticCustomError("graph", message), loc=loc, input=value)
                for loc, message, value in issues])
        return self

    def _early_stopping_metric(self):
        """With a validation split the test set is read only at the end: early stopping watches
        the validation set (chosen here when the spec names no metric). Returns issues."""
        es, held_out = self.train.early_stopping, self.held_out
        loc = ("train", "early_stopping", "metric")
        if "metric" not in es.model_fields_set:
            if held_out:
                metric = "val_acc" if LOSSES[self.loss].classification else "val_loss"
                self.train.early_stopping = es.model_copy(update={"metric": metric})
            return []
        if held_out and es.metric.startswith("test_"):
            return [(loc, f"with a validation split the test set is evaluated only at the end; early stopping "
                     f"watches val_{es.metric[5:]} instead", es.metric)]
        if not held_out and es.metric.startswith("val_"):
            return [(loc, f"{es.metric} needs a validation split: add train.data.validation (a fraction "
                     "such as 0.1, or a count)", es.metric)]
        return []

    def _tune_needs(self):
        """A search compares validation results: it needs a validation split, and val_acc a classifier."""
        tune, classifies = self.tune, LOSSES[self.loss].classification
        if not self.held_out:
            return [(("tune",), "tuning needs a validation split, so that no trial is judged on the test "
                     "set: add train.data.validation (a fraction such as 0.2, or a count)", None)]
        if "objective" not in tune.model_fields_set and not classifies:
            tune.objective = "val_loss"
        elif tune.objective == "val_acc" and not classifies:
            return [(("tune", "objective"), f"val_acc needs a classification loss (this spec's is {self.loss}); "
                     "use val_loss", tune.objective)]
        return []

    @property
    def held_out(self):
        """Whether the spec holds out a validation split (train.data.validation)."""
        return self.train is not None and getattr(self.train.data, "validation", None) is not None

    @property
    def source(self):
        return self._source

    @property
    def layer_names(self):
        """Name of every layer, given or generated, in order."""
        return list(self._names)

    @property
    def layer_inputs(self):
        """For every layer, the names of the layers feeding it ('input': the network input)."""
        return [list(i) for i in self._inputs]

    def locate(self, path, prefer_key=False):
        """(file, line, column) where a key path was written: a block's file for an expanded layer."""
        if self._positions is None:
            return (self._source, None, None)
        return self._positions.locate(path, self._source, prefer_key)

    def label(self, path):
        """How messages name a key path (an expanded layer by its scoped name)."""
        if self._positions is None:
            return format_path(path)
        return self._positions.label(path)

    def uses(self, i):
        """"block 'x' used at file:line, ..." for layer i when it came from a block, else ''."""
        return self._positions.uses.get(("layers", i), "") if self._positions is not None else ""


def spec_to_dict(spec):
    """The resolved spec (every default filled in, generated names included) as plain data.

    The tune section is left out: a run trains the network, and a tuning trial's values are in
    its layers and train section already.
    """
    d = spec.model_dump(mode="json")
    for layer, name in zip(d["layers"], spec.layer_names):
        layer["name"] = name
    for key in ("include", "blocks"):  # already expanded into the layers
        if not d.get(key):
            d.pop(key, None)
    d.pop("tune", None)
    return d


# graph problems listed in full; past this many they are only counted (a spec of 10,000 bad
# references took minutes of "did you mean" look-ups before this limit)
MAX_GRAPH_ISSUES = 50


def _name_and_wire(layers):
    """(names, inputs per layer, issues); each issue is (loc, message, offending value)."""
    issues, names, inputs, seen = [], [], [], {}
    explicit = {l.name for l in layers if l.name}
    generated = Names(explicit)
    more = 0

    def problem(loc, message, value):
        nonlocal more
        if len(issues) < MAX_GRAPH_ISSUES:
            issues.append((loc, message() if callable(message) else message, value))
        else:
            more += 1

    for i, layer in enumerate(layers):
        if layer.name:
            name = layer.name
            if name == "input":
                problem(("layers", i, "name"), "'input' is reserved for the network input", name)
            elif name in seen:
                problem(("layers", i, "name"), f"duplicate layer name '{name}' (also layers[{seen[name]}])", name)
        else:
            name = generated.new(LAYERS[layer.type].prefix)
        seen.setdefault(name, i)
        if layer.inputs:
            n_in = LAYERS[layer.type].n_inputs
            if n_in is not None and len(layer.inputs) != n_in:
                problem(("layers", i, "inputs"),
                        f"layer type '{layer.type}' takes {n_in} input, got {len(layer.inputs)}", layer.inputs)
            for j, ref in enumerate(layer.inputs):
                if ref != "input" and ref not in seen:
                    later = " (it comes later: layers run in file order)" if ref in explicit else ""
                    problem(("layers", i, "inputs", j), lambda ref=ref, later=later:
                            f"unknown input '{ref}'{later}{did_you_mean(ref, names + ['input'])}", ref)
        inputs.append(list(layer.inputs or [names[-1] if names else "input"]))
        names.append(name)
    if more:
        issues.append((("layers",), f"and {more} more problems with names and inputs (only the first "
                       f"{MAX_GRAPH_ISSUES} are listed)", None))
    if not issues:
        used = {n for ins in inputs for n in ins}
        for i, name in enumerate(names[:-1]):
            if name not in used:
                issues.append((("layers", i), f"the output of layer '{name}' is never used (no later layer "
                               "takes it as input); every layer but the last must feed another", name))
                break
    return names, inputs, issues
