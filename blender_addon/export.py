"""Export a strip's frames as PNG files at the processing size, one frame per ``step()``.

Image and movie strips without modifiers are read from their source media: a fresh strip of the same
files, with the same start, trims and holds, in a neutral temporary scene whose canvas is the
processing size. Transforms, crops and colour settings of the strip are left out (the new strip gets
the transform back on re-import). Any other strip is rendered through the sequencer of a copy of the
scene with every unrelated strip muted. Both render with the 'Standard' view transform, no look and no
dither, so 8-bit sRGB pixels come out unchanged.
"""
import os

import bpy

from . import compat

TEMP_SCENE = ".vse_style_export"
SOURCE_TYPES = {"IMAGE", "MOVIE"}
UNSUPPORTED_TYPES = {"SOUND"}
MIN_SIDE = 16
# Timing properties a fresh strip copies so it shows the same source frame at every scene frame.
TIMING = ("frame_offset_start", "frame_offset_end", "animation_offset_start", "animation_offset_end",
          "use_reverse_frames", "strobe", "alpha_mode", "use_deinterlace")


class ExportError(Exception):
    """A message for the editor."""


def frame_range(strip) -> range:
    """The scene frames where the strip is visible (its trimmed range)."""
    return range(strip.frame_final_start, strip.frame_final_end)


def reads_source(strip) -> bool:
    """Whether the strip's frames are read from its media (else rendered through the sequencer)."""
    retimed = len(getattr(strip, "retiming_keys", ())) > 2  # plain strips have none or the two ends
    return strip.type in SOURCE_TYPES and not len(strip.modifiers) and not retimed


def processing_size(width: int, height: int, target_width: int) -> tuple:
    """Processing size for media of ``width`` x ``height``: ``target_width`` wide (0: as is), same aspect."""
    w = target_width or width
    h = round(w * height / width)
    if min(w, h) < MIN_SIDE:
        raise ExportError(f"Processing size {w}x{h} is too small: the engine needs at least {MIN_SIDE} px")
    return w, h


def media_paths(strip) -> list:
    """Absolute paths of the source files the strip shows in its range (movie: the one file)."""
    if strip.type == "MOVIE":
        return [bpy.path.abspath(strip.filepath)]
    folder = bpy.path.abspath(strip.directory)
    names = []
    for frame in frame_range(strip):
        element = strip.strip_elem_from_frame(frame)
        if element is not None and element.filename not in names:
            names.append(element.filename)
    return [os.path.join(folder, name) for name in names]


def check_strip(strip):
    """Raise ExportError when the strip cannot be stylized."""
    if strip.type in UNSUPPORTED_TYPES:
        raise ExportError(f"Strip type {strip.type.title()} is not supported: stylize image, movie, scene, "
                          f"colour, meta or effect strips")
    if strip.type in SOURCE_TYPES:
        missing = [p for p in media_paths(strip) if not os.path.isfile(p)]
        if missing:
            raise ExportError(f"Media of strip '{strip.name}' is missing: {missing[0]}")


def _media_size(strip) -> tuple:
    element = strip.elements[0] if len(strip.elements) else None
    if element is not None and element.orig_width > 0:
        return element.orig_width, element.orig_height
    image = bpy.data.images.load(media_paths(strip)[0], check_existing=False)
    try:
        return tuple(image.size)
    finally:
        bpy.data.images.remove(image)


def render_percentage(canvas_width: int, job_width: int) -> int:
    """The render percentage that gives at least ``job_width`` pixels of a ``canvas_width`` canvas."""
    return max(1, min(100, -(-100 * job_width // canvas_width)))


def _neutral_output(scene, width: int, height: int):
    """Render settings that leave pixels alone: 'Standard' view, no look, no dither, 8-bit RGB PNG."""
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    render.dither_intensity = 0.0
    render.use_compositing = False
    render.use_sequencer = True
    render.use_border = False
    render.use_stamp = False
    render.use_multiview = False
    render.use_file_extension = True
    settings = render.image_settings
    settings.file_format = "PNG"
    settings.color_mode = "RGB"
    settings.color_depth = "8"
    settings.compression = 15
    view = scene.view_settings
    view.view_transform = "Standard"
    view.look = "None"
    view.exposure = 0.0
    view.gamma = 1.0
    view.use_curve_mapping = False
    scene.display_settings.display_device = "sRGB"


def _scale_file(path: str, size: tuple):
    """Scale a PNG file in place to ``size`` (Blender's image scaling; byte pixels, no colour change)."""
    image = bpy.data.images.load(path, check_existing=False)
    try:
        if tuple(image.size) != tuple(size):
            image.scale(*size)
            image.save()
    finally:
        bpy.data.images.remove(image)


def _solo(editor, target):
    """Mute every strip that is neither the target, one of its effect inputs, a meta holding it, nor
    inside one of those."""
    keep, todo = set(), [target]
    while todo:  # the target and its effect inputs, recursively
        strip = todo.pop()
        if strip is not None and strip.name not in keep:
            keep.add(strip.name)
            todo += [getattr(strip, "input_1", None), getattr(strip, "input_2", None)]
    ancestors = set()
    meta = target.parent_meta()
    while meta is not None:
        ancestors.add(meta.name)
        meta = meta.parent_meta()
    for strip in compat.strips_all(editor):
        chain, meta = [strip.name], strip.parent_meta()
        while meta is not None:
            chain.append(meta.name)
            meta = meta.parent_meta()
        if strip.name in ancestors or any(name in keep for name in chain):
            continue
        strip.mute = True


def source_size(scene, strip, rendered: bool) -> tuple:
    """What a job scales from: the media's size for strips read from their files, else the canvas's."""
    return (scene.render.resolution_x, scene.render.resolution_y) if rendered else _media_size(strip)


def job_size(scene, strip, width: int) -> tuple:
    """The processing size a job of ``strip`` would have, without exporting anything."""
    check_strip(strip)
    return processing_size(*source_size(scene, strip, not reads_source(strip)), width)


class Exporter:
    """Writes ``frame_000001.png ...`` (1-based, in the strip's frame order) into ``folder``.

    Between steps the editor may undo, which frees the temporary scene: it is looked up by name on
    every step and built again (from the scene and strip, also by name) when it is gone."""

    def __init__(self, scene, strip, folder: str, width: int, frames=None):
        """``frames``: the scene frames to export (a preview's one), by default the strip's range."""
        check_strip(strip)
        self.scene_name, self.strip_name = scene.name, strip.name
        self.frames = list(frame_range(strip) if frames is None else frames)
        self.folder = folder
        self.paths = []
        self.rendered = not reads_source(strip)
        self.temp_name = None
        if not self.rendered:
            self.source_size = source_size(scene, strip, False)
            self.size = processing_size(*self.source_size, width)
            self.rendered = self._build(scene, strip) is None  # frames map in a way a fresh strip's do not
        if self.rendered:
            # The canvas keeps its size (strip transforms are in canvas pixels) and is rendered at the
            # smallest whole percentage that is not smaller than the job, then scaled to the processing
            # size: a 64 px job of a 4K canvas renders 4 % of it, not all of it.
            self.source_size = source_size(scene, strip, True)
            self.size = processing_size(*self.source_size, width)
            self._build(scene, strip)
        os.makedirs(folder, exist_ok=True)

    def _build(self, scene, strip):
        temp = (self._scene_copy(scene, strip) if self.rendered
                else self._source_scene(scene, strip, self.size, self.source_size))
        if temp is not None and self.rendered:
            temp.render.resolution_percentage = render_percentage(self.source_size[0], self.size[0])
        self.temp_name = temp.name if temp is not None else None
        return temp

    def _temp(self):
        temp = bpy.data.scenes.get(self.temp_name) if self.temp_name else None
        if temp is None:
            scene = bpy.data.scenes.get(self.scene_name)
            editor = scene.sequence_editor if scene else None
            strip = compat.strips_all(editor).get(self.strip_name) if editor else None
            if strip is None:
                raise ExportError(f"The strip '{self.strip_name}' was removed while it was exported")
            temp = self._build(scene, strip)
        return temp

    @property
    def done(self) -> bool:
        return len(self.paths) == len(self.frames)

    def step(self) -> str:
        """Export the next frame; returns its path."""
        path = self.export(len(self.paths) + 1)
        self.paths.append(path)
        return path

    def export(self, index: int) -> str:
        """Export frame ``index`` (1-based) of ``frames``, in any order; returns its path."""
        frame = self.frames[index - 1]
        temp = self._temp()
        # A still of the current frame, which may be negative (the scene's range may not): strips that
        # start before frame 0 export like any other.
        path = os.path.join(self.folder, f"frame_{index:06d}.png")
        temp.render.filepath = path
        with bpy.context.temp_override(scene=temp):  # else the still is of the context scene's frame
            temp.frame_set(frame)  # not frame_current, which stops at 0 unless negative frames are allowed
            bpy.ops.render.render(write_still=True, scene=temp.name)
        if self.rendered:
            _scale_file(path, self.size)
        return path

    def run(self) -> list:
        """Export every frame at once (background mode and tests)."""
        try:
            while not self.done:
                self.step()
        finally:
            self.close()
        return self.paths

    def close(self):
        temp = bpy.data.scenes.get(self.temp_name) if self.temp_name else None
        if temp is not None:
            bpy.data.scenes.remove(temp)
        self.temp_name = None

    # -- the two ways in ---------------------------------------------------------------------------

    @staticmethod
    def _source_scene(scene, strip, size, media_size):
        """A new scene, canvas = processing size, with a fresh strip of the same media and timing
        stretched over it; None if the fresh strip's frames do not line up with the strip's."""
        temp = bpy.data.scenes.new(TEMP_SCENE)
        _neutral_output(temp, *size)
        temp.render.fps, temp.render.fps_base = scene.render.fps, scene.render.fps_base
        temp.sequencer_colorspace_settings.name = "sRGB"
        collection = compat.strips(temp.sequence_editor_create())
        start = int(strip.frame_start)
        if strip.type == "IMAGE":
            first = os.path.join(bpy.path.abspath(strip.directory), strip.elements[0].filename)
            copy = collection.new_image(name=strip.name, filepath=first, channel=1, frame_start=start)
            for element in list(strip.elements)[1:]:
                copy.elements.append(element.filename)
        else:
            copy = collection.new_movie(name=strip.name, filepath=media_paths(strip)[0], channel=1,
                                        frame_start=start)
            copy.stream_index = strip.stream_index
        copy.frame_start = strip.frame_start
        for name in TIMING:
            setattr(copy, name, getattr(strip, name))
        copy.colorspace_settings.name = strip.colorspace_settings.name
        transform = copy.transform  # the media, stretched exactly over the canvas
        transform.scale_x, transform.scale_y = size[0] / media_size[0], size[1] / media_size[1]
        transform.offset_x = transform.offset_y = transform.rotation = 0.0
        if (copy.frame_final_start, copy.frame_final_end) != (strip.frame_final_start, strip.frame_final_end):
            bpy.data.scenes.remove(temp)
            return None
        return temp

    @staticmethod
    def _scene_copy(scene, strip):
        """A copy of the scene (strips, animation) with everything but the strip muted, rendering the
        canvas at 100 %."""
        temp = scene.copy()
        temp.name = TEMP_SCENE
        editor = temp.sequence_editor
        _solo(editor, compat.strips_all(editor)[strip.name])
        _neutral_output(temp, scene.render.resolution_x, scene.render.resolution_y)
        return temp


def remove_stale_scenes(keep=()):
    """Temporary scenes left by an export that was interrupted (saved mid-export, crash) or brought back
    by an undo; ``keep``: the names of those that running exports use."""
    for scene in list(bpy.data.scenes):
        if scene.name.startswith(TEMP_SCENE) and scene.name not in keep:
            bpy.data.scenes.remove(scene)
