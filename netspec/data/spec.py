"""Pydantic models of a spec's ``train.data`` and ``train.augment`` sections.

Design: ``DataSpec`` is a union discriminated on ``source``; each source is a
small model with ``extra="forbid"`` and defaults, so a spec names only what it
changes and the JSON Schema documents every option. Image sources share the
book loader's options (``normalize``, ``flatten``, ``one_hot``) and the
quick-run limits. Loading lives in ``netspec.data.sources``; these models only
describe and check.
"""

import math
from typing import Annotated, Any, List, Literal, Optional, Union

import numpy as np
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    BeforeValidator,
    PositiveInt,
    StrictInt,
    TypeAdapter,
    field_validator,
    model_validator,
)

from netspec._strict import Strict


def _number(v):
    """One message for anything but a number (the union would give one per member)."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        quoted = " (values are never read from strings: remove the quotes)" if isinstance(v, str) else ""
        raise ValueError(f"expected a fraction such as 0.2 or a count of samples, got {v!r}{quoted}")
    return v


class Holdout(Strict):
    """The validation split every source may declare: part of the training set held out."""

    validation: Annotated[Optional[Union[StrictInt, float]], BeforeValidator(_number)] = Field(
        None,
        description="hold out part of the training set for validation: a fraction (0.2) or a count of "
        "samples (800), drawn with the spec's seed; per-epoch reports then use it and the test set is "
        "evaluated once, at the end",
    )

    @field_validator("validation")
    @classmethod
    def _fraction_or_count(cls, v):
        if v is None:
            return v
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"a count of validation samples must be >= 1 (got {v})")
        elif not (math.isfinite(v) and 0 < v < 1):
            raise ValueError(f"a fraction of the training set must be between 0 and 1, exclusive (got {v}); "
                             "a count of samples is a whole number")
        return v


class ImageOptions(Holdout):
    """Options shared by image sources, as in the book's MNIST loader."""

    normalize: bool = Field(True, description="scale pixels to [0, 1] floats; false keeps the raw values (as floats)")
    flatten: Optional[bool] = Field(
        None,
        description="true: x as (N, C*H*W) vectors; false: x as (N, C, H, W) images; "
        "null (default): images, and the trainer reshapes to the spec's input shape",
    )
    one_hot: bool = Field(False, description="targets as one-hot float rows instead of int64 labels")
    limit_train: Optional[PositiveInt] = Field(None, description="use only the first N training samples")
    limit_test: Optional[PositiveInt] = Field(None, description="use only the first N test samples")


class Mnist5kData(ImageOptions):
    """5,000 real MNIST digits shipped with netspec: 4,000 train / 1,000 test, 1x28x28.

    MNIST by Yann LeCun and Corinna Cortes, CC BY-SA 3.0 (see MNIST_LICENSE.txt).
    """

    source: Literal["mnist-5k"] = "mnist-5k"


class MnistData(ImageOptions):
    """MNIST (60,000 train / 10,000 test, 1x28x28) from IDX files (.gz or raw)."""

    source: Literal["mnist"]
    dir: Optional[str] = Field(
        None,
        description="directory holding the four IDX files; default: $NETSPEC_DATA/mnist, "
        "else the user cache dir (~/.cache/netspec/mnist)",
    )


class FashionMnistData(ImageOptions):
    """Fashion-MNIST (60,000 train / 10,000 test, 1x28x28) from IDX files (.gz or raw)."""

    source: Literal["fashion-mnist"]
    dir: Optional[str] = Field(
        None,
        description="directory holding the four IDX files; default: $NETSPEC_DATA/fashion-mnist, "
        "else the user cache dir, else Debian's /usr/share/datasets/fashion-mnist",
    )


class DigitsData(ImageOptions):
    """scikit-learn's 8x8 digits (1,797 images, pixels 0..16) with a fixed split; needs scikit-learn."""

    source: Literal["digits"]
    n_test: PositiveInt = Field(297, description="size of the test split, taken from a fixed shuffle (train gets the rest)")


class InlineData(Holdout):
    """Arrays written in the spec; the test set defaults to the training set."""

    source: Literal["inline"]
    x: List[Any] = Field(..., min_length=1, description="inputs, one row per sample (nested lists of numbers)")
    t: List[Any] = Field(..., min_length=1, description="targets: labels or rows of numbers, one per sample")
    x_test: Optional[List[Any]] = Field(None, description="test inputs (default: x)")
    t_test: Optional[List[Any]] = Field(None, description="test targets (default: t)")

    @field_validator("x", "t", "x_test", "t_test")
    @classmethod
    def _numeric_array(cls, value):
        if value is None:
            return value
        try:
            array = np.asarray(value)
        except ValueError:
            raise ValueError("expected a rectangular array (every row the same length), found ragged rows") from None
        if array.dtype.kind not in "biuf":
            raise ValueError(f"expected numbers, found {array.dtype.kind!r}-kind values")
        return value

    @model_validator(mode="after")
    def _pairs_fit(self):
        if (self.x_test is None) != (self.t_test is None):
            raise ValueError("give both x_test and t_test, or neither (then the test set is x, t)")
        if self.validation is not None and self.x_test is None:
            raise ValueError("a validation split of inline data needs x_test and t_test: without them the "
                             "test set is x, t, which would hold the validation samples")
        for xs, ts, name in ((self.x, self.t, ""), (self.x_test, self.t_test, "_test")):
            if xs is not None and len(xs) != len(ts):
                raise ValueError(f"x{name} has {len(xs)} samples but t{name} has {len(ts)}; expected the same number")
        return self


class NpzKeys(Strict):
    """Names of the arrays inside an .npz file."""

    x_train: str = "x_train"
    t_train: str = "t_train"
    x_test: str = "x_test"
    t_test: str = "t_test"


class NpzData(ImageOptions):
    """Arrays from a .npz file (read by netspec.safeio: plain arrays only, never unpickled)."""

    source: Literal["npz"]
    path: str = Field(..., min_length=1, description="path of the .npz file (relative to the spec file's folder)")
    keys: NpzKeys = Field(default_factory=NpzKeys, description="array names inside the file")
    sha256: Optional[str] = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the file; when set, a file with other contents is refused. "
        "netspec records it in the run directory when training, so a resumed run or an "
        "evaluation can never use a different file by mistake")
    normalize: Optional[bool] = Field(
        None, description="scale to [0, 1] by dividing by 255; null (default): only when x is uint8"
    )


class FunctionData(Holdout):
    """Synthetic regression: x ~ U[low, high], t = polyval(coefficients, x) (+ noise)."""

    source: Literal["function"]
    coefficients: List[float] = Field(
        ..., min_length=1, description="polynomial coefficients, highest degree first (numpy.polyval order)"
    )
    low: float = Field(-5.0, description="lower end of the x range")
    high: float = Field(5.0, description="upper end of the x range")
    n_train: PositiveInt = 10000
    n_test: PositiveInt = 1000
    noise: NonNegativeFloat = Field(0.0, description="std of Gaussian noise added to the training targets")
    seed: Optional[int] = Field(None, description="sampling seed; default: the spec's seed")

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high:
            raise ValueError(f"expected low < high, found low={self.low}, high={self.high}")
        return self


DataSpec = Annotated[
    Union[Mnist5kData, MnistData, FashionMnistData, DigitsData, InlineData, NpzData, FunctionData],
    Field(discriminator="source"),
]
"""The ``train.data`` section: one of the sources, chosen by ``source``."""

SOURCES = ("mnist-5k", "mnist", "fashion-mnist", "digits", "inline", "npz", "function")


class AugmentSpec(Strict):
    """The ``train.augment`` section: random image transforms, all off by default."""

    shift: NonNegativeInt = Field(0, description="random translation by up to this many pixels in x and y (0: off)")
    rotate: float = Field(0.0, ge=0.0, le=180.0, description="random rotation by up to this many degrees (0: off)")
    flip: bool = Field(False, description="flip half of the images horizontally")
    crop: NonNegativeInt = Field(0, description="zero-pad by this many pixels, then crop back at a random offset (0: off)")
    brightness: float = Field(
        0.0, ge=0.0, le=1.0, description="scale each image's intensity by a factor in [1-b, 1+b] (0: off)"
    )
    cutout: NonNegativeInt = Field(
        0, description="zero a square of this side in each image, centred on a random pixel, clipped at "
                       "the border (0: off)"
    )

    @property
    def enabled(self):
        """True when at least one transform is on."""
        return bool(self.shift or self.rotate or self.flip or self.crop or self.brightness or self.cutout)


def data_spec_adapter():
    """A pydantic TypeAdapter for DataSpec (validate dicts, emit JSON Schema)."""
    return TypeAdapter(DataSpec)


__all__ = [
    "AugmentSpec",
    "DataSpec",
    "DigitsData",
    "FashionMnistData",
    "FunctionData",
    "Holdout",
    "ImageOptions",
    "InlineData",
    "Mnist5kData",
    "MnistData",
    "NpzData",
    "NpzKeys",
    "SOURCES",
    "data_spec_adapter",
]
