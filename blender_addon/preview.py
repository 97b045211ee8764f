"""Preview: the active strip's current frame painted by the engine's feed-forward network, shown in the
sidebar (and kept as the image "VSE Style Preview" for a full-size look in an Image Editor).

One frame is exported at the job's processing width, sent with the strip's paintings and the weights
its keys give at that frame, and the engine answers with the painting (the ``preview`` request: no job,
nothing kept on the engine). Like jobs, a preview advances in ``tick()``: a timer calls it in the UI,
the caller in background mode and tests. Nothing here is saved in the .blend.
"""
import os
import shutil
import tempfile
import time
import traceback

import bpy
import bpy.utils.previews

from . import engine_link, export, jobs
from .engine_link import LinkError
from .keyframes import sample_weights

IMAGE_NAME = "VSE Style Preview"
TIMER_INTERVAL = 0.05


class PreviewError(Exception):
    """A message for the editor."""


class State:
    """What the panel shows: the last preview (strip, frame, picture) and the one in flight."""

    def __init__(self):
        self.strip = ""         # the strip the preview belongs to
        self.frame = 0          # its scene frame
        self.text = ""          # "Painting frame 12", "Frame 12 · 0.41 s on the engine", or an error
        self.error = False
        self.icon_id = 0        # in the sidebar (bpy.utils.previews)
        self.size = (0, 0)      # the painting's pixels

    @property
    def busy(self) -> bool:
        """A preview is in flight."""
        return _pending is not None


state = State()
_folder = None                  # this session's preview files
_icons = None                   # bpy.utils.previews collection
_pending = None                 # the Pending preview, if one is in flight


class Pending:
    """One preview: connect, send, wait, show. Holds no RNA pointers across ticks."""

    def __init__(self, settings, strip_name, frame, frame_png, size, styles, weights, options, background):
        self.settings, self.strip_name, self.frame = settings, strip_name, frame
        self.frame_png, self.size, self.styles, self.weights, self.options = frame_png, size, styles, weights, options
        self.background = background
        self.future = None
        self.request = None
        self.started = time.monotonic()

    def step(self, deadline: float) -> bool:
        """Advance until ``deadline``; True once the preview is shown (PreviewError / LinkError on failure)."""
        if self.request is None:
            if self.background:
                client, _welcome = engine_link.connect(self.settings)
            else:
                if self.future is None:
                    self.future = engine_link.connect_async(self.settings)
                if not self.future.done():
                    return False
                client, _welcome = self.future.result()
            self.request = client.start_preview(self.frame_png, self.styles, self.weights, self.options,
                                                *self.size)
        request = self.request
        if not request.tick(max(0.001, deadline - time.monotonic())):
            return False
        if request.error is not None:
            code = getattr(request.error, "code", "")
            if code == "unknown_type":
                raise PreviewError("This engine is too old for previews: update it to the add-on's release")
            if code == "busy":
                raise PreviewError("The engine is busy with other previews: try again in a moment")
            raise PreviewError(f"Preview failed: {engine_link.explain(request.error)}")
        _show(bytes(request.result.data), self.strip_name, self.frame)
        state.text = f"Frame {self.frame} · {request.result.seconds:.2f} s on the engine"
        return True

    def cancel(self):
        if self.request is not None:
            self.request.cancel()


def start(scene, strip, settings, width: int, options: dict, background: bool = False) -> Pending:
    """Export the strip's frame under the playhead and send it; the preview advances in tick()."""
    global _pending
    if strip is None:
        raise PreviewError("No active strip: select the strip to preview in the Sequencer")
    frame = scene.frame_current
    if frame not in export.frame_range(strip):
        raise PreviewError(f"The playhead (frame {frame}) is not over '{strip.name}': move it onto the strip")
    styles = jobs.read_styles(strip)
    folder = tempfile.mkdtemp(prefix="vse_style_preview_")
    try:
        exporter = export.Exporter(scene, strip, folder, width, frames=[frame])
        path = exporter.run()[0]
        with open(path, "rb") as handle:
            frame_png = handle.read()
        size = exporter.size
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    weights = sample_weights(scene, strip, [frame])[0]
    if _pending is not None:
        _pending.cancel()  # the editor asked for another frame: only the newest counts
    _pending = Pending(settings, strip.name, frame, frame_png, size, styles, weights, options, background)
    state.error = False
    state.strip, state.frame, state.text = strip.name, frame, f"Painting frame {frame}"
    if not background and not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL)
    return _pending


def tick(max_seconds: float = 0.02) -> bool:
    """Advance the preview in flight; True while one is."""
    global _pending
    pending = _pending
    if pending is None:
        return False
    try:
        finished = pending.step(time.monotonic() + max_seconds)
    except (PreviewError, LinkError, export.ExportError) as exc:
        finished = True
        state.text, state.error = str(exc), True
    except Exception as exc:  # a bug or an unexpected client error: report it, keep Blender going
        traceback.print_exc()
        finished = True
        state.text, state.error = engine_link.explain(exc), True
        engine_link.forget_client()
    if finished and _pending is pending:
        _pending = None
    jobs.redraw_sequencers()
    return _pending is not None


def wait(timeout: float = 120.0) -> str:
    """Drive the preview in flight to its end (background mode); the error message, '' if it showed."""
    end = time.monotonic() + timeout
    while tick(0.1):
        if time.monotonic() > end:
            stop()
            state.text, state.error = "Timed out waiting for the engine's preview", True
    return state.text if state.error else ""


def _timer():
    return TIMER_INTERVAL if tick() else None


def _show(png: bytes, strip_name: str, frame: int):
    """Write the painting to this session's preview folder, load it as the preview image and icon."""
    global _folder, _icons
    if _folder is None or not os.path.isdir(_folder):
        _folder = tempfile.mkdtemp(prefix="vse_style_previews_")
    path = os.path.join(_folder, f"preview_{time.monotonic_ns()}.png")  # a new name: no stale caches
    with open(path, "wb") as handle:
        handle.write(png)
    image = bpy.data.images.get(IMAGE_NAME)
    if image is None:
        image = bpy.data.images.load(path, check_existing=False)
        image.name = IMAGE_NAME
    else:
        old = bpy.path.abspath(image.filepath)
        image.filepath = path
        image.reload()
        if old.startswith(_folder) and old != path:
            _remove(old)
    if _icons is None:
        _icons = bpy.utils.previews.new()
    _icons.clear()
    icon = _icons.load(f"{strip_name}:{frame}:{path}", path, 'IMAGE')
    state.icon_id, state.size = icon.icon_id, tuple(icon.image_size)  # icon_id is 0 in background mode
    state.strip, state.frame = strip_name, frame


def _remove(path: str):
    try:
        os.remove(path)
    except OSError:
        pass


def stop():
    """Forget the preview in flight (file loaded, add-on disabled)."""
    global _pending
    if _pending is not None:
        _pending.cancel()
    _pending = None
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)


@bpy.app.handlers.persistent
def _on_load_pre(_file):
    stop()
    state.__init__()  # the strip it showed belongs to the file being closed


def register():
    bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister():
    global _icons, _folder
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    stop()
    if _icons is not None:
        bpy.utils.previews.remove(_icons)
        _icons = None
    image = bpy.data.images.get(IMAGE_NAME) if hasattr(bpy.data, "images") else None  # restricted at exit
    if image is not None:
        bpy.data.images.remove(image)
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
        _folder = None
    state.__init__()
