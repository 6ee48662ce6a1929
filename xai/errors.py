"""User-facing errors: raised for bad input, reported as one clean line by the stage runner."""

from __future__ import annotations

import re


class XaiError(Exception):
    """An error the user can fix (bad settings, missing data, foreign checkpoint); no traceback.

    The library names settings by their field names in backticks (`` `k` = 20 is out of range``)
    and says which settings class `owner` they belong to and which `fields` the message names, so
    the pipeline can name them as its parameter keys instead (`qualified("vibi")`:
    `vibi.k = 20 ...`).
    """

    def __init__(self, message: str, *, owner: type | None = None,
                 fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.owner = owner
        self.fields = fields

    #: the stage's exit code for this error (`xai.pipeline.cli.run`); 2 for settings and inputs
    exit_code = 2

    def qualified(self, prefix: str, names: dict[str, str] | None = None) -> XaiError:
        """The same error with each named field written `prefix.field` (or `names[field]`)."""
        if not self.fields:
            return self
        names = names or {f: f"{prefix}.{f}" for f in self.fields}
        pattern = re.compile("`(" + "|".join(map(re.escape, self.fields)) + ")`")
        return type(self)(pattern.sub(lambda m: names.get(m.group(1), m.group(1)), str(self)))


class ConfigError(XaiError):
    """A setting is missing, unknown, of the wrong type, out of range or inconsistent with another."""


class DataError(XaiError):
    """Input data is missing or not in the expected layout."""


class CheckpointError(XaiError):
    """A model or checkpoint file is not ours, is truncated, or belongs to another architecture."""


class TrainingError(XaiError):
    """Training diverged (non-finite loss); nothing was saved."""


class TrackingError(XaiError):
    """The MLflow tracking store could not be reached."""


class DiskFullError(XaiError):
    """An output could not be written: its filesystem is full (or the disk quota is used up).

    Raised by `xai.io` once the temporary file is removed; the previous outputs are untouched.
    """

    exit_code = 3


class UnwritableError(XaiError):
    """An output folder cannot be written (read-only filesystem, wrong owner or mode)."""

    exit_code = 4
