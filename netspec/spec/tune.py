"""The ``tune:`` section of a spec: what ``netspec tune`` searches, as Pydantic models.

A search space maps spec paths to distributions, one key each::

    tune:
      objective: val_acc            # maximised; val_loss is minimised
      trials: 20
      space:
        train.optimizer.lr: {log_uniform: [1.0e-6, 1.0e-2]}
        layers.dense1.units: {choice: [50, 100, 200]}

Ranges are checked here (empty, or a log range reaching zero); whether each path
names something in the spec, and whether every value of its range makes a valid
spec, is checked once the spec is known (netspec.spec.space).
"""
import math
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from .._strict import Strict

Bound = Annotated[float, Field(allow_inf_nan=False)]
Range = Annotated[list[Bound], Field(min_length=2, max_length=2)]
IntRange = Annotated[list[StrictInt], Field(min_length=2, max_length=2)]
# what Optuna can store as a categorical value; bool first, or true would be read as 1
Choice = Union[StrictBool, StrictInt, Annotated[float, Field(allow_inf_nan=False)], StrictStr, None]
KINDS = ("log_uniform", "uniform", "int", "choice")


def _increasing(low, high):
    if not low < high:
        raise ValueError(f"empty range: the low end {low:g} must be below the high end {high:g}")


class Distribution(Strict):
    """Where a path's values come from; exactly one key."""
    log_uniform: Optional[Range] = Field(
        None, description="[low, high], 0 < low < high: uniform in log space (learning rates, weight decay)")
    uniform: Optional[Range] = Field(None, description="[low, high]: uniform")
    choice: Optional[list[Choice]] = Field(
        None, min_length=1, description="values to pick from: numbers, strings, true/false or null")
    # last: below this line the name int is the field, not the builtin
    int: Optional[IntRange] = Field(None, description="[low, high]: an integer from low to high, both included")

    @field_validator("log_uniform")
    @classmethod
    def _log_range(cls, v):
        if v is not None:
            if v[0] <= 0:
                raise ValueError(f"a log range must stay above zero: the low end is {v[0]:g}; "
                                 "use uniform for a range that reaches zero")
            _increasing(*v)
        return v

    @field_validator("uniform", "int")
    @classmethod
    def _range(cls, v):
        if v is not None:
            _increasing(*v)
        return v

    @field_validator("choice")
    @classmethod
    def _distinct(cls, v):
        seen = []
        for c in v:
            if any(_same(c, s) for s in seen):
                raise ValueError(f"choice lists {c!r} twice")
            seen.append(c)
        return v

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            found = " and ".join(given) if given else "none"
            raise ValueError(f"give exactly one distribution: {', '.join(KINDS)} (found {found})")
        return self

    @property
    def kind(self):
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def args(self):
        return getattr(self, self.kind)

    def probes(self):
        """[(value, what it is)]: the values whose spec must be valid for the whole range to be."""
        if self.kind == "choice":
            return [(c, "a choice") for c in self.choice]
        low, high = self.args
        return [(low, "the low end"), (high, "the high end")]

    def contains(self, value):
        """Whether ``value`` is one this distribution can draw."""
        if self.kind == "choice":
            return any(_same(value, c) for c in self.choice)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        low, high = self.args
        return low <= value <= high

    def size(self):
        """How many values a grid takes from it (None: a continuous range)."""
        if self.kind == "choice":
            return len(self.choice)
        if self.kind == "int":
            return self.int[1] - self.int[0] + 1
        return None

    def grid(self):
        return list(self.choice) if self.kind == "choice" else list(range(self.int[0], self.int[1] + 1))


def _same(a, b):
    """Equal and of the same kind (true is not 1, 1 is 1.0)."""
    return isinstance(a, bool) == isinstance(b, bool) and (a is None) == (b is None) and a == b


class PruningSpec(Strict):
    """Stop a trial whose validation curve falls below the median of earlier trials at the same epoch."""
    enabled: StrictBool = True
    startup_trials: StrictInt = Field(5, ge=0, description="trials that run to the end before any is pruned")
    min_epochs: StrictInt = Field(2, gt=0, description="epochs every trial runs before it may be pruned")


class TuneSpec(Strict):
    """What ``netspec tune`` searches: spec paths and their distributions, the objective, the budget."""
    objective: Literal["val_acc", "val_loss"] = Field(
        "val_acc", description="val_acc is maximised, val_loss minimised (val_loss unless the loss "
        "classifies); the value at a trial's last epoch")
    trials: StrictInt = Field(20, gt=0, le=100_000, description="trials in the study, over every worker "
                              "(a grid: its size, unless given)")
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="Optuna's TPE, independent random draws, or every combination of choice and "
        "int values")
    baseline: StrictBool = Field(
        True, description="trial 0 trains the spec's own values when they lie in the space, so the best "
        "trial is never worse than the spec as written")
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    space: dict[str, Distribution] = Field(
        min_length=1, description="spec path (train.optimizer.lr, layers.<name>.<key>, "
        "layers.<block use>.<parameter>) -> distribution")

    @model_validator(mode="after")
    def _grid(self):
        if self.sampler != "grid":
            return self
        continuous = [p for p, d in self.space.items() if d.size() is None]
        if continuous:
            raise ValueError(f"the grid sampler takes choice and int distributions only; {continuous[0]} is "
                             f"{self.space[continuous[0]].kind}")
        size = math.prod(d.size() for d in self.space.values())
        if "trials" not in self.model_fields_set:
            self.trials = size
        elif self.trials > size:
            raise ValueError(f"trials {self.trials} is more than the grid's {size} combinations")
        return self
