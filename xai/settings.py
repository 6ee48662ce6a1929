"""Settings dataclasses of the library: defaults, and the limits the pipeline checks params against.

A library settings class (e.g. `VibiConfig`, `BlackboxConfig`) is a frozen dataclass whose fields
carry their library default and, through `bounded`, their numeric limits; `Literal` types list the
allowed choices. Code that uses the library directly takes the defaults and overrides a few fields;
the pipeline builds the same classes from params.yaml, checking every value against these limits.
"""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any

SEED_MAX = 2**31 - 1  # seeds feed generators seeded with seed + offsets; keep them in int64 range
TAU_MIN = 1e-3  # below this the relaxed masks' softmax underflows to exact one-hots (no gradient)


def bounded(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with a default and numeric bounds (checked when the pipeline builds it)."""
    metadata = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default")
    return field(default=default, metadata=metadata)
