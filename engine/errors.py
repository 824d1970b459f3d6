"""Errors the engine raises for the caller to show: each message says what was expected and what came."""


class CadenzaError(Exception):
    """Base class: a problem with the user's input or files, worded for the user (no traceback needed)."""


class CheckpointError(CadenzaError):
    """A model file is missing, unreadable, or belongs to another model."""


class PromptError(CadenzaError):
    """A period/composer/instrumentation combination the model does not know, or text it cannot encode."""


class SettingsError(CadenzaError):
    """A sampling setting or bound outside its valid range."""
