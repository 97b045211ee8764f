"""Cases run inside a fresh bpy process by bpy_case.py; each returns what the test asserts on.

Media is made here (numpy PNGs, an OpenCV movie) so the cases need nothing from outside.
"""
import contextlib
import os
import sys
import time

import bpy
import cv2
import numpy as np

import bpy_case

ADDON = bpy_case.ADDON


def addon():
    return sys.modules[ADDON]


# -- helpers ---------------------------------------------------------------------------------------------

def write_pngs(folder, count, width=40, height=30, seed=0):
    """Random RGB frames with their index drawn in, as PNG files f000.png ...; returns the arrays (RGB)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(os.path.join(folder, f"f{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frames.append(rgb)
    return frames


def write_movie(path, count, width=64, height=48):
    """An MJPG movie whose frame i has a bright bar at x = 6 i and grey level 20 i (RGB arrays returned)."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
    frames = []
    for i in range(count):
        rgb = np.full((height, width, 3), 20 * i, np.uint8)
        rgb[:, 6 * i:6 * i + 6] = (255, 200, 0)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frames.append(rgb)
    writer.release()
    return frames


def write_style(path, seed=1):
    rng = np.random.default_rng(seed)
    img = (rng.integers(0, 2, (32, 32, 1)) * np.array([[[40, 200, 240]]])).astype(np.uint8)
    cv2.imwrite(path, img)
    return path


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def strips():
    return addon().compat.strips(bpy.context.scene.sequence_editor_create())


def image_strip(folder, count, name="clip", channel=1, frame_start=1):
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))[:count]
    strip = strips().new_image(name=name, filepath=os.path.join(folder, names[0]), channel=channel,
                               frame_start=frame_start)
    for n in names[1:]:
        strip.elements.append(n)
    return strip


def key(strip, index, frame, value, interpolation="LINEAR"):
    """Keyframe style weight ``index`` of ``strip`` like pressing I over the field."""
    prop = addon().props.weight_prop(index)
    setattr(strip, prop, value)
    assert strip.keyframe_insert(prop, frame=frame)
    curve = addon().compat.find_fcurve(bpy.context.scene, f"{strip.path_from_id()}.{prop}")
    for point in curve.keyframe_points:
        point.interpolation = interpolation
    return curve


def add_slots(strip, paths):
    for path in paths:
        strip.vse_style.slots.add().image = path


def save_blend(folder):
    path = os.path.join(folder, "edit.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    return path


def strip_state(strip):
    """What 'untouched' means for a source strip."""
    return {"name": strip.name, "channel": strip.channel, "frame_start": strip.frame_start,
            "final": [strip.frame_final_start, strip.frame_final_end],
            "offsets": [strip.frame_offset_start, strip.frame_offset_end], "mute": strip.mute,
            "slots": [s.image for s in strip.vse_style.slots],
            "transform": [strip.transform.scale_x, strip.transform.offset_x]}


def weight_curves(strip):
    """{slot index: [(frame, value), ...]} of the strip's weight F-curves."""
    result = {}
    for i in range(len(strip.vse_style.slots)):
        curve = addon().keyframes.weight_curve(bpy.context.scene, strip, i)
        if curve is not None:
            result[i] = [tuple(round(v, 4) for v in p.co) for p in curve.keyframe_points]
    return result


@contextlib.contextmanager
def counting_exports():
    """A list that gets one entry per frame the add-on exports while the block runs."""
    exporter_type = addon().export.Exporter
    exported, original_export = [], exporter_type.export

    def counting_export(self, index):
        exported.append(index)
        return original_export(self, index)

    exporter_type.export = counting_export
    try:
        yield exported
    finally:
        exporter_type.export = original_export


def call(operator, *args, **kwargs):
    """Run an operator; returns (result set, error message or '')."""
    try:
        return sorted(operator(*args, **kwargs)), ""
    except RuntimeError as exc:
        return [], str(exc)


# -- cases ------------------------------------------------------------------------------------------------

def register_cycle():
    import addon_utils
    bpy_case.enable()
    strip_type = addon().compat.STRIP_TYPE
    first = {"panel": hasattr(bpy.types, "VSE_STYLE_PT_stylize"),
             "operator": hasattr(bpy.ops.vse_style, "stylize") and bpy.ops.vse_style.stylize.poll(),
             "strip_props": hasattr(strip_type, "vse_style") and hasattr(strip_type, "vse_style_w15"),
             "scene_props": hasattr(bpy.types.Scene, "vse_style_jobs")}
    addon_utils.disable(ADDON, default_set=True)
    after = {"panel": hasattr(bpy.types, "VSE_STYLE_PT_stylize"),
             "strip_props": hasattr(strip_type, "vse_style") or hasattr(strip_type, "vse_style_w0"),
             "scene_props": hasattr(bpy.types.Scene, "vse_style_jobs"),
             "handlers": [h.__name__ for kind in ("load_pre", "load_post", "save_pre", "save_post", "undo_post",
                                                  "redo_post")
                          for h in getattr(bpy.app.handlers, kind) if h.__module__.startswith(ADDON)]}
    bpy_case.enable()
    again = hasattr(bpy.types, "VSE_STYLE_PT_stylize")
    return {"registered": first, "unregistered": after, "again": again, "torch": "torch" in sys.modules,
            "version": bpy.app.version_string}


def weight_sampling(tmp):
    bpy_case.enable()
    write_pngs(tmp, 10)
    strip = image_strip(tmp, 10, frame_start=20)          # frames 20..29
    strip.frame_offset_start, strip.frame_offset_end = 2, 3  # visible 22..26
    add_slots(strip, ["a.png", "b.png", "c.png"])
    key(strip, 0, 22, 0.0)
    key(strip, 0, 26, 1.0)
    strip.vse_style_w1 = 0.5                               # not animated: its static value
    curve = key(strip, 2, 22, 0.0)
    key(strip, 2, 26, 0.0)
    curve.keyframe_points[0].co[1] = -0.5                  # an F-curve may go below 0: sent as 0
    curve.update()
    sample = addon().keyframes.sample_weights
    scene = bpy.context.scene
    frames = list(addon().export.frame_range(strip))
    before = sample(scene, strip, frames)
    strip.frame_start += 10                                # moving a strip moves its keys with it
    moved_frames = list(addon().export.frame_range(strip))
    after = sample(scene, strip, moved_frames)
    return {"frames": frames, "weights": before, "moved_frames": moved_frames, "moved_weights": after}


def slot_edit(tmp):
    bpy_case.enable()
    write_pngs(tmp, 3)
    strip = image_strip(tmp, 3)
    bpy.context.scene.sequence_editor.active_strip = strip
    add_slots(strip, ["a.png", "b.png", "c.png"])
    for i in range(3):
        key(strip, i, 1, 0.1 * (i + 1))
        key(strip, i, 3, 0.2 * (i + 1))
    strip.vse_style.active_slot = 1
    bpy.ops.vse_style.slot_remove()
    removed = {"slots": [s.image for s in strip.vse_style.slots], "curves": weight_curves(strip),
               "stale": addon().compat.find_fcurve(bpy.context.scene,
                                                   f"{strip.path_from_id()}.vse_style_w2") is not None}
    strip.vse_style.active_slot = 1
    bpy.ops.vse_style.slot_move(direction="UP")
    moved = {"slots": [s.image for s in strip.vse_style.slots], "curves": weight_curves(strip),
             "active": strip.vse_style.active_slot}
    style = write_style(os.path.join(tmp, "style.png"))
    bpy.ops.vse_style.slot_add(filepath=style)
    added = {"slots": len(strip.vse_style.slots), "weight": strip.vse_style_w2, "active": strip.vse_style.active_slot}
    return {"removed": removed, "moved": moved, "added": added}


def export_image(tmp):
    bpy_case.enable()
    frames = write_pngs(os.path.join(tmp, "src"), 6)
    strip = image_strip(os.path.join(tmp, "src"), 6, frame_start=5)  # frames 5..10
    strip.frame_offset_start, strip.frame_offset_end = 1, 2            # visible 6..8: elements 1..3
    strip.transform.scale_x, strip.use_flip_x = 2.0, True              # placement is not baked in
    scene = bpy.context.scene
    view = scene.view_settings.view_transform
    Exporter = addon().export.Exporter
    full = Exporter(scene, strip, os.path.join(tmp, "full"), 0)
    full_paths = full.run()
    small = Exporter(scene, strip, os.path.join(tmp, "small"), 24)
    small_paths = small.run()
    bpy.ops.ed.undo_push(message="before export")
    interrupted = Exporter(scene, strip, os.path.join(tmp, "undone"), 0)
    interrupted.step()
    bpy.ops.ed.undo_push(message="editing meanwhile")
    bpy.ops.ed.undo()  # back to before the export started: its temporary scene is gone
    temp_gone = bpy.data.scenes.get(interrupted.temp_name) is None
    undone_paths = interrupted.run()
    scene = bpy.context.scene  # (the undo freed the old pointers)
    ended = Exporter(scene, addon().compat.strips_all(scene.sequence_editor)["clip"], os.path.join(tmp, "ended"), 0)
    ended.step()
    bpy.ops.ed.undo_push(message="while it runs")
    ended.run()
    bpy.ops.ed.undo_push(message="after it ended")
    bpy.ops.ed.undo()  # back to while it ran: its temporary scene must not come back with it
    stray = [s.name for s in bpy.data.scenes if s.name.startswith(addon().export.TEMP_SCENE)]
    def max_diff(paths):  # against source elements 1..3 (the trimmed range)
        return [int(np.abs(read_rgb(p).astype(int) - frames[i + 1]).max()) for i, p in enumerate(paths)]

    return {"temp_gone": temp_gone, "undone_diff": max_diff(undone_paths), "stray_after_undo": stray,
            "rendered": full.rendered, "size": list(full.size), "small_size": list(small.size),
            "names": [os.path.basename(p) for p in full_paths], "max_diff": max_diff(full_paths),
            "small_shape": list(read_rgb(small_paths[0]).shape),
            "view_transform_kept": bpy.context.scene.view_settings.view_transform == view,
            "scenes": len(bpy.data.scenes)}


def export_before_frame_zero(tmp):
    """A strip that starts at frame -3, read from its files and rendered (a modifier): which source frame
    each exported frame is (the render stopped at frame 0, then failed with FileNotFoundError)."""
    bpy_case.enable()
    frames = write_pngs(os.path.join(tmp, "src"), 6)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 40, 30  # the canvas of the rendered way
    strip = image_strip(os.path.join(tmp, "src"), 6, frame_start=-3)  # frames -3..2
    Exporter = addon().export.Exporter

    def nearest(path):
        pixels = read_rgb(path).astype(int)
        return int(np.argmin([np.abs(pixels - frame).mean() for frame in frames]))

    result = {"frames": list(Exporter(scene, strip, os.path.join(tmp, "probe"), 0).frames)}
    for way in ("source", "rendered"):
        if way == "rendered":
            strip.modifiers.new(name="bc", type="BRIGHT_CONTRAST").bright = 0.0
        exporter = Exporter(scene, strip, os.path.join(tmp, way), 0)
        result[way] = {"rendered": exporter.rendered, "shown": [nearest(p) for p in exporter.run()]}
    return result


def export_movie(tmp):
    """An OpenCV-made movie, started at frame 3 and trimmed: which source frames come out, and how exactly."""
    bpy_case.enable()
    movie = os.path.join(tmp, "clip.avi")
    write_movie(movie, 8)
    reference = []
    capture = cv2.VideoCapture(movie)
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        reference.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    strip = strips().new_movie(name="movie", filepath=movie, channel=1, frame_start=3)
    strip.frame_offset_start, strip.frame_offset_end = 2, 1
    visible = list(addon().export.frame_range(strip))
    exporter = addon().export.Exporter(bpy.context.scene, strip, os.path.join(tmp, "out"), 32)
    paths = exporter.run()
    size = tuple(exporter.size)
    matches, diffs = [], []
    for path in paths:  # which source frame does each exported frame look like?
        image = read_rgb(path).astype(float)
        errors = [np.abs(image - cv2.resize(ref, size, interpolation=cv2.INTER_AREA)).mean() for ref in reference]
        matches.append(int(np.argmin(errors)))
        diffs.append(float(min(errors)))
    return {"rendered": exporter.rendered, "visible": visible, "size": list(size), "matches": matches,
            "mean_diff": diffs, "source_frames": len(reference)}


def export_footage(tmp, movie):
    """Real footage, trimmed to 4 frames deep inside: the export equals what the Sequencer shows there
    (the scene rendered at the movie's size with the 'Standard' view)."""
    bpy_case.enable()
    scene = bpy.context.scene
    strip = strips().new_movie(name="footage", filepath=movie, channel=1, frame_start=-7)
    strip.frame_offset_start = 50
    strip.frame_offset_end = strip.frame_duration - 54
    visible = list(addon().export.frame_range(strip))
    exporter = addon().export.Exporter(scene, strip, os.path.join(tmp, "out"), 0)
    paths = exporter.run()
    width, height = exporter.size
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    scene.view_settings.view_transform, scene.render.dither_intensity = "Standard", 0.0
    scene.render.image_settings.color_mode = "RGB"
    scene.frame_start, scene.frame_end = visible[0], visible[-1]
    scene.render.filepath = os.path.join(tmp, "shown", "f_")
    bpy.ops.render.render(animation=True)
    diffs = [float(np.abs(read_rgb(p).astype(int) - read_rgb(scene.render.frame_path(frame=f))).mean())
             for p, f in zip(paths, visible)]
    neighbours = [float(np.abs(read_rgb(a).astype(int) - read_rgb(b)).mean()) for a, b in zip(paths, paths[1:])]
    return {"rendered": exporter.rendered, "visible": visible, "size": [width, height], "diffs": diffs,
            "neighbour_diffs": neighbours}


def export_rendered(tmp):
    """Strips that are rendered through the sequencer: colour, scene, and a movie with a modifier."""
    bpy_case.enable()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 48, 100
    compat = addon().compat
    colour = compat.new_effect(strips(), "colour", "COLOR", channel=2, frame_start=1, length=4)
    colour.color = (0.5, 0.25, 1.0)
    cover = compat.new_effect(strips(), "cover", "COLOR", channel=3, frame_start=1, length=4)
    cover.color = (0.0, 1.0, 0.0)  # above the colour strip: muted for its export
    other = bpy.data.scenes.new("Other")
    inner = compat.new_effect(compat.strips(other.sequence_editor_create()), "inner", "COLOR", channel=1,
                              frame_start=1, length=10)
    inner.color = (1.0, 0.5, 0.0)
    scene_strip = strips().new_scene(name="shot", scene=other, channel=4, frame_start=10)
    scene_strip.scene_input = "SEQUENCER"
    movie = os.path.join(tmp, "clip.avi")
    write_movie(movie, 4)
    graded = strips().new_movie(name="graded", filepath=movie, channel=5, frame_start=20)
    graded.modifiers.new(name="bc", type="BRIGHT_CONTRAST").bright = 0.0
    view, count = scene.view_settings.view_transform, len(bpy.data.scenes)
    Exporter = addon().export.Exporter
    result = {}
    for strip in (colour, scene_strip, graded):
        exporter = Exporter(scene, strip, os.path.join(tmp, strip.name), 32)
        percentage = exporter._temp().render.resolution_percentage
        paths = exporter.run()
        pixels = read_rgb(paths[0]).reshape(-1, 3)
        result[strip.name] = {"rendered": exporter.rendered, "count": len(paths), "size": list(exporter.size),
                              "percentage": percentage,
                              "min": pixels.min(0).tolist(), "max": pixels.max(0).tolist()}
    result["view_transform_kept"] = scene.view_settings.view_transform == view
    result["scenes_left"] = len(bpy.data.scenes) - count
    result["cover_muted_after"] = cover.mute
    return result


def _finished_job(tmp, count_frames=5):
    """A saved file with a trimmed source strip, keyed weights, a strip in the way on the channel above,
    and a job record whose stylized frames are on disk (as the engine would have left them)."""
    bpy_case.enable()
    write_pngs(os.path.join(tmp, "src"), 8)
    save_blend(tmp)
    scene = bpy.context.scene
    source = image_strip(os.path.join(tmp, "src"), 8, name="shot", channel=2, frame_start=9)  # 9..16
    source.frame_offset_start, source.frame_offset_end = 2, 1                                   # 11..15
    addon().compat.new_effect(strips(), "title", "COLOR", channel=3, frame_start=14, length=5)  # in the way
    addon().compat.new_effect(strips(), "later", "COLOR", channel=4, frame_start=30, length=5)  # not in the way
    write_style(os.path.join(tmp, "a.png"), 1)
    write_style(os.path.join(tmp, "b.png"), 2)
    add_slots(source, ["//a.png", "//b.png"])
    key(source, 0, 11, 1.0)
    key(source, 0, 15, 0.0)
    key(source, 1, 11, 0.0, "BEZIER")
    key(source, 1, 15, 1.0, "BEZIER")
    record = scene.vse_style_jobs.add()
    record.uid, record.job_id, record.name, record.source, record.state = "u1", "job1", "shot", "shot", "done"
    record.frame_start, record.frame_count, record.channel = 11, count_frames, 2
    record.out_dir, record.width, record.height = "//stylized/shot/u1/", 20, 15
    record.source_size, record.rendered = (40, 30), False
    out = bpy.path.abspath(record.out_dir)
    os.makedirs(out)
    for i, rgb in enumerate(write_pngs(os.path.join(tmp, "fake"), count_frames, 20, 15, seed=5), 1):
        cv2.imwrite(os.path.join(out, f"frame_{i:06d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return scene, source, record


def reimport(tmp):
    scene, source, record = _finished_job(tmp)
    before = strip_state(source)
    source_curves = weight_curves(source)
    names_before = sorted(s.name for s in strips())
    bpy.ops.ed.undo_push(message="before import")
    result, error = call(bpy.ops.vse_style.job_import, "EXEC_DEFAULT", True, uid="u1")  # as from a button
    scene = bpy.context.scene
    editor = scene.sequence_editor
    new = addon().compat.strips_all(editor).get(scene.vse_style_jobs[0].result)
    source = addon().compat.strips_all(editor)["shot"]
    sample = addon().keyframes.sample_weights
    frames = list(range(11, 16))
    report = {"result": result, "error": error, "name": new.name, "type": new.type, "channel": new.channel,
              "range": [new.frame_final_start, new.frame_final_end], "directory": new.directory,
              "elements": [e.filename for e in new.elements],
              "scale": [round(new.transform.scale_x, 4), round(new.transform.scale_y, 4)],
              "source_curves": source_curves, "new_curves": weight_curves(new),
              "slots": [s.image for s in new.vse_style.slots],
              "weights_source": sample(scene, source, frames), "weights_new": sample(scene, new, frames),
              "source_before": before, "source_after": strip_state(source), "active": editor.active_strip.name}
    bpy.ops.ed.undo()
    report["after_undo"] = sorted(s.name for s in strips())
    bpy.ops.ed.redo()
    report["after_redo"] = sorted(s.name for s in strips())
    report["names_before"] = names_before
    return report


def reimport_missing_frames(tmp):
    scene, source, record = _finished_job(tmp)
    os.remove(os.path.join(bpy.path.abspath(record.out_dir), "frame_000003.png"))
    record.state = "failed"  # nothing to resume from: a clear message, no strip
    result, error = call(bpy.ops.vse_style.job_import, uid="u1")
    return {"result": result, "error": error, "strips": sorted(s.name for s in strips())}


def jobs_persist(tmp):
    scene, source, record = _finished_job(tmp)
    running = scene.vse_style_jobs.add()
    running.uid, running.job_id, running.name, running.state, running.frame_count = "u2", "job2", "shot", "running", 5
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=bpy.data.filepath)
    scene = bpy.context.scene
    jobs = addon().jobs
    source = addon().compat.strips_all(scene.sequence_editor)["shot"]
    return {"records": [{"uid": r.uid, "job_id": r.job_id, "state": jobs.display_state(r), "out_dir": r.out_dir,
                         "frames": [r.frame_start, r.frame_count], "size": [r.width, r.height]}
                        for r in scene.vse_style_jobs],
            "slots": [s.image for s in source.vse_style.slots], "curves": weight_curves(source)}


def stylize_errors(tmp, free_port):
    """Every way Stylize can refuse, each with its message (RuntimeError text of bpy.ops) and no traceback."""
    prefs = bpy_case.enable()
    scene = bpy.context.scene
    stylize = bpy.ops.vse_style.stylize
    messages = {}
    messages["no_strip"] = call(stylize)[1]
    import wave
    sound_path = os.path.join(tmp, "tone.wav")
    with wave.open(sound_path, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 8000)
    style = write_style(os.path.join(tmp, "style.png"))
    try:
        sound = strips().new_sound(name="tone", filepath=sound_path, channel=1, frame_start=1)
    except RuntimeError:  # the bpy 4.2 wheel has no audio support
        messages["sound"] = None
    else:
        sound.vse_style.slots.add().image = style
        scene.sequence_editor.active_strip = sound
        messages["sound"] = call(stylize)[1]
    write_pngs(os.path.join(tmp, "src"), 3)
    strip = image_strip(os.path.join(tmp, "src"), 3, channel=2)
    scene.sequence_editor.active_strip = strip
    messages["no_styles"] = call(stylize)[1]
    strip.vse_style.slots.add().image = os.path.join(tmp, "nowhere.jpg")
    messages["style_missing"] = call(stylize)[1]
    not_an_image = os.path.join(tmp, "notes.png")
    with open(not_an_image, "w") as handle:
        handle.write("a text file named like a picture")
    strip.vse_style.slots[0].image = not_an_image
    messages["style_not_image"] = call(stylize)[1]
    messages["slot_add_missing"] = call(bpy.ops.vse_style.slot_add, filepath=os.path.join(tmp, "nowhere.jpg"))[1]
    messages["slot_add_not_image"] = call(bpy.ops.vse_style.slot_add, filepath=not_an_image)[1]
    slots_after_refused_adds = len(strip.vse_style.slots)
    strip.vse_style.slots[0].image = style
    messages["unsaved"] = call(stylize)[1]
    save_blend(tmp)
    with counting_exports() as exported:
        prefs.engine_mode, prefs.python = "LOCAL", ""
        messages["no_python"] = call(stylize)[1]
        bare = "/usr/bin/python3"  # a Python without the engine (issue 12.7), where the system has one
        if os.path.isfile(bare):
            prefs.python, prefs.port, prefs.jobs_dir = bare, free_port, os.path.join(tmp, "bare-jobs")
            messages["python_without_engine"] = [call(stylize)[1] for _ in range(2)]
        prefs.python = ""
        prefs.engine_mode, prefs.address, prefs.timeout = "REMOTE", f"tcp://127.0.0.1:{free_port}", 1.0
        started = time.monotonic()
        messages["engine_down"] = call(stylize)[1]
        seconds = time.monotonic() - started
        test = call(bpy.ops.vse_style.test_connection)
    records = [(r.state, r.error) for r in bpy.context.scene.vse_style_jobs]
    return {"messages": messages, "records": records, "engine_down_seconds": seconds, "version": bpy.app.version[:2],
            "exported_frames": len(exported), "slots_after_refused_adds": slots_after_refused_adds,
            "test_connection": test[1], "status": prefs.status,
            "temp_scenes": [s.name for s in bpy.data.scenes if s.name.startswith(".vse_style")]}


# -- with a real engine ------------------------------------------------------------------------------------

def _clip_scene(tmp, width=48, height=36):
    """A saved file: 5 source PNGs on channel 1 from frame 5, trimmed to frames 6..8, two styles (the
    first keyed 1 -> 0, the second fixed at 0.5), a colour strip on channel 2 over frames 7..11."""
    frames = write_pngs(os.path.join(tmp, "src"), 5, width, height)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    source = image_strip(os.path.join(tmp, "src"), 5, name="shot", channel=1, frame_start=5)
    source.frame_offset_start, source.frame_offset_end = 1, 1
    addon().compat.new_effect(strips(), "title", "COLOR", channel=2, frame_start=7, length=5)
    add_slots(source, [write_style(os.path.join(tmp, "s1.png"), 1), write_style(os.path.join(tmp, "s2.png"), 2)])
    key(source, 0, 6, 1.0)
    key(source, 0, 8, 0.0)
    source.vse_style_w1 = 0.5
    options = source.vse_style
    options.width, options.iterations = width, 2
    scene.sequence_editor.active_strip = source
    save_blend(tmp)
    return scene, source, frames


def _job_dir(jobs_dir, job_id):
    import json
    path = os.path.join(jobs_dir, job_id, "job.json")
    with open(path) as handle:
        return json.load(handle)


def _new_strip_report(scene, record):
    editor = scene.sequence_editor
    compat = addon().compat
    new = compat.strips_all(editor).get(record.result) if record.result else None
    folder = bpy.path.abspath(record.out_dir)
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    source = compat.strips_all(editor)["shot"]
    return {"state": record.state, "error": record.error, "job_id": record.job_id, "result": record.result,
            "channel": new.channel if new else None,
            "range": [new.frame_final_start, new.frame_final_end] if new else None,
            "files": files, "shape": list(read_rgb(os.path.join(folder, files[0])).shape) if files else None,
            "source": strip_state(source), "source_curves": weight_curves(source),
            "new_curves": weight_curves(new) if new else None,
            "strips": sorted(s.name for s in compat.strips(editor))}


def roundtrip_local(tmp, port):
    """Stylize in background mode with a Local engine the add-on starts itself."""
    prefs = bpy_case.enable()
    prefs.engine_mode, prefs.python, prefs.port = "LOCAL", sys.executable, port
    prefs.jobs_dir, prefs.timeout = os.path.join(tmp, "jobs"), 30.0
    scene, source, frames = _clip_scene(tmp)
    source.vse_style.style_strength = 2.0  # twice the engine's style weight
    source.vse_style.start = "content"  # the reference's start, sent as the engine's init
    before = strip_state(source)
    test = call(bpy.ops.vse_style.test_connection)
    status = prefs.status
    started = time.monotonic()
    result, error = call(bpy.ops.vse_style.stylize)
    seconds = time.monotonic() - started
    record = scene.vse_style_jobs[0]
    report = _new_strip_report(scene, record)
    job = _job_dir(prefs.jobs_dir, record.job_id)
    inputs = os.path.join(prefs.jobs_dir, record.job_id, "input")
    pid = addon().engine_link.local_pid()
    prefs.timeout = 31.0  # a new timeout is no reason to restart the engine
    retested = call(bpy.ops.vse_style.test_connection)
    report.update(pid_kept=pid is not None and addon().engine_link.local_pid() == pid, retested=retested)
    report.update(op=result, op_error=error, seconds=seconds, test_connection=test, status=status,
                  before=before, weights=job["spec"]["weights"], options=job["spec"]["options"],
                  size=[job["spec"]["width"], job["spec"]["height"]], name=job["spec"].get("name"),
                  inputs_equal=[bool(np.array_equal(read_rgb(os.path.join(inputs, f"frame_{i:06d}.png")), frames[i]))
                                for i in (1, 2, 3)],
                  engine_pid=addon().engine_link.local_pid(), torch="torch" in sys.modules,
                  temp_scenes=[s.name for s in bpy.data.scenes if s.name.startswith(".vse_style")])
    return report


def _remote(prefs, address):
    prefs.engine_mode, prefs.address, prefs.timeout = "REMOTE", address, 20.0


def _tick_until(predicate, timeout=120.0):
    jobs = addon().jobs
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        jobs.tick(0.05)
        if predicate():
            return True
        time.sleep(0.01)
    return False


def cancel(tmp, address):
    """The UI path (timer-driven tick) with a long job, cancelled once it runs."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    source.vse_style.iterations = 500
    result, error = call(bpy.ops.vse_style.stylize, wait=False)
    jobs = addon().jobs
    record = lambda: bpy.context.scene.vse_style_jobs[0]  # noqa: E731 (RNA pointers go stale)
    running = _tick_until(lambda: record().progress_text.startswith("Frame "))
    progress_text = record().progress_text
    started = time.monotonic()
    cancelled = call(bpy.ops.vse_style.cancel, uid=record().uid)
    ended = _tick_until(lambda: not jobs.busy(), timeout=60)
    seconds = time.monotonic() - started
    client = addon().engine_link.client_module().EngineClient(address, timeout=10)
    job_id, token = record().job_id, record().token
    try:
        engine_state = client.status(job_id, token=token)["state"]
        report = _new_strip_report(bpy.context.scene, record())
        removed = call(bpy.ops.vse_style.job_remove, uid=record().uid, wait=False)  # and its files on the engine
        _tick_until(lambda: not jobs.busy(), timeout=30)  # (the UI's way: asked on a worker thread)
        try:
            after_remove = client.status(job_id, token=token)["state"]
        except addon().engine_link.client_module().EngineError as exc:
            after_remove = exc.code
    finally:
        client.close()
    report.update(op=result, op_error=error, running=running, progress_text=progress_text, cancelled=cancelled,
                  ended=ended, seconds=seconds, engine_state=engine_state, removed=removed,
                  after_remove=after_remove, rows_after=len(bpy.context.scene.vse_style_jobs))
    return report


def estimate_and_guard(tmp, address):
    """Issue 12.4: an estimate before starting; a size the engine cannot take refused before any export."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    estimated = call(bpy.ops.vse_style.estimate)
    text = addon().jobs.estimates.get("shot", "")
    stylized = call(bpy.ops.vse_style.stylize)
    summary = scene.vse_style_jobs[-1].summary if len(scene.vse_style_jobs) else ""
    rows = len(scene.vse_style_jobs)
    source = strips()["shot"]
    scene.sequence_editor.active_strip = source
    source.vse_style.width = 8192  # 8192x6144: more pixels than the engine takes
    too_big_estimate = call(bpy.ops.vse_style.estimate)
    with counting_exports() as exported:
        too_big = call(bpy.ops.vse_style.stylize)
    return {"estimated": estimated, "text": text, "stylized": stylized, "summary": summary,
            "too_big_estimate": too_big_estimate, "too_big": too_big, "exported": len(exported),
            "rows_before": rows, "rows_after": len(scene.vse_style_jobs)}


def engine_requests_off_the_main_thread(tmp, address, free_port):
    """In the UI, Estimate, Continue and Remove Job ask the engine on a worker thread (a Local engine may
    take minutes to start): the operator returns at once and the answer comes as a message in tick()."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    jobs = addon().jobs
    messages = []
    jobs.notify = lambda message, level="INFO": messages.append([level, message])
    started = time.monotonic()
    estimated = call(bpy.ops.vse_style.estimate, wait=False)
    report = {"estimated": estimated, "returned_after": time.monotonic() - started,
              "text_at_return": jobs.estimates.get("shot", "")}
    report["answered"] = _tick_until(lambda: messages, timeout=30)
    report["messages"], report["text"] = list(messages), jobs.estimates.get("shot", "")
    messages.clear()
    prefs.address, prefs.timeout = f"tcp://127.0.0.1:{free_port}", 2.0  # nothing listens there
    started = time.monotonic()
    report["unreachable"] = call(bpy.ops.vse_style.estimate, wait=False)
    report["unreachable_returned_after"] = time.monotonic() - started
    _tick_until(lambda: messages, timeout=30)
    report["unreachable_messages"] = list(messages)
    return report


def scope(tmp, address):
    """Issue 12.5: a preview range, then replacing the previous result, then two selected strips."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)  # "shot": frames 6..8
    editor = scene.sequence_editor
    everything = lambda: addon().compat.strips_all(editor)  # noqa: E731
    report = {}

    def result_of(record):
        strip = everything().get(record.result)
        return [strip.frame_final_start, strip.frame_final_end, strip.channel] if strip else None

    scene.use_preview_range, scene.frame_preview_start, scene.frame_preview_end = True, 7, 20
    source.vse_style.frame_range = "PREVIEW"
    report["ranged"] = call(bpy.ops.vse_style.stylize)
    ranged = scene.vse_style_jobs[-1]
    report["ranged_job"] = [ranged.frame_count, ranged.frame_start, result_of(ranged), ranged.summary]
    source = everything()["shot"]
    source.vse_style.frame_range = "STRIP"
    source.vse_style.replace_result = True
    editor.active_strip = source  # the import made its result the active strip
    report["replaced"] = call(bpy.ops.vse_style.stylize)
    replacing = scene.vse_style_jobs[-1]
    report["replacing_job"] = result_of(replacing)
    shot_result = replacing.result
    report["old_result_left"] = ranged.result
    report["stylized_strips"] = sorted(s.name for s in everything() if "stylized" in s.name)
    # a second strip with a painting of its own; both selected
    second = image_strip(os.path.join(tmp, "src"), 3, name="second", channel=5, frame_start=30)
    add_slots(second, [write_style(os.path.join(tmp, "s3.png"), 3)])
    second.vse_style.width, second.vse_style.iterations = 32, 2
    for strip in everything():  # and shot's result above it, as a box selection takes it along
        strip.select = strip.name in ("shot", "second", shot_result)
    before = len(scene.vse_style_jobs)
    report["both"] = call(bpy.ops.vse_style.stylize_selected)
    report["both_jobs"] = sorted((r.name, r.state, r.frame_count) for r in list(scene.vse_style_jobs)[before:])
    return report


def _slow_job_past_its_first_frame(tmp, address):
    """_clip_scene's job with frames 2 and 3 taking seconds each, started the UI's way (the timer ticks)
    and followed until frame 1 is on disk: (prefs, scene, the job's record getter, whether it got there)."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    source.vse_style.iterations = 50
    call(bpy.ops.vse_style.stylize, wait=False)
    record = lambda: bpy.context.scene.vse_style_jobs[0]  # noqa: E731 (RNA pointers go stale)
    return prefs, scene, record, _tick_until(lambda: record().finished >= 1)


def cancel_import_continue(tmp, address):
    """Issue 12.2: after a cancel, import the finished frames, then continue the job to its end."""
    prefs, scene, record, first_frame = _slow_job_past_its_first_frame(tmp, address)  # the cancel lands after it
    jobs = addon().jobs
    cancelled = call(bpy.ops.vse_style.cancel, uid=record().uid)
    _tick_until(lambda: not jobs.busy(), timeout=60)
    state, finished = record().state, record().finished
    first = os.path.join(bpy.path.abspath(record().out_dir), "frame_000001.png")
    stamp = os.stat(first).st_mtime_ns
    partial = call(bpy.ops.vse_style.job_import_finished, uid=record().uid)
    editor = scene.sequence_editor
    part = addon().compat.strips_all(editor).get(record().result)
    part_report = {"name": part.name, "range": [part.frame_final_start, part.frame_final_end]} if part else None
    continued = call(bpy.ops.vse_style.job_continue, uid=record().uid, wait=False)
    done = _tick_until(lambda: not jobs.busy())
    report = _new_strip_report(scene, record())
    names = sorted(s.name for s in strips())
    report["stylized_after_continue"] = [s.name for s in strips() if "stylized" in s.name]
    again = call(bpy.ops.vse_style.job_resume, uid=record().uid)  # finished and imported: no second copy
    report.update(first_frame=first_frame, cancelled=cancelled, cancelled_state=state, finished_at_cancel=finished,
                  partial=partial, part=part_report, continued=continued, done=done,
                  first_kept=os.stat(first).st_mtime_ns == stamp, again=again,
                  strips_unchanged=names == sorted(s.name for s in strips()))
    return report


def saved_elsewhere(tmp, address):
    """Save As into another folder while the job runs, then Save Copy into a third: the frames stay in one
    folder, and every file's record reaches them (its '//' path was re-resolved beside the new file)."""
    prefs, scene, record, first_frame = _slow_job_past_its_first_frame(tmp, address)  # the save lands after it
    jobs = addon().jobs
    folder = bpy.path.abspath(record().out_dir)
    finished_at_save = record().finished
    os.makedirs(os.path.join(tmp, "moved"))
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(tmp, "moved", "edit.blend"))
    out_dir_after_save = record().out_dir
    done = _tick_until(lambda: not jobs.busy())
    report = _new_strip_report(bpy.context.scene, record())
    strip = addon().compat.strips_all(bpy.context.scene.sequence_editor).get(record().result)
    report.update(first_frame=first_frame, finished_at_save=finished_at_save, out_dir_after_save=out_dir_after_save,
                  done=done, same_folder=os.path.samefile(bpy.path.abspath(record().out_dir), folder),
                  strip_folder_same=bool(strip) and os.path.samefile(bpy.path.abspath(strip.directory), folder),
                  files_at_folder=sorted(os.listdir(folder)),
                  beside_new_file=os.path.exists(os.path.join(tmp, "moved", "stylized")))
    os.makedirs(os.path.join(tmp, "copy"))
    kept = record().out_dir
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(tmp, "copy", "edit.blend"), copy=True)
    report["kept_after_copy"] = record().out_dir == kept
    bpy.ops.wm.open_mainfile(filepath=os.path.join(tmp, "copy", "edit.blend"))
    copied = bpy.context.scene.vse_style_jobs[0]
    report["copy_out_dir"] = copied.out_dir
    report["copy_same_folder"] = os.path.samefile(bpy.path.abspath(copied.out_dir), folder)
    return report


def settings_changed_mid_job(tmp, address, free_port):
    """The preferences change while a job runs: a new timeout keeps the connection, another engine address
    applies to what starts next, and the running job finishes on the engine it started on."""
    prefs, scene, record, running = _slow_job_past_its_first_frame(tmp, address)
    link, jobs = addon().engine_link, addon().jobs
    settings = lambda: link.Settings.from_prefs(prefs)  # noqa: E731 (as each operator takes them)
    client, _welcome = link.connect(settings())
    prefs.timeout = 33.0
    same, _welcome = link.connect(settings())
    report = {"same_client": same is client, "timeout": client.timeout, "running": running}
    prefs.address, prefs.timeout = f"tcp://127.0.0.1:{free_port}", 1.0  # nothing listens there
    report["elsewhere"] = call(bpy.ops.vse_style.estimate)
    report["done"] = _tick_until(lambda: not jobs.busy())
    report.update(state=record().state, error=record().error, finished=record().finished,
                  old_client_closed=client.socket.closed)
    return report


def frames_lost(tmp, address):
    """Frame 2 never reaches the disk: the run asks the engine for it once more, then ends 'done' with a
    message, and Re-import fetches it (before, the job failed and Re-import refused a failed job)."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    Run = addon().jobs.Run
    write, dropped = Run._write_frame, []

    def losing_frame_two(self, index, data):
        if index == 2:
            dropped.append(index)
            return
        write(self, index, data)

    Run._write_frame = losing_frame_two
    try:
        stylized = call(bpy.ops.vse_style.stylize, wait=False)
        jobs = addon().jobs
        record = lambda: bpy.context.scene.vse_style_jobs[0]  # noqa: E731
        ended = _tick_until(lambda: not jobs.busy())
    finally:
        Run._write_frame = write
    report = {"stylized": stylized, "ended": ended, "dropped": len(dropped), "state": record().state,
              "error": record().error, "imported": record().result,
              "files": sorted(os.listdir(bpy.path.abspath(record().out_dir)))}
    report["reimported"] = call(bpy.ops.vse_style.job_import, uid=record().uid, wait=False)
    report["reimport_ended"] = _tick_until(lambda: not jobs.busy())
    report["after"] = _new_strip_report(bpy.context.scene, record())
    return report


def moved_and_renamed(tmp, address):
    """Issue 12.1: the source is moved by 100 frames and renamed while its job runs."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    call(bpy.ops.vse_style.stylize, wait=False)
    jobs = addon().jobs
    record = lambda: bpy.context.scene.vse_style_jobs[0]  # noqa: E731
    submitted = _tick_until(lambda: record().state in ("queued", "running", "done"))
    twice = call(bpy.ops.vse_style.stylize, wait=False)  # a second press on the same strip (issue 12.7)
    source = strips()["shot"]
    source.frame_start += 100
    source.name = "moved shot"
    key(source, 0, 106, 1.0)  # keys where the strip is now
    key(source, 0, 108, 0.0)
    finished = _tick_until(lambda: not jobs.busy())
    editor = scene.sequence_editor
    source = addon().compat.strips_all(editor)["moved shot"]
    new = addon().compat.strips_all(editor).get(record().result)
    return {"submitted": submitted, "twice": twice, "rows": len(scene.vse_style_jobs),
            "finished": finished, "state": record().state, "error": record().error,
            "source_range": [source.frame_final_start, source.frame_final_end], "source_channel": source.channel,
            "range": [new.frame_final_start, new.frame_final_end] if new else None,
            "channel": new.channel if new else None, "record_source": record().source,
            "slots": [s.image for s in new.vse_style.slots] if new else None,
            "source_slots": [s.image for s in source.vse_style.slots],
            "new_curves": weight_curves(new) if new else None, "source_curves": weight_curves(source),
            "keys_differ": bool(new) and new.vse_style.key != source.vse_style.key}


def reattach(tmp, address):
    """Submit, close the file mid-job, reopen it once the engine has finished, then resume the job."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    call(bpy.ops.vse_style.stylize, wait=False)
    jobs = addon().jobs
    record = lambda: bpy.context.scene.vse_style_jobs[0]  # noqa: E731
    uploaded = _tick_until(lambda: record().state in ("queued", "running"))
    uid, job_id, token = record().uid, record().job_id, record().token
    assert len(token) >= 16, "the record keeps the token its job was submitted with"
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=bpy.data.filepath)  # the runs end with the old file
    state_after_reload = jobs.display_state(record())
    busy_after_reload = jobs.busy()
    client = addon().engine_link.client_module().EngineClient(address, timeout=10)
    try:
        end = time.monotonic() + 120
        while client.status(job_id, token=token)["state"] != "done" and time.monotonic() < end:
            time.sleep(0.1)
        engine_state = client.status(job_id, token=token)["state"]
    finally:
        client.close()
    import shutil
    shutil.rmtree(bpy.path.abspath(record().out_dir), ignore_errors=True)  # frames come from the engine
    names_before = sorted(s.name for s in strips())
    bpy.ops.ed.undo_push(message="before resume")
    resumed = call(bpy.ops.vse_style.job_resume, uid=uid, wait=False)  # the UI's way: the timer ticks
    finished = _tick_until(lambda: not jobs.busy())
    report = _new_strip_report(bpy.context.scene, record())
    bpy.ops.ed.undo()  # the import is one undo step of its own
    after_undo = sorted(s.name for s in strips())
    report.update(uploaded=uploaded, state_after_reload=state_after_reload, busy_after_reload=busy_after_reload,
                  engine_state=engine_state, resumed=resumed, finished=finished, same_job=record().job_id == job_id,
                  names_before=names_before, after_undo=after_undo)
    return report


@contextlib.contextmanager
def _upload_stalled_after_frame_one():
    """Uploads send one frame and then nothing while the block runs (as if Blender had closed)."""
    Upload = addon().engine_link.client_module().Upload
    send_some = Upload._send_some

    def stalling(self, deadline):
        if self.state == "uploading" and (self.acked or self._in_flight):
            return
        self.window = 1
        send_some(self, deadline)

    Upload._send_some = stalling
    try:
        yield
    finally:
        Upload._send_some = send_some


def _stylize_until_frame_one_is_uploaded():
    call(bpy.ops.vse_style.stylize, wait=False)
    record = lambda: bpy.context.scene.vse_style_jobs[0]  # noqa: E731
    return record, _tick_until(lambda: record().job_id and record().progress_text == "Uploading frame 1/3", 20)


def upload_interrupted(tmp, address):
    """Blender closes after the engine got frame 1 of 3 (the job waits in state 'uploading'); the file is
    opened again and the job resumed: the two frames the engine lacks are exported again and sent."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    with _upload_stalled_after_frame_one():
        record, stalled = _stylize_until_frame_one_is_uploaded()
        bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=bpy.data.filepath)  # the run ends with the old file
    jobs = addon().jobs
    client = addon().engine_link.client_module().EngineClient(address, timeout=10)
    try:
        engine_state = client.status(record().job_id, token=record().token)["state"]
    finally:
        client.close()
    report = {"stalled": stalled, "engine_state": engine_state, "shown": jobs.display_state(record())}
    with counting_exports() as exported:
        report["resumed"] = call(bpy.ops.vse_style.job_resume, uid=record().uid, wait=False)
        report["finished"] = _tick_until(lambda: not jobs.busy())
    report["exported"] = len(exported)
    report.update(after=_new_strip_report(bpy.context.scene, record()),
                  temp_scenes=[s.name for s in bpy.data.scenes if s.name.startswith(".vse_style")])
    return report


def cancelled_mid_upload(tmp, address):
    """Cancel after the engine got frame 1 of 3: the job ends 'cancelled' (the rest of the upload, refused
    by the engine, read as a failure); Continue sends the two frames it lacks and the job runs to its end."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    jobs = addon().jobs
    with _upload_stalled_after_frame_one():
        record, stalled = _stylize_until_frame_one_is_uploaded()
        cancelled = call(bpy.ops.vse_style.cancel, uid=record().uid)
        jobs.tick(0.05)  # the cancel goes out while frame 2 waits to be sent
    ended = _tick_until(lambda: not jobs.busy(), timeout=60)
    report = {"stalled": stalled, "cancelled": cancelled, "ended": ended, "state": record().state,
              "error": record().error, "shown": jobs.display_state(record())}
    with counting_exports() as exported:
        report["continued"] = call(bpy.ops.vse_style.job_continue, uid=record().uid, wait=False)
        report["finished"] = _tick_until(lambda: not jobs.busy())
    report.update(exported=len(exported), after=_new_strip_report(bpy.context.scene, record()),
                  temp_scenes=[s.name for s in bpy.data.scenes if s.name.startswith(".vse_style")])
    return report


def version_mismatch(tmp, port):
    """An engine of another protocol version: the add-on says so instead of failing obscurely."""
    import threading
    import msgpack
    import zmq
    prefs = bpy_case.enable()
    _remote(prefs, f"tcp://127.0.0.1:{port}")
    prefs.timeout = 5.0
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def serve():  # answers every request the way an engine of the previous protocol, 1, does
        while not stop.is_set():
            if router.poll(50):
                peer, header = router.recv_multipart()[:2]
                request = msgpack.unpackb(header)
                reply = {"v": 1, "type": "error", "id": request.get("id"), "code": "version_mismatch",
                         "message": "protocol version 2 is not 1", "field": "v"}
                router.send_multipart([peer, msgpack.packb(reply)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        test = call(bpy.ops.vse_style.test_connection)
        scene, source, frames = _clip_scene(tmp)
        result, error = call(bpy.ops.vse_style.stylize)
    finally:
        stop.set()
        thread.join()
        router.close(0)
        context.term()
    return {"test_connection": test[1], "status": prefs.status, "stylize": error,
            "rows": len(bpy.context.scene.vse_style_jobs)}


def install_zip(zip_path, address):
    """Install the built extension under BLENDER_USER_RESOURCES (set by the test), enable it, use it."""
    from pathlib import Path
    package = "bl_ext.user_default.vse_style_transfer"
    installed = call(bpy.ops.extensions.package_install_files, filepath=zip_path, repo="user_default",
                     enable_on_install=True)
    addon_prefs = bpy.context.preferences.addons.get(package)
    result = {"installed": installed, "enabled": addon_prefs is not None}
    if addon_prefs is None:
        return result
    root = os.environ["BLENDER_USER_RESOURCES"]
    module = sys.modules[package]
    prefs = addon_prefs.preferences
    _remote(prefs, address)
    test = call(bpy.ops.vse_style.test_connection)
    client = sys.modules.get(package + ".vse_style_shared.client")
    scene = bpy.context.scene
    colour = module.compat.new_effect(module.compat.strips(scene.sequence_editor_create()), "colour", "COLOR",
                                      channel=1, frame_start=1, length=2)
    scene.sequence_editor.active_strip = colour
    added = call(bpy.ops.vse_style.slot_add, filepath=write_style(os.path.join(root, "style.png")))
    result.update(test=test, status=prefs.status, slot_added=added, slots=len(colour.vse_style.slots),
                  bundled_client=bool(client and client.__file__.startswith(root)),
                  zmq_wheel=[str(p) for p in Path(root).glob("extensions/.local/lib/python*/site-packages/zmq")],
                  torch="torch" in sys.modules)
    return result


class Layout:
    """Stands in for UILayout (headless Blender draws no UI): records what a panel draws and checks it
    against the real RNA, so a wrong property, operator or icon name fails the test."""

    ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())

    def __init__(self, log):
        self.log = log
        self.use_property_split = self.use_property_decorate = self.enabled = self.active = True

    def _icon(self, icon):
        assert icon in self.ICONS, f"unknown icon {icon}"

    def _child(self, *args, **kwargs):
        return Layout(self.log)

    row = column = box = split = _child

    def separator(self, **kwargs):
        pass

    def label(self, text="", icon="NONE", **kwargs):
        self._icon(icon)
        self.log.append(("label", text))

    def prop(self, data, name, text=None, icon="NONE", **kwargs):
        self._icon(icon)
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name}"
        self.log.append(("prop", name))

    def operator(self, idname, text=None, icon="NONE", **kwargs):
        self._icon(icon)
        module, name = idname.split(".")
        properties = getattr(getattr(bpy.ops, module), name).get_rna_type().properties
        self.log.append(("operator", idname))
        log = self.log

        class Properties:  # assigning an operator property that does not exist fails
            def __setattr__(self, key, value):
                assert key in properties, f"{idname} has no property {key}"
                log.append(("operator property", idname, key, value))
        return Properties()

    def template_icon(self, icon_value=0, scale=1.0):
        assert isinstance(icon_value, int) and icon_value > 0, "an icon id from bpy.utils.previews"
        self.log.append(("icon", scale))

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", round(factor, 3), text))

    def template_list(self, list_type, list_id, data, name, active_data, active_name, rows=5, **kwargs):
        ui_list = getattr(bpy.types, list_type)
        assert name in data.bl_rna.properties and active_name in active_data.bl_rna.properties
        self.log.append(("list", list_type, len(getattr(data, name))))
        for index, item in enumerate(getattr(data, name)):
            ui_list.draw_item(ui_list, bpy.context, Layout(self.log), data, item, 0, active_data, active_name,
                              index)


def _draw(panel, log):
    from types import SimpleNamespace
    if panel.poll(bpy.context):
        panel.draw(SimpleNamespace(layout=Layout(log)), bpy.context)


class _Drawn:
    """``self`` for AddonPreferences.draw: the real preferences plus a recording layout."""

    def __init__(self, prefs, layout):
        self._prefs, self.layout = prefs, layout

    def __getattr__(self, name):
        return getattr(self._prefs, name)


def ui_draw(tmp):
    """Every panel of the Stylize tab and the preferences, in the states an editor meets."""
    scene, source, record = _finished_job(tmp)
    panels = [bpy.types.VSE_STYLE_PT_stylize, bpy.types.VSE_STYLE_PT_options, bpy.types.VSE_STYLE_PT_advanced,
              bpy.types.VSE_STYLE_PT_jobs]
    draws = {"empty": []}
    scene.sequence_editor.active_strip = None
    for panel in panels:
        _draw(panel, draws["empty"])
    scene.sequence_editor.active_strip = source
    for state in ("failed", "running"):
        extra = scene.vse_style_jobs.add()
        extra.uid, extra.name, extra.state, extra.error = state, "shot", state, "Job failed on the engine: boom"
    for index, name in enumerate(("done", "failed", "interrupted")):
        scene.vse_style_job_index = index
        draws[name] = []
        for panel in panels:
            _draw(panel, draws[name])
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.engine_mode, prefs.python = "LOCAL", ""
    call(bpy.ops.vse_style.stylize, wait=False)  # has a run now (it fails on its first tick)
    draws["running"] = []
    _draw(bpy.types.VSE_STYLE_PT_stylize, draws["running"])
    addon().jobs.stop_all()
    draws["prefs"] = []
    for mode in ("LOCAL", "REMOTE"):
        prefs.engine_mode = mode
        type(prefs).draw(_Drawn(prefs, Layout(draws["prefs"])), bpy.context)
    return draws


def preview_and_instant(tmp, address):
    """Preview the frame under the playhead (nothing added to the edit), then the Instant preset's job."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    scene, source, frames = _clip_scene(tmp)
    before, strips_before = strip_state(source), sorted(s.name for s in strips())
    client_type = addon().engine_link.client_module().EngineClient
    sent = []
    original = client_type.start_preview

    def recording(self, frame, styles, weights=None, options=None, width=0, height=0, encoding="png"):
        sent.append({"weights": [round(w, 4) for w in weights], "options": options, "size": [width, height],
                     "frame_equal": bool(np.array_equal(cv2.cvtColor(cv2.imdecode(np.frombuffer(frame, np.uint8), 1),
                                                                    cv2.COLOR_BGR2RGB), frames[2])),
                     "styles": [name for name, _ in styles]})
        return original(self, frame, styles, weights, options, width, height, encoding)

    client_type.start_preview = recording

    def engine_jobs():
        client = client_type(address, timeout=10, token=addon().engine_link.owner_token())  # the add-on's owner
        try:
            return len(client.list_jobs())
        finally:
            client.close()

    jobs_before = engine_jobs()
    scene.frame_current = 30
    outside = call(bpy.ops.vse_style.preview)
    scene.frame_current = 7  # source element 3 (frames 5.. with one trimmed at the start)
    result, error = call(bpy.ops.vse_style.preview)
    state = addon().preview.state
    image = bpy.data.images.get(addon().preview.IMAGE_NAME)
    pixels = None
    if image is not None:  # bottom row first, RGBA floats
        pixels = (np.array(image.pixels[:]).reshape(image.size[1], image.size[0], 4)[::-1, :, :3] * 255).round()
    drawn = []
    _draw(bpy.types.VSE_STYLE_PT_preview, drawn)
    jobs_made = engine_jobs() - jobs_before
    # the Instant preset: the whole strip through the engine's fast mode
    source.vse_style.preset = "PREVIEW"  # after the preview the add-on knows the engine's device: a CPU
    cpu_preview = [source.vse_style.width, source.vse_style.iterations]
    source.vse_style.preset = "INSTANT"
    preset = {"mode": source.vse_style.mode, "width": source.vse_style.width, "name": source.vse_style.preset}
    source.vse_style.width = 48
    preset["after_edit"] = source.vse_style.preset  # issue 12.7: no longer what the preset says
    preset["cpu_preview"] = cpu_preview
    stylized = call(bpy.ops.vse_style.stylize)
    record = scene.vse_style_jobs[-1]
    report = _new_strip_report(scene, record)
    options_panel = []
    _draw(bpy.types.VSE_STYLE_PT_options, options_panel)
    client = client_type(address, timeout=10)
    try:
        engine_job = client.status(record.job_id, token=record.token)
    finally:
        client.close()
    report.update(outside=outside, op=result, op_error=error, sent=sent, text=state.text, error=state.error,
                  image_size=list(image.size) if image is not None else None,
                  differs=float(np.abs(pixels - frames[2]).mean()) if pixels is not None else None,
                  drawn=drawn, icon_id=state.icon_id, icon_size=list(state.size), before=before, strips_before=strips_before, preset=preset, stylized=stylized,
                  engine_options=engine_job["report"]["options"], jobs_made=jobs_made,
                  options_panel=options_panel, jobs_after_preview=len(scene.vse_style_jobs))
    return report


def curve_keys(tmp, address, keys):
    """A remote engine that requires CURVE keys: with the keys folder, without, with a wrong folder."""
    prefs = bpy_case.enable()
    _remote(prefs, address)
    prefs.timeout = 2.0
    result = {}
    for name, folder in (("keys", keys), ("no_keys", ""), ("missing", os.path.join(tmp, "nowhere"))):
        prefs.keys_dir = folder
        call(bpy.ops.vse_style.test_connection)
        result[name] = prefs.status
    return result


def engine_failure(tmp, port):
    """A job the engine fails (RAFT flow without its weights): the editor gets the engine's reason."""
    os.environ["TORCH_HOME"] = os.path.join(tmp, "torch")  # the local engine inherits it: no RAFT weights
    prefs = bpy_case.enable()
    prefs.engine_mode, prefs.python, prefs.port = "LOCAL", sys.executable, port
    prefs.jobs_dir, prefs.timeout = os.path.join(tmp, "jobs"), 30.0
    scene, source, frames = _clip_scene(tmp)
    source.vse_style.flow = "raft"
    result, error = call(bpy.ops.vse_style.stylize)
    record = bpy.context.scene.vse_style_jobs[0]
    return {"op": result, "op_error": error, "state": record.state, "error": record.error,
            "strips": sorted(s.name for s in strips())}
