"""The suite's user-facing errors: each says what was wrong, where, and how to fix it."""


class PeftReproError(Exception):
    """Base of every error the suite raises on purpose (the CLI prints it without a traceback)."""


class ConfigError(PeftReproError, ValueError):
    """A configuration value is invalid: unknown name, out-of-range number, conflicting options."""


class NotApplicableError(ConfigError):
    """The method cannot apply to this model by its definition (e.g. BitFit on a bias-free model).

    A run that meets it writes a record with status "not_applicable", so a table shows "n/a" with
    the reason instead of a missing or failed cell, and a sweep around it succeeds.
    """


class DataError(PeftReproError):
    """A dataset file is missing, empty or malformed."""


class ModelLoadError(PeftReproError):
    """A model could not be found or loaded from any source tried."""
