"""Previews and estimates: one-off answers from a thread beside the job worker.

A preview is a single frame painted by the feed-forward network; an estimate is what a job would cost
(engine_server.estimate), its first one per method timed here on the device.

An editor previews a painting on the current frame while a long optimization job may be running, so a
preview never waits for the job queue: this thread shares the device with the worker (the network is
small next to VGG19 and one frame is a single pass). Nothing is written to disk. Like the worker it never
touches the client socket; each answer goes back to the main loop over an inproc PAIR socket as
``{"peer": routing id, "reply": header}`` plus the PNG, and the main loop sends it.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

import msgpack
import numpy as np
import zmq

from ..io.frames import decode_image, encode_png

log = logging.getLogger(__name__)

MAX_WAITING = 4  # previews queued across all clients; more are answered `busy` (PROTOCOL.md)


@dataclass
class PreviewRequest:
    peer: bytes
    request_id: object
    header: dict
    blobs: list  # bytes: the frame, then the style images (none for an estimate)


class PreviewWorker(threading.Thread):
    def __init__(self, context: zmq.Context, events_address: str, device: str, vgg_weights: str = "auto"):
        super().__init__(name="engine-preview", daemon=True)
        self.context, self.events_address, self.device = context, events_address, device
        self.vgg_weights = vgg_weights
        self.unit_seconds: dict[bool, float] = {}  # fast method?: one iteration / network pass, measured
        self.idle_bytes = 0  # the engine's resident memory at rest (network loaded, no job), once seen
        self.running_job = None  # callable: is a job running now? (the server sets it)
        self.requests: queue.Queue[PreviewRequest] = queue.Queue(MAX_WAITING)
        self.shutdown = threading.Event()

    # -- main thread side ---------------------------------------------------------------------
    def offer(self, request: PreviewRequest) -> bool:
        """Queue a preview; False when MAX_WAITING are already waiting."""
        try:
            self.requests.put_nowait(request)
            return True
        except queue.Full:
            return False

    def stop(self) -> None:
        self.shutdown.set()

    # -- preview thread -----------------------------------------------------------------------
    def run(self) -> None:
        socket = self.context.socket(zmq.PAIR)
        socket.setsockopt(zmq.LINGER, 1000)
        socket.connect(self.events_address)
        try:
            while not self.shutdown.is_set():
                try:
                    request = self.requests.get(timeout=0.2)
                except queue.Empty:
                    continue
                reply, blobs = self._answer(request)
                if request.request_id is not None:
                    reply["id"] = request.request_id
                socket.send_multipart([msgpack.packb({"peer": request.peer, "reply": reply}, use_bin_type=True),
                                       *blobs])
        finally:
            socket.close()

    def _answer(self, request: PreviewRequest) -> tuple[dict, list]:
        try:
            if request.header["type"] == "estimate":
                return self._estimate(request), []
            return self._paint(request)
        except _Refused as exc:
            return {"type": "error", "code": "bad_field", "message": exc.message, "field": exc.field}, []
        except Exception as exc:  # the network failed: answer, log, keep serving
            log.exception("preview failed")
            return {"type": "error", "code": "internal", "message": f"preview failed ({type(exc).__name__})",
                    "field": None}, []

    def _estimate(self, request: PreviewRequest) -> dict:
        from .. import InputError, StylizeOptions, estimate_job, measure_unit_seconds
        from ..options import FAST_MODES

        h = request.header
        options = StylizeOptions(device=self.device, vgg_weights=self.vgg_weights, **{
            k: tuple(v) if k == "long_term" else v for k, v in (h.get("options") or {}).items()})
        try:
            options.validate()
        except InputError as exc:
            raise _Refused(str(exc), "options") from None
        fast = options.mode in FAST_MODES
        if fast not in self.unit_seconds:
            self.unit_seconds[fast] = measure_unit_seconds(options, self.device, self.vgg_weights)
            if not self.idle_bytes and self.running_job is not None and not self.running_job():
                self.idle_bytes = resident_bytes()  # torch and the network loaded, no job: the engine at rest
            log.info("estimates: one %s at 256x144 takes %.3f s on %s", "network pass" if fast else "iteration",
                     self.unit_seconds[fast], self.device)
        held = max(0, resident_bytes() - self.idle_bytes) if self.idle_bytes else 0
        found = estimate_job((h["width"], h["height"]), h["frame_count"], options, self.unit_seconds[fast],
                             self.device, held)
        return {"type": "estimated", "device": str(self.device), **found.as_dict()}

    def _paint(self, request: PreviewRequest) -> tuple[dict, list]:
        from .. import StylizeOptions, Stylizer, fit_style, painting_pixels  # the engine core, on this thread
        from ..errors import InputError, WeightsUnavailable

        h = request.header
        started = time.perf_counter()
        frame = _decode(request.blobs[0], h["encoding"], h["width"], h["height"])
        options = StylizeOptions(mode="fast-per-frame", device=self.device, **(h.get("options") or {}))
        needed = painting_pixels((h["width"], h["height"]), options)
        styles = []
        for i, blob in enumerate(request.blobs[1:]):
            style = decode_image(blob)
            if style is None:
                raise _Refused(f"style image {i} ({h['styles'][i]}) is not a readable image", f"styles[{i}]")
            styles.append(fit_style(style, needed))  # one full-size painting in memory at a time
        try:
            stylizer = Stylizer(styles, options)
            result = next(iter(stylizer.run([frame], [h["weights"]])))
        except (InputError, WeightsUnavailable) as exc:
            raise _Refused(str(exc), None) from None
        seconds = time.perf_counter() - started
        log.info("preview %dx%d painted in %.2f s", h["width"], h["height"], seconds)
        return ({"type": "previewed", "width": h["width"], "height": h["height"], "encoding": "png",
                 "seconds": round(seconds, 3)}, [encode_png(result.image)])


def resident_bytes() -> int:
    """This process's resident memory (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Refused(Exception):
    def __init__(self, message: str, field: str | None):
        super().__init__(message)
        self.message, self.field = message, field


def _decode(blob: bytes, encoding: str, width: int, height: int) -> np.ndarray:
    if encoding == "raw":
        return np.frombuffer(blob, np.uint8).reshape(height, width, 3)
    image = decode_image(blob)
    if image is None:
        raise _Refused("the frame is not a readable PNG", "frame")
    return image
