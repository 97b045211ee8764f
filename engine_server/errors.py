"""Errors the engine reports to its callers."""


class InputError(ValueError):
    """Bad input named by the message (the CLI prints it on one line and exits with code 2)."""


class Cancelled(RuntimeError):
    """The caller asked to stop; frames finished before that are kept."""


class WeightsUnavailable(RuntimeError):
    """No VGG19 ImageNet weights could be found offline."""


class FlowBackendUnavailable(RuntimeError):
    """The requested flow backend cannot run here (e.g. its weights are not installed)."""


class WorkerLost(RuntimeError):
    """A scale-out worker kept dying under one chunk (out of memory, a driver crash); frames made are kept."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message says what to change (not a raw allocator message)."""


def out_of_memory(exc: BaseException, frame_size: tuple[int, int], device) -> "OutOfMemory | None":
    """An OutOfMemory saying what to change when ``exc`` is an allocation failure of torch (CPU or CUDA)
    or Python; None for any other error."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text):
        return None
    width, height = frame_size
    where = "GPU memory" if getattr(device, "type", str(device)).startswith("cuda") else "memory"
    return OutOfMemory(f"the engine ran out of {where} stylizing {width}x{height} frames: use a smaller width "
                       f"(half the width needs about a quarter of the memory: {width // 2} px), or the Instant "
                       f"method (mode fast), which needs far less")
