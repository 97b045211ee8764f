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


def strip_key(scene, strip) -> str:
    """The strip's stable identity (made on first use, and made anew for a duplicate that copied it)."""
    import uuid

    key = strip.vse_style.key
    if not key:
        strip.vse_style.key = key = uuid.uuid4().hex
        return key
    others = [s for s in compat.strips_all(scene.sequence_editor) if s.vse_style.key == key and s != strip]
    if others:  # duplicates share the key: the strip the records name keeps it, the copies get new ones
        named = any(r.source_key == key and r.source == strip.name for r in scene.vse_style_jobs)
        for copy in (others if named else [strip]):
            copy.vse_style.key = uuid.uuid4().hex
    return strip.vse_style.key


def find_source(editor, record):
    """The job's source strip where it is now: by its key (it may have been renamed), else by name."""
    everything = compat.strips_all(editor)
    if record.source_key:
        keyed = [s for s in everything if s.vse_style.key == record.source_key]
        if keyed:
            return next((s for s in keyed if s.name == record.source), keyed[0])
    return everything.get(record.source)


RESULT_KEY = "result-"  # + the job record's uid: what an imported result strip carries as its key


def _result_strip(editor, record):
    """The strip a job record imported, found by its key (its name may have changed); None if gone."""
    key = RESULT_KEY + record.uid
    return next((s for s in compat.strips_all(editor) if s.vse_style.key == key), None)


def _previous_result(scene, editor, record):
    """What this import replaces: the job's own partial import, or (Replace Previous Result) the strip
    the source's latest earlier job imported. (record, strip) or None."""
    candidates = [record] if record.result else []
    if record.replace:
        candidates += sorted((r for r in scene.vse_style_jobs if r.uid != record.uid and r.result and r.source_key
                              and r.source_key == record.source_key), key=lambda r: r.created, reverse=True)
    for candidate in candidates:
        strip = _result_strip(editor, candidate)
        if strip is not None and (candidate is not record or candidate.partial):
            return candidate, strip
    return None


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


def finished_prefix(record) -> int:
    """How many frames from the first on are on disk without a gap (what a partial import can show)."""
    missing = missing_frames(record.out_dir, record.frame_count)
    return missing[0] - 1 if missing else record.frame_count


def import_result(scene, record, count: int | None = None):
    """Create the stylized strip for a job record (its first ``count`` frames; all by default); returns
    it. The source strip is not changed."""
    partial = count is not None and count < record.frame_count
    count = record.frame_count if count is None else count
    missing = missing_frames(record.out_dir, count)
    if missing:
        raise ReimportError(f"{len(missing)} of {count} stylized frames are missing in {record.out_dir} "
                            f"(first: {frame_name(missing[0])}): resume the job to fetch them")
    editor = scene.sequence_editor_create()
    source = find_source(editor, record)
    collection = compat.container_of(editor, source) if source else compat.strips(editor)
    start = record.frame_start
    if source is not None:
        record.source = source.name  # follow a rename
        if record.source_key:  # the source moved while the job ran: land over it where it is now
            start += round(source.frame_start - record.source_frame_start)
    end = start + count
    previous = _previous_result(scene, editor, record)
    if previous is not None and not any(s != previous[1] and s.channel == previous[1].channel
                                        and s.frame_final_start < end and start < s.frame_final_end
                                        for s in collection):
        channel = previous[1].channel  # chosen before anything is removed
    else:
        channel = free_channel(collection, source.channel if source else record.channel, start, end)
    if previous is not None:
        compat.container_of(editor, previous[1]).remove(previous[1])
        previous[0].result = ""
    folder = bpy.path.abspath(record.out_dir)
    name = f"{record.name} stylized" + (f" ({count} of {record.frame_count})" if partial else "")
    strip = collection.new_image(name=name, filepath=os.path.join(folder, frame_name(1)),
                                 channel=channel, frame_start=start, fit_method="STRETCH")
    for index in range(2, count + 1):
        strip.elements.append(frame_name(index))
    strip.directory = record.out_dir if record.out_dir.endswith(("/", "\\")) else record.out_dir + "/"
    if source is not None:
        if not record.rendered:  # read from the media: place it like the media, not like the canvas
            _place_like(strip, source, (record.width, record.height), tuple(record.source_size))
        copy_group(source.vse_style, strip.vse_style)
        keyframes.copy_weight_keys(scene, source, strip, len(source.vse_style.slots))
    strip.vse_style.key = RESULT_KEY + record.uid  # its own identity, not another name for the source
    record.partial = partial
    for other in compat.strips_all(editor):
        other.select = False
    strip.select = True
    editor.active_strip = strip
    record.result = strip.name
    return strip

