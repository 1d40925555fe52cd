"""The spec format as Pydantic models: the single source of truth for the schema.

Layers form a discriminated union on ``type`` built from the layer registry;
every model forbids unknown keys so typos are caught, never ignored.
"""
from typing import Annotated, Literal, Optional

from pydantic import Field, StrictInt, PrivateAttr, model_validator

from ..layers import LOSSES, layer_spec_union
from .._strict import Strict
from ..optim import OptimizerSpec, ScheduleSpec

FORMAT_VERSION = 1

LayerSpecUnion = layer_spec_union()
LossName = Literal[tuple(LOSSES)]


class InputSpec(Strict):
    shape: list[Annotated[StrictInt, Field(gt=0)]] = Field(
        min_length=1, max_length=3, description="shape of one sample: [features] or [C, H, W]")


class EarlyStopping(Strict):
    """Stop when ``metric`` has not improved for ``patience`` epochs."""
    metric: Literal["test_acc", "test_loss", "train_loss", "train_acc"] = "test_acc"
    patience: StrictInt = Field(3, gt=0)
    min_delta: float = Field(0.0, ge=0)


def _train_spec():
    # Imported here so the data package can grow without touching this module.
    from ..data import AugmentSpec, DataSpec

    class TrainSpec(Strict):
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
        log_every: StrictInt = Field(0, ge=0, description="print the loss every N steps (0: per epoch only)")
        checkpoint_every: StrictInt = Field(1, gt=0, description="epochs between checkpoints")

        @model_validator(mode="after")
        def _budget(self):
            if self.epochs is None and self.steps is None:
                raise ValueError("give a training budget: epochs or steps")
            if self.epochs is not None and self.steps is not None:
                raise ValueError("give epochs or steps, not both")
            return self

    return TrainSpec


TrainSpec = _train_spec()


class NetSpec(Strict):
    """A network: input, layers in order, loss, and how to train it."""
    netspec: Literal[1] = Field(FORMAT_VERSION, description="format version")
    name: str = Field("model", pattern=r"^[A-Za-z0-9_.\-]+$", max_length=100)
    description: Optional[str] = None
    seed: StrictInt = Field(0, ge=0, description="every random stream (init, batches, dropout) derives from it")
    dtype: Literal["float32", "float64"] = "float32"
    input: InputSpec
    layers: list[LayerSpecUnion] = Field(min_length=1)
    loss: LossName
    train: Optional[TrainSpec] = None

    _source: Optional[str] = PrivateAttr(None)
    _positions: object = PrivateAttr(None)
    _names: list = PrivateAttr(default_factory=list)

    @property
    def source(self):
        return self._source

    @property
    def layer_names(self):
        """Name of every layer, given or generated, in order."""
        return list(self._names)

    def position(self, path, prefer_key=False):
        """(line, column) of a key path in the file this spec came from, or (None, None)."""
        if self._positions is None:
            return (None, None)
        return self._positions.lookup(path, prefer_key)
