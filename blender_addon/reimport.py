"""Bring stylized frames back as a new image strip above the source, spanning exactly its frames."""
import os

import bpy

from . import compat, keyframes
from .props import copy_group

MAX_CHANNEL = 128


class ReimportError(Exception):
    """A message for the editor."""


def frame_name(index: int) -> str:
    return f"frame_{index:06d}.png"


def missing_frames(folder: str, count: int) -> list:
    """1-based indices of frames not yet on disk in ``folder`` (a path as stored, '//' allowed)."""
    folder = bpy.path.abspath(folder)
    return [i for i in range(1, count + 1) if not os.path.isfile(os.path.join(folder, frame_name(i)))]


def free_channel(collection, above: int, start: int, end: int) -> int:
    """The first channel above ``above`` with nothing in the scene frames [start, end)."""
    for channel in range(above + 1, MAX_CHANNEL + 1):
        if not any(s.channel == channel and s.frame_final_start < end and start < s.frame_final_end
                   for s in collection):
            return channel
    raise ReimportError(f"No free channel above channel {above} for frames {start}-{end - 1}")


def _place_like(strip, source, size, source_size):
    """Show the (processing-size) frames where the source shows its full-size media."""
    sx, sy = source_size[0] / size[0], source_size[1] / size[1]
    src, dst = source.transform, strip.transform
    dst.scale_x, dst.scale_y = src.scale_x * sx, src.scale_y * sy
    dst.offset_x, dst.offset_y, dst.rotation = src.offset_x, src.offset_y, src.rotation
    dst.origin = src.origin
    dst.filter = src.filter
    strip.use_flip_x, strip.use_flip_y = source.use_flip_x, source.use_flip_y
    for side, scale in (("min_x", sx), ("max_x", sx), ("min_y", sy), ("max_y", sy)):
        setattr(strip.crop, side, round(getattr(source.crop, side) / scale))


def import_result(scene, record):
    """Create the stylized strip for a finished job record; returns it. The source strip is not changed."""
    count = record.frame_count
    missing = missing_frames(record.out_dir, count)
    if missing:
        raise ReimportError(f"{len(missing)} of {count} stylized frames are missing in {record.out_dir} "
                            f"(first: {frame_name(missing[0])}): resume the job to fetch them")
    editor = scene.sequence_editor_create()
    source = compat.strips_all(editor).get(record.source)
    collection = compat.container_of(editor, source) if source else compat.strips(editor)
    start, end = record.frame_start, record.frame_start + count
    channel = free_channel(collection, source.channel if source else record.channel, start, end)
    folder = bpy.path.abspath(record.out_dir)
    strip = collection.new_image(name=f"{record.name} stylized", filepath=os.path.join(folder, frame_name(1)),
                                 channel=channel, frame_start=start, fit_method="STRETCH")
    for index in range(2, count + 1):
        strip.elements.append(frame_name(index))
    strip.directory = record.out_dir if record.out_dir.endswith(("/", "\\")) else record.out_dir + "/"
    if source is not None:
        if not record.rendered:  # read from the media: place it like the media, not like the canvas
            _place_like(strip, source, (record.width, record.height), tuple(record.source_size))
        copy_group(source.vse_style, strip.vse_style)
        keyframes.copy_weight_keys(scene, source, strip, len(source.vse_style.slots))
    for other in compat.strips_all(editor):
        other.select = False
    strip.select = True
    editor.active_strip = strip
    record.result = strip.name
    return strip

