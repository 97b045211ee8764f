"""Stylize jobs while Blender runs: export -> connect -> upload -> engine -> frames on disk -> import.

A Run holds what lives only in memory (the exporter, the connection, the session); the job's record
in the scene (props.VSE_STYLE_PG_job) is what the .blend keeps, so a job can be re-imported or
resumed after Blender was closed. Runs look their record, scene and strip up by name on every step
and keep no RNA pointers across ticks: undo and file loads free them.

``tick()`` does a bounded amount of work for every run. In the UI a timer calls it; in background
mode (and in tests) the caller does, so nothing here depends on timers or modal operators.
"""
import functools
import os
import shutil
import tempfile
import time
import traceback
import uuid

import bpy

from . import engine_link, export, reimport
from .engine_link import LinkError
from .keyframes import sample_weights
from .props import MAX_STYLES

FINAL_STATES = ("done", "failed", "cancelled")
STATE_TEXT = {"queued": "Queued on the engine", "running": "Starting"}  # until progress events say more
TIMER_INTERVAL = 0.1
STAGE_WORDS = {"flow": "following the motion", "done": "finishing"}  # the engine's stage names, for editors
PRINT_INTERVAL = 5.0  # seconds between progress lines in background mode while the step stays the same
_runs: dict = {}   # uid -> Run


class JobError(Exception):
    """A message for the editor."""


# -- records -----------------------------------------------------------------------------------------

def find_record(scene, uid: str):
    return next((r for r in scene.vse_style_jobs if r.uid == uid), None)


def forget_record(scene, uid: str) -> None:
    """Take a job off the scene's list, keeping the selection on a row that exists."""
    index = next((i for i, r in enumerate(scene.vse_style_jobs) if r.uid == uid), None)
    if index is not None:
        scene.vse_style_jobs.remove(index)
        scene.vse_style_job_index = min(scene.vse_style_job_index, len(scene.vse_style_jobs) - 1)


def display_state(record) -> str:
    """The record's state, or 'interrupted' for a job whose run ended with an earlier Blender session."""
    if record.state not in FINAL_STATES and record.uid not in _runs:
        return "interrupted"
    return record.state


def active_run(strip_name: str):
    return next((run for run in _runs.values() if run.info.get("source") == strip_name), None)


def get_run(uid: str):
    return _runs.get(uid)


def busy() -> bool:
    return bool(_runs or _requests)


# -- one job ---------------------------------------------------------------------------------------

class Run:
    def __init__(self, scene, record, settings, exporter=None, job_request=None, since=0, background=False):
        self.uid = record.uid
        self.scene_name = scene.name
        # plain copies of the record's fields (arrays as tuples: no RNA memory), to re-create the
        # record if the editor undoes its creation while the job runs
        self.info = {p.identifier: getattr(record, p.identifier)[:] if getattr(p, "is_array", False)
                     else getattr(record, p.identifier)
                     for p in record.bl_rna.properties if p.identifier != "rna_type"}
        self.settings = settings
        self.background = background
        self.exporter = exporter
        self.job_request = job_request  # (styles, weights, options) of a new job
        self.since = since
        # where the frames go, resolved once: a Save As elsewhere mid-job must not split them
        self.folder = bpy.path.abspath(record.out_dir)
        count = record.frame_count  # frames already on disk: all but the missing (a new job: none)
        self.have = set(range(1, count + 1)) - set(reimport.missing_frames(self.folder, count)) \
            if job_request is None else set()
        self.stage = "connect"
        self.client = None
        self.future = None
        self.link = None
        self.cancelling = False
        self.error = ""
        self.unreachable_noted = False
        self.refetched = False
        self._steps_printed, self._last_print = set(), 0.0  # background mode's progress lines

    # record access ------------------------------------------------------------------------------
    @property
    def scene(self):
        return bpy.data.scenes.get(self.scene_name)

    def record(self):
        scene = self.scene
        if scene is None:
            return None
        record = find_record(scene, self.uid)
        if record is None:  # undone: put it back, the job still runs
            record = scene.vse_style_jobs.add()
            for key, value in self.info.items():
                setattr(record, key, value)
        return record

    def update(self, **fields):
        self.info.update(fields)
        record = self.record()
        if record is not None:
            for key, value in fields.items():
                setattr(record, key, value)
        if self.background and "progress_text" in fields:
            self._print_progress(fields["progress_text"])

    def _print_progress(self, text: str):
        """``blender -b`` has no panel: a line on stdout when the step changes, or every few seconds."""
        step, now = text.split(" · ")[0], time.monotonic()
        if step and (step not in self._steps_printed or now - self._last_print >= PRINT_INTERVAL):
            self._steps_printed.add(step)
            self._last_print = now
            print(f"vse_style: {self.info.get('name')}: {text}", flush=True)

    # the stages ----------------------------------------------------------------------------------
    def step(self, deadline: float, block: bool = False):
        # The engine is reached before anything is exported: an engine that is down or refuses costs
        # the editor seconds, not the export of every frame.
        if self.stage == "connect":
            self._connect()
        if self.stage == "export":
            self._export(deadline)
        if self.stage == "submit":
            self._submit()
        if self.stage == "engine":
            self._engine(deadline, block)
        if self.stage == "import":
            self._import()

    def _export(self, deadline):
        exporter = self.exporter
        total = len(exporter.frames)
        while not exporter.done:
            exporter.step()
            self.update(progress=0.0, progress_text=f"Exporting frame {len(exporter.paths)}/{total}")
            if time.monotonic() > deadline:
                return
        exporter.close()
        self.stage = "submit"

    def _connect(self):
        # A new job is also estimated here: one that cannot fit is refused before anything is exported.
        job = None
        if self.job_request is not None:
            job = (self.info["width"], self.info["height"], self.info["frame_count"], self.job_request[2])
        if self.background:
            found = engine_link.connect_and_estimate(self.settings, *job) if job else engine_link.connect(self.settings)
        else:
            if self.future is None:
                self.future = (engine_link.connect_and_estimate_async(self.settings, *job) if job
                               else engine_link.connect_async(self.settings))
                self.update(progress_text="Connecting to the engine")
            if not self.future.done():
                return
            found = self.future.result()  # raises the LinkError for the editor
        self.client = found[0]
        if self.job_request is not None:
            estimate = found[2]
            if estimate.get("seconds") is not None:
                self.update(summary=f"{self.info['summary']} · ~{_duration(estimate['seconds'])}")
            self.stage = "export"
            return
        self.link = engine_link.JobLink(self.client, self.info["job_id"], since=self.since, token=self.info["token"])
        self.update(progress_text="Attached to the engine")
        self.stage = "engine"

    def _submit(self):
        styles, weights, options = self.job_request
        info = self.info
        self.link = engine_link.JobLink.submit(self.client, self.exporter.paths, styles, weights, options,
                                               info["width"], info["height"], info["name"], info["token"])
        self.update(state="uploading", progress_text="Uploading")
        self.stage = "engine"

    def _engine(self, deadline, block):
        link = self.link
        for event in link.tick(max(0.001, deadline - time.monotonic()), block=block):
            self._on_event(event)
        if self.exporter is not None and link.upload is None and link.job_id:
            self.exporter.close()
            shutil.rmtree(self.exporter.folder, ignore_errors=True)  # uploaded: inputs not needed
            self.exporter = None
        if self.cancelling is True and link.job_id:
            self.cancelling = "sent"
            link.cancel()
        if not link.done:
            failed = engine_link.local_engine_failed() if self.settings.mode == "LOCAL" else ""
            if failed:
                raise LinkError(failed)
            return
        state = link.state
        if state == "done":
            self.stage = "import"
        elif state == "failed":
            reason = self.info.get("error") or "no reason given"
            raise JobError(f"Job failed on the engine: {reason}")
        else:
            self.finish("cancelled", "Cancelled")

    def _on_event(self, event):
        kind = event["type"]
        count = self.info["frame_count"]
        if kind == "accepted":
            self.update(job_id=event["job"])
        elif kind == "uploaded":
            self.update(progress=0.0, progress_text=f"Uploading frame {event['count']}/{event['total']}")
        elif kind == "progress":
            frame, eta = event.get("frame") or 0, event.get("eta")
            iteration, iterations = event.get("iteration") or 0, event.get("iterations") or 0
            done = max(0, frame - 1) + (iteration / iterations if iterations else 0)
            stage = event.get("stage")
            if stage == "setup":  # the engine loads its network and measures the paintings
                text = "Preparing the engine"
            else:
                text = f"Frame {frame}/{event.get('frame_count') or count}"
                if stage in STAGE_WORDS:
                    text += f" ({STAGE_WORDS[stage]})"
            if eta is not None:
                text += f" · ETA {_duration(eta)}"
            self.update(state="running", progress=min(1.0, done / count), progress_text=text)
        elif kind == "frame":
            self._write_frame(event["index"], event["data"])
        elif kind == "state":
            if event["state"] == "uploading" and self.job_request is None and self.exporter is None:
                self._upload_again()
            fields = {"state": event["state"]}
            if event["state"] in STATE_TEXT:
                fields["progress_text"] = STATE_TEXT[event["state"]]
            if event["error"]:
                fields["error"] = event["error"]
            self.update(**fields)
        elif kind == "unreachable":
            if self.background:
                raise LinkError(f"Engine not reachable: {event.get('message')}")
            if not self.unreachable_noted:
                self.unreachable_noted = True
                notify(f"Engine not reachable, still trying: {event.get('message')}", "WARNING")
            self.update(progress_text="Engine not reachable, retrying")
        elif kind == "reconnected":
            self.unreachable_noted = False
            self.update(progress_text="Reconnected to the engine")

    def _upload_again(self):
        """The engine still waits for frames of this job (Blender closed while uploading): export those of
        the source strip again and send them; the upload picks up where it stopped."""
        record, scene = self.record(), self.scene
        editor = scene.sequence_editor if scene is not None else None
        source = reimport.find_source(editor, record) if editor is not None else None
        if source is None:
            raise JobError(f"The upload of this job was interrupted and its source strip '{record.source}' is "
                           f"gone: stylize the strip again")
        moved = round(source.frame_start - record.source_frame_start) if record.source_key else 0
        frames = [record.frame_start + moved + i for i in range(record.frame_count)]
        folder = tempfile.mkdtemp(prefix="vse_style_")
        try:
            self.exporter = export.Exporter(scene, source, folder, record.width, frames=frames)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.link.upload_again([functools.partial(_exported, self.exporter, i) for i in range(1, len(frames) + 1)])
        self.update(progress_text="Uploading the frames the engine lacks")

    def _write_frame(self, index: int, data):
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, reimport.frame_name(index))
        with open(path + ".part", "wb") as handle:
            handle.write(data)
        os.replace(path + ".part", path)  # never a half-written frame under the real name
        self.have.add(index)
        self.update(finished=len(self.have))

    def _import(self):
        missing = reimport.missing_frames(self.folder, self.info["frame_count"])
        if missing and not self.refetched:  # lost on the way (not written, deleted meanwhile): ask once more
            self.refetched = True
            old, self.link = self.link, engine_link.JobLink(self.client, self.info["job_id"], since=missing[0] - 1,
                                                            token=self.info["token"])
            old.close()  # after: the client stays open for the new link
            self.update(progress_text=f"Fetching {len(missing)} missing frames")
            self.stage = "engine"
            return
        self.update(state="done", progress=1.0, progress_text="Importing")
        if missing:  # the job is done on the engine: Re-import asks for the frames again
            count = f"{len(missing)} frames" if len(missing) > 1 else "1 frame"
            self.error = (f"The engine finished but {count} never arrived (first: "
                          f"{reimport.frame_name(missing[0])}): Re-import fetches them")
            self.finish("done", "Frames missing", self.error)
            notify(self.error, "ERROR")
            return
        if self.background:
            import_now(self.scene, self.record())
        else:  # through the operator, asking for its undo step (scripts get none by default)
            try:
                bpy.ops.vse_style.job_import('EXEC_DEFAULT', True, scene=self.scene_name, uid=self.uid)
            except RuntimeError as exc:  # the operator reported an error
                raise JobError(str(exc).removeprefix("Error: ").strip()) from None
        self.finish("done", "")

    # endings -------------------------------------------------------------------------------------
    def finish(self, state: str, text: str, error: str = ""):
        fields = {"state": state, "progress_text": text}
        if error:
            fields["error"] = error
        self.update(**fields)
        self.close()

    def fail(self, message: str):
        self.error = message
        accepted = self.link.job_id if self.link is not None else ""
        if accepted and not self.info.get("job_id"):
            self.update(job_id=accepted)  # accepted and failed in one tick: the engine has it, keep the row
        if self.job_request is not None and not self.info.get("job_id"):
            self._forget_record()  # nothing reached the engine: no row to resume or import, only the message
            self.close()
        else:
            self.finish("failed", "Failed", message)
        notify(message, "ERROR")

    def _forget_record(self):
        scene = self.scene
        if scene is None:
            return
        try:  # the folder made for its frames, still empty
            os.rmdir(self.folder)
        except OSError:
            pass
        forget_record(scene, self.uid)

    def cancel(self):
        """Stop the job: before the engine has it, right away; else ask the engine (the state follows)."""
        if self.stage in ("connect", "export", "submit"):
            self.finish("cancelled", "Cancelled")
        elif not self.cancelling:
            self.cancelling = True
            self.update(progress_text="Cancelling")

    def close(self):
        _runs.pop(self.uid, None)
        if self.exporter is not None:
            self.exporter.close()
            shutil.rmtree(self.exporter.folder, ignore_errors=True)
            self.exporter = None
        if self.link is not None:
            try:
                self.link.close()
            except Exception:  # the connection may be gone; the engine keeps the job anyway
                pass
            self.link = None


def _exported(exporter, index: int) -> bytes:
    """Frame ``index`` exported now (an upload reads it only when the engine lacks it)."""
    with open(exporter.export(index), "rb") as handle:
        return handle.read()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


# -- starting, resuming, importing ------------------------------------------------------------------------

IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def style_problem(image: str) -> str:
    """Why a style slot's file cannot be a painting ('' when it can): checked by its first bytes, so a
    wrong file is named before anything is exported or sent."""
    if not image:
        return "no file chosen"
    path = bpy.path.abspath(image)
    if not os.path.isfile(path):
        return f"{image}: no such file"
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        return f"{image}: cannot be read ({exc.strerror})"
    if not (head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        return f"{image}: not an image file (PNG, JPEG, BMP, TIFF or WebP)"
    return ""


def check_output_folder(folder: str) -> None:
    """JobError unless stylized frames can be written to ``folder`` (created here)."""
    path = bpy.path.abspath(folder)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".vse_style_write_test")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise JobError(f"Cannot write stylized frames to {folder}: {exc.strerror or exc}") from None


def read_styles(strip) -> list:
    """[(name, file bytes)] of the strip's style slots; JobError naming a missing one."""
    slots = strip.vse_style.slots
    if not slots:
        raise JobError("Add at least one style painting to the strip (Stylize tab)")
    if len(slots) > MAX_STYLES:
        raise JobError(f"At most {MAX_STYLES} styles per strip")
    styles, names = [], set()
    for i, slot in enumerate(slots):
        problem = style_problem(slot.image)
        if problem:
            raise JobError(f"Style {i + 1}: {problem}")
        path = bpy.path.abspath(slot.image)
        name = os.path.basename(path)
        while name in names:  # the engine names styles by file name; keep them apart
            name = f"{i + 1}_{name}"
        names.add(name)
        with open(path, "rb") as handle:
            styles.append((name, handle.read()))
    return styles


ENGINE_STYLE_WEIGHT = 100.0  # the engine's default style_weight, which Style Strength multiplies


def _options(settings) -> dict:
    if settings.mode == "fast":  # the feed-forward network: no iterations, no temporal weight
        return {"mode": "fast", "preserve_colors": settings.preserve_colors, "flow": settings.flow,
                "style_scale": settings.brush_scale}
    return {"mode": "temporal", "iterations": settings.iterations, "first_iterations": 2 * settings.iterations,
            "init": settings.start, "temporal_weight": settings.temporal_weight,
            "preserve_colors": settings.preserve_colors,
            "flow": settings.flow, "style_scale": settings.brush_scale,
            "style_weight": ENGINE_STYLE_WEIGHT * settings.style_strength}


def strength_weights(settings, weights) -> list:
    """The instant network has no style weight: a strength below 1 fades toward the footage through the
    style weights (a sum below 1 blends toward the frame's own style), above 1 changes nothing."""
    if settings.mode != "fast" or settings.style_strength >= 1.0:
        return weights
    return [[w * settings.style_strength for w in row] for row in weights]


def output_folder(scene, strip_name: str, uid: str) -> str:
    root = scene.vse_style_output or "//stylized/"
    if root.startswith("//") and not bpy.data.filepath:
        raise JobError("Save the .blend file first: stylized frames are written beside it "
                       f"({root}), or set an absolute output folder")
    return f"{root.rstrip('/')}/{bpy.path.clean_name(strip_name)}/{uid}/"


def job_frames(scene, strip) -> list:
    """The scene frames a job of ``strip`` covers: all it shows, or those inside the preview range."""
    frames = list(export.frame_range(strip))
    if strip.vse_style.frame_range != "PREVIEW":
        return frames
    if not scene.use_preview_range:
        raise JobError("Frames: Preview Range, but the scene has none (Timeline: View > Set Preview Range, or P)")
    first, last = scene.frame_preview_start, scene.frame_preview_end
    inside = [f for f in frames if first <= f <= last]
    if not inside:
        raise JobError(f"'{strip.name}' shows no frame inside the preview range {first}-{last}")
    return inside


def summary(options, size) -> str:
    """'Optimized · 480x270 · 100 it' / 'Instant · 1920x1080': what a job row was made with."""
    words = ["Instant" if options.mode == "fast" else "Optimized", f"{size[0]}x{size[1]}"]
    if options.mode != "fast":
        words.append(f"{options.iterations} it")
    return " · ".join(words)


estimates: dict = {}  # strip name -> the engine's last estimate for it, as the panel shows it


def estimate(scene, strip, settings, background=True) -> str:
    """Ask the engine what stylizing ``strip`` with its settings would take: one line, also kept for the
    panel. JobError/LinkError when it cannot be done as set, saying what to change. Not ``background``
    (the UI): the engine is asked on a worker thread and the line comes as a message; returns ''."""
    if strip is None:
        raise JobError("No active strip: select the strip to stylize in the Sequencer")
    options = strip.vse_style
    frames = job_frames(scene, strip)
    width, height = export.job_size(scene, strip, options.width)
    job = (width, height, len(frames), _options(options))
    name = strip.name

    def answered(found) -> str:
        found = found[2]
        if not found:
            raise JobError("This engine gives no estimates (an older release)")
        estimates[name] = (f"About {_duration(found['seconds'])} for {len(frames)} frames at {width}x{height}, "
                           f"{found['peak_bytes'] / 2**30:.1f} of {found['available_bytes'] / 2**30:.1f} GB on "
                           f"{found['device']}")
        return estimates[name]

    if background:
        return answered(engine_link.connect_and_estimate(settings, *job))
    request(lambda found: notify(answered(found)), engine_link.connect_and_estimate, settings, *job)
    return ""


def start(scene, strip, settings, background=False) -> Run:
    """Validate, then start stylizing ``strip``; the run advances in tick()."""
    if strip is None:
        raise JobError("No active strip: select the strip to stylize in the Sequencer")
    if active_run(strip.name) is not None:
        raise JobError(f"'{strip.name}' is being stylized already: wait for that job or cancel it")
    options = strip.vse_style
    styles = read_styles(strip)
    export.check_strip(strip)
    uid = uuid.uuid4().hex[:8]
    out_dir = output_folder(scene, strip.name, uid)
    check_output_folder(out_dir)
    frames = job_frames(scene, strip)
    inputs = tempfile.mkdtemp(prefix="vse_style_")
    try:
        exporter = export.Exporter(scene, strip, inputs, options.width, frames=frames)
    except BaseException:
        shutil.rmtree(inputs, ignore_errors=True)
        raise
    weights = strength_weights(options, sample_weights(scene, strip, exporter.frames))
    record = scene.vse_style_jobs.add()
    record.uid, record.name, record.source, record.state = uid, strip.name, strip.name, "exporting"
    record.source_key, record.source_frame_start = reimport.strip_key(scene, strip), strip.frame_start
    record.replace, record.summary = options.replace_result, summary(options, exporter.size)
    record.frame_start, record.frame_count = exporter.frames[0], len(exporter.frames)
    record.channel, record.out_dir = strip.channel, out_dir
    record.width, record.height = exporter.size
    record.source_size, record.rendered = exporter.source_size, exporter.rendered
    record.created = time.time()
    record.token = engine_link.owner_token()
    scene.vse_style_job_index = len(scene.vse_style_jobs) - 1
    run = Run(scene, record, settings, exporter=exporter, job_request=(styles, weights, _options(options)),
              background=background)
    _runs[run.uid] = run
    ensure_timer()
    return run


def resume(scene, record, settings, background=False) -> Run:
    """Attach again to a job of this file (after a restart), fetch what is missing, then import."""
    if record.uid in _runs:
        return _runs[record.uid]
    if not record.job_id:
        raise JobError("This job never reached the engine: stylize the strip again")
    if record.state == "done" and record.result:
        raise JobError(f"This job is finished and was imported as '{record.result}': Re-import adds another copy")
    missing = reimport.missing_frames(record.out_dir, record.frame_count)
    since = (missing[0] - 1) if missing else record.frame_count  # the engine sends frames after this
    record.error = ""
    run = Run(scene, record, settings, since=since, background=background)
    _runs[run.uid] = run
    ensure_timer()
    return run


def import_finished(scene, record):
    """Import the frames a cancelled, failed or interrupted job finished (from the first on, without a
    gap) as a strip over the part of the source they cover."""
    if record is None:
        raise JobError("The job's record is gone")
    count = reimport.finished_prefix(record)
    if count == 0:
        raise JobError("No stylized frame of this job is on disk yet: Continue (or Resume) fetches them")
    try:
        return reimport.import_result(scene, record, count)
    except reimport.ReimportError as exc:
        raise JobError(str(exc)) from None


def continue_job(scene, record, settings, background=False):
    """Run a cancelled or failed job again on the engine after its finished frames, follow it, import.
    The Run; None in the UI, where the engine is asked on a worker thread and the run starts in tick()."""
    if record.uid in _runs:
        return _runs[record.uid]
    if not record.job_id:
        raise JobError("This job never reached the engine: stylize the strip again")
    scene_name, uid = scene.name, record.uid

    def answered(problem):
        scene = bpy.data.scenes.get(scene_name)
        record = find_record(scene, uid) if scene is not None else None
        if record is None:
            raise JobError("The job's record is gone")
        if problem and not problem.startswith(engine_link.NOT_STOPPED):  # still running or done there: attach
            raise JobError(problem)
        record.state, record.error, record.progress_text = "queued", "", "Continuing"
        return resume(scene, record, settings, background)

    if background:
        return answered(engine_link.continue_job(settings, record.job_id, record.token))
    record.progress_text = "Continuing"
    request(answered, engine_link.continue_job, settings, record.job_id, record.token)
    return None


def remove_on_engine(settings, job_id: str, token: str, background=False) -> str:
    """Delete a job and its files on the engine: '' or why not. In the UI on a worker thread (a problem
    comes as a message later); returns ''."""
    if background:
        return engine_link.delete_job(settings, job_id, token)
    request(lambda problem: problem and notify(f"Removed from the list; the engine keeps its files: {problem}",
                                               "WARNING"),
            engine_link.delete_job, settings, job_id, token)
    return ""


def import_now(scene, record):
    """Import a finished job's frames (all on disk) as a new strip."""
    if record is None:
        raise JobError("The job's record is gone")
    try:
        strip = reimport.import_result(scene, record)
    except reimport.ReimportError as exc:
        raise JobError(str(exc)) from None
    record.state = "done"
    return strip


def wait(run, timeout=None):
    """Drive one run to its end (background mode); returns its error message ('' if it succeeded)."""
    end = None if timeout is None else time.monotonic() + timeout
    while run.uid in _runs:
        if end is not None and time.monotonic() > end:
            run.fail("Timed out waiting for the engine")
            break
        _step(run, time.monotonic() + 0.1, block=True)
    return run.error


# -- the loop ---------------------------------------------------------------------------------------------

_requests: list = []  # (future, then): engine requests on worker threads, answered on the main thread


def request(then, function, *args):
    """Run a blocking engine request (it may start the local engine) on a worker thread; tick() calls
    ``then(result)`` on the main thread. A failure, or a JobError from ``then``, becomes a message."""
    _requests.append((engine_link.in_thread(function, *args), then))
    ensure_timer()


def _answer_requests():
    for entry in [entry for entry in _requests if entry[0].done()]:
        _requests.remove(entry)
        future, then = entry
        try:
            then(future.result())
        except (JobError, LinkError, export.ExportError) as exc:
            notify(str(exc), "ERROR")
        except Exception as exc:
            traceback.print_exc()
            notify(engine_link.explain(exc), "ERROR")


def _step(run, deadline, block=False):
    try:
        run.step(deadline, block)
    except (JobError, LinkError, export.ExportError, reimport.ReimportError) as exc:
        run.fail(str(exc))
    except Exception as exc:  # a bug or an unexpected client error: report it, keep Blender going
        traceback.print_exc()
        run.fail(engine_link.explain(exc))
        if run.link is not None or run.stage == "connect":
            engine_link.forget_client()


def tick(max_seconds: float = 0.02) -> bool:
    """Advance every run for about ``max_seconds``; True while runs remain."""
    deadline = time.monotonic() + max_seconds
    _answer_requests()
    for run in list(_runs.values()):
        _step(run, deadline)
    redraw_sequencers()
    return bool(_runs or _requests)


def _timer():
    return TIMER_INTERVAL if tick() else None


def ensure_timer():
    if not bpy.app.background and not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL, persistent=True)


def stop_all():
    """Forget every run (file loaded, add-on disabled). The engine keeps the jobs: resume them later."""
    for run in list(_runs.values()):
        run.close()
    _requests.clear()  # answers about the file that was open
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)


def redraw_sequencers():
    """Tag every Sequencer area for redraw (progress changed outside an operator)."""
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else ()):
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()


def notify(message: str, level: str = "INFO"):
    """Show a message in the status bar and the Info log, also when no operator is running."""
    print(f"VSE Style Transfer: {message}")
    wm = bpy.context.window_manager
    if bpy.app.background or wm is None or not wm.windows:
        return
    with bpy.context.temp_override(window=wm.windows[0]):
        if level == "ERROR":  # an error report from a script call would raise instead of showing
            wm.popup_menu(lambda menu, _context: menu.layout.label(text=message), title="VSE Style Transfer",
                          icon='ERROR')
        try:
            bpy.ops.vse_style.notify(message=message, level="WARNING" if level == "ERROR" else level)
        except RuntimeError:
            pass


# -- the frames' folders when the .blend moves ------------------------------------------------------------

_rebased: list = []  # (scene name, uid, out_dir before) while a save is under way


def _where(path: str) -> str:
    """A file's absolute path, comparable with another's."""
    return os.path.normcase(os.path.abspath(path))


@bpy.app.handlers.persistent
def _on_save_pre(filepath):
    """Save As elsewhere: every job's '//' folder is rewritten to reach the same frames from the new
    place, as Blender's Remap Relative does for the strips' files (it knows nothing of add-on paths);
    otherwise Re-import, Resume and the frames of a running job would look beside the new file."""
    _rebased.clear()
    old = bpy.data.filepath
    if not old or not filepath or os.path.dirname(_where(old)) == os.path.dirname(_where(filepath)):
        return
    for scene in bpy.data.scenes:
        for record in scene.vse_style_jobs:
            if not record.out_dir.startswith("//"):
                continue
            folder = bpy.path.abspath(record.out_dir)
            try:
                moved = bpy.path.relpath(folder, start=os.path.dirname(os.path.abspath(filepath)))
            except ValueError:  # another drive (Windows): absolute
                moved = folder
            _rebased.append((scene.name, record.uid, record.out_dir))
            record.out_dir = moved
            if record.uid in _runs:
                _runs[record.uid].info["out_dir"] = moved


@bpy.app.handlers.persistent
def _on_save_post(filepath):
    """A copy was saved (the open file stays where it was): its records get their paths back."""
    if bpy.data.filepath and _where(bpy.data.filepath) != _where(filepath):
        for scene_name, uid, out_dir in _rebased:
            scene = bpy.data.scenes.get(scene_name)
            record = find_record(scene, uid) if scene is not None else None
            if record is not None:
                record.out_dir = out_dir
            if uid in _runs:
                _runs[uid].info["out_dir"] = out_dir
    _rebased.clear()


@bpy.app.handlers.persistent
def _on_load_pre(_file):
    stop_all()


@bpy.app.handlers.persistent
def _on_load_post(_file):
    export.remove_stale_scenes()


@bpy.app.handlers.persistent
def _on_undo_redo(*_args):
    """An undo or redo can bring back the temporary scene of an export that has ended since; a running
    export keeps its own (and builds it again where the undo took it away)."""
    export.remove_stale_scenes(keep={run.exporter.temp_name for run in _runs.values() if run.exporter is not None})


HANDLERS = (("load_pre", _on_load_pre), ("load_post", _on_load_post), ("save_pre", _on_save_pre),
            ("save_post", _on_save_post), ("undo_post", _on_undo_redo), ("redo_post", _on_undo_redo))


def register():
    for kind, handler in HANDLERS:
        getattr(bpy.app.handlers, kind).append(handler)


def unregister():
    stop_all()
    for kind, handler in HANDLERS:
        handlers = getattr(bpy.app.handlers, kind)
        if handler in handlers:
            handlers.remove(handler)
