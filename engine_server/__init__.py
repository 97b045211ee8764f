"""Temporally consistent neural style transfer for video (Ruder, Dosovitskiy & Brox).

Python API::

    from engine_server import stylize
    for frame in stylize("clip.mp4", ["starry_night.jpg"], width=320, iterations=100):
        save(frame.index, frame.image)

The pipeline is frames -> flow -> masks -> optimize -> frames; see :mod:`engine_server.pipeline`.
"""
from .errors import Cancelled, InputError
from .pipeline import FrameResult, Progress, StylizeOptions, Stylizer, stylize

__version__ = "0.1.0"
__all__ = ["stylize", "Stylizer", "StylizeOptions", "FrameResult", "Progress", "Cancelled", "InputError"]
