"""Base of every spec model: unknown keys are errors, and values are never coerced from strings.

``strict=True`` means one rule everywhere: ``lr: "0.1"``, ``units: "10"`` and
``flatten: "yes"`` are all errors saying a number (or true/false) was expected and
a string was found. An integer is still a valid float (``lr: 1``).
"""
from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
