"""User-facing errors: raised for bad input, reported as one clean line by the stage runner."""


class XaiError(Exception):
    """An error the user can fix (bad params, missing data, foreign checkpoint); no traceback needed."""


class ConfigError(XaiError):
    """A parameter in params.yaml is missing, unknown, of the wrong type or out of range."""


class DataError(XaiError):
    """Input data is missing or not in the expected layout."""


class CheckpointError(XaiError):
    """A model or checkpoint file is not ours, is truncated, or belongs to another architecture."""


class TrainingError(XaiError):
    """Training diverged (non-finite loss); nothing was saved."""


class TrackingError(XaiError):
    """The MLflow tracking store could not be reached."""
