"""Errors the engine reports to its callers."""


class InputError(ValueError):
    """Bad input named by the message (the CLI prints it on one line and exits with code 2)."""


class Cancelled(RuntimeError):
    """The caller asked to stop; frames finished before that are kept."""
