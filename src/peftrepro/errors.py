"""The suite's user-facing errors: each says what was wrong, where, and how to fix it."""


class PeftReproError(Exception):
    """Base of every error the suite raises on purpose (the CLI prints it without a traceback)."""


class ConfigError(PeftReproError, ValueError):
    """A configuration value is invalid: unknown name, out-of-range number, conflicting options."""


class DataError(PeftReproError):
    """A dataset file is missing, empty or malformed."""


class ModelLoadError(PeftReproError):
    """A model could not be found or loaded from any source tried."""
