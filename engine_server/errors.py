"""Errors the engine reports to its callers."""


class InputError(ValueError):
    """Bad input named by the message (the CLI prints it on one line and exits with code 2)."""


class Cancelled(RuntimeError):
    """The caller asked to stop; frames finished before that are kept."""


class WeightsUnavailable(RuntimeError):
    """No VGG19 ImageNet weights could be found offline."""


class FlowBackendUnavailable(RuntimeError):
    """The requested flow backend cannot run here (e.g. its weights are not installed)."""
