"""Temporally consistent neural style transfer for video (Ruder, Dosovitskiy & Brox).

Python API::

    from engine_server import stylize
    for frame in stylize("clip.mp4", ["starry_night.jpg"], width=320, iterations=100):
        save(frame.index, frame.image)

The pipeline is frames -> flow -> masks -> optimize -> frames (:mod:`engine_server.pipeline`), its rooms:

    io/        frames, .flo flows, .pgm masks, report.json in and out
    motion/    optical flow, consistency masks, warping, temporal constraints
    style/     VGG19, content and style losses, style targets, colour, keyframed weights
    optimize/  one frame's objective and the optimizer that minimizes it
    feedforward/  Ghiasi et al.'s arbitrary-style network (the fast modes) and its stabilization along the flow
    scale/     one strip across the GPUs of a Ray cluster: chunks, seams, the driver and its workers
    serve/     the ZeroMQ engine server, its worker and job store, and the submit client

with pipeline.py (the modes and the API), estimate.py (what a job will cost), options.py, cli.py, bench.py
and demo.py at the top. Lower rooms never import higher ones (tests/test_layout.py checks it).

The public names load on first use, so that the commands that need no engine (``submit``, ``jobs``,
``keygen``, ``--help``) start without importing torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same names, for readers and type checkers
    from .errors import Cancelled, FlowBackendUnavailable, InputError, OutOfMemory, WeightsUnavailable, WorkerLost
    from .estimate import Estimate, estimate_job, measure_unit_seconds
    from .options import StylizeOptions
    from .pipeline import FrameResult, Progress, Stylizer, images_to_resume, painting_pixels, resolve_device, stylize
    from .scale.cluster import ClusterStylizer
    from .style.keyframes import load_style_weights
    from .style.targets import fit_style

_HOMES = {  # public name -> the module that defines it
    **dict.fromkeys(("Cancelled", "FlowBackendUnavailable", "InputError", "OutOfMemory", "WeightsUnavailable",
                     "WorkerLost"), ".errors"),
    **dict.fromkeys(("Estimate", "estimate_job", "measure_unit_seconds"), ".estimate"),
    "StylizeOptions": ".options",
    **dict.fromkeys(("FrameResult", "Progress", "Stylizer", "images_to_resume", "painting_pixels", "resolve_device",
                     "stylize"), ".pipeline"),
    "ClusterStylizer": ".scale.cluster",  # imports Ray only when one is made
    "load_style_weights": ".style.keyframes",
    "fit_style": ".style.targets",
}

__version__ = "0.1.0"
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
