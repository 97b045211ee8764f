"""Operators: style slots, Stylize / Cancel, the jobs list, the connection test."""
import shutil

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import compat, engine_link, jobs, keyframes, prefs, preview
from .engine_link import LinkError
from .export import ExportError
from .props import MAX_STYLES, weight_prop
from .reimport import RESULT_KEY, missing_frames

# Failures explained to the editor (everything else is a bug and keeps its traceback).
EXPECTED = (jobs.JobError, LinkError, ExportError)


def active_strip(context):
    scene = compat.sequencer_scene(context)
    editor = scene.sequence_editor if scene else None
    return editor.active_strip if editor else None


def link_settings(context):
    return engine_link.Settings.from_prefs(prefs.get(context))


def _job_record(context, uid):
    """The record named by ``uid``, else the active one of the jobs list."""
    scene = compat.sequencer_scene(context)
    if uid:
        return jobs.find_record(scene, uid)
    index = scene.vse_style_job_index
    return scene.vse_style_jobs[index] if 0 <= index < len(scene.vse_style_jobs) else None


def _blocking(op) -> bool:
    """In background mode (``blender -b``) jobs run to their end inside the operator; in the UI (or
    with wait=False) the timer drives them."""
    return bpy.app.background and op.wait


def _finish(op, run):
    if not _blocking(op):
        return {'FINISHED'}
    error = jobs.wait(run)
    if error:
        op.report({'ERROR'}, error)
        return {'CANCELLED'}
    return {'FINISHED'}


# -- style slots -------------------------------------------------------------------------------------

class VSE_STYLE_OT_slot_add(bpy.types.Operator):
    """Add a style painting to the active strip"""
    bl_idname = "vse_style.slot_add"
    bl_label = "Add Style"
    bl_options = {'REGISTER', 'UNDO'}

    filepath: StringProperty(subtype='FILE_PATH')
    filter_image: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})
    filter_folder: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})
    relative_path: BoolProperty(name="Relative Path", default=True)

    @classmethod
    def poll(cls, context):
        return active_strip(context) is not None

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        strip = active_strip(context)
        settings = strip.vse_style
        if len(settings.slots) >= MAX_STYLES:
            self.report({'ERROR'}, f"At most {MAX_STYLES} styles per strip")
            return {'CANCELLED'}
        path = self.filepath
        problem = jobs.style_problem(path)
        if problem:
            self.report({'ERROR'}, f"Not added: {problem}")
            return {'CANCELLED'}
        if path and self.relative_path and bpy.data.filepath:
            try:
                path = bpy.path.relpath(path)
            except ValueError:  # another drive on Windows
                pass
        slot = settings.slots.add()
        slot.image = path
        index = len(settings.slots) - 1
        setattr(strip, weight_prop(index), 1.0)
        settings.active_slot = index
        return {'FINISHED'}


class VSE_STYLE_OT_slot_remove(bpy.types.Operator):
    """Remove the selected style, with its weight keyframes"""
    bl_idname = "vse_style.slot_remove"
    bl_label = "Remove Style"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        strip = active_strip(context)
        return strip is not None and len(strip.vse_style.slots) > 0

    def execute(self, context):
        strip = active_strip(context)
        settings = strip.vse_style
        index = min(settings.active_slot, len(settings.slots) - 1)
        keyframes.remove_slot(compat.sequencer_scene(context), strip, index)
        settings.active_slot = max(0, index - 1)
        return {'FINISHED'}


class VSE_STYLE_OT_slot_move(bpy.types.Operator):
    """Move the selected style up or down the list, with its weight keyframes"""
    bl_idname = "vse_style.slot_move"
    bl_label = "Move Style"
    bl_options = {'REGISTER', 'UNDO'}

    direction: EnumProperty(items=[("UP", "Up", ""), ("DOWN", "Down", "")])

    @classmethod
    def poll(cls, context):
        strip = active_strip(context)
        return strip is not None and len(strip.vse_style.slots) > 1

    def execute(self, context):
        strip = active_strip(context)
        settings = strip.vse_style
        index = settings.active_slot
        other = index - 1 if self.direction == "UP" else index + 1
        if not 0 <= other < len(settings.slots):
            return {'CANCELLED'}
        keyframes.swap_slots(compat.sequencer_scene(context), strip, index, other)
        settings.active_slot = other
        return {'FINISHED'}


# -- stylize ---------------------------------------------------------------------------------------------

class VSE_STYLE_OT_stylize(bpy.types.Operator):
    """Stylize the active strip with its style paintings; the result comes back as a new strip above it"""
    bl_idname = "vse_style.stylize"
    bl_label = "Stylize"
    bl_options = {'REGISTER', 'UNDO'}

    wait: BoolProperty(name="Wait", default=True, options={'HIDDEN', 'SKIP_SAVE'},
                       description="In background mode, return only when the new strip is imported")

    @classmethod
    def poll(cls, context):
        return compat.sequencer_scene(context) is not None

    def execute(self, context):
        try:
            run = jobs.start(compat.sequencer_scene(context), active_strip(context), link_settings(context),
                             background=_blocking(self))
        except EXPECTED as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        return _finish(self, run)


class VSE_STYLE_OT_estimate(bpy.types.Operator):
    """Ask the engine how long stylizing the active strip with these settings would take and how much
    memory it needs (nothing is exported or sent but the sizes)"""
    bl_idname = "vse_style.estimate"
    bl_label = "Estimate"
    bl_options = {'REGISTER'}

    wait: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})

    @classmethod
    def poll(cls, context):
        return active_strip(context) is not None

    def execute(self, context):
        try:
            text = jobs.estimate(compat.sequencer_scene(context), active_strip(context), link_settings(context),
                                 background=_blocking(self))
        except EXPECTED as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'INFO'}, text or "Asking the engine")
        return {'FINISHED'}


class VSE_STYLE_OT_stylize_selected(bpy.types.Operator):
    """Stylize every selected strip that has style paintings, each with its own settings (the engine runs
    them one after the other; a selected strip's result, selected along with it, is left out)"""
    bl_idname = "vse_style.stylize_selected"
    bl_label = "Stylize Selected"
    bl_options = {'REGISTER', 'UNDO'}

    wait: BoolProperty(name="Wait", default=True, options={'HIDDEN', 'SKIP_SAVE'},
                       description="In background mode, return only when every result is imported")

    @classmethod
    def poll(cls, context):
        return compat.sequencer_scene(context) is not None

    def execute(self, context):
        scene = compat.sequencer_scene(context)
        editor = scene.sequence_editor
        chosen = [s for s in compat.strips_all(editor) if s.select and len(s.vse_style.slots)] if editor else []
        if not chosen:
            self.report({'ERROR'}, "Select the strips to stylize (each with at least one style painting)")
            return {'CANCELLED'}
        results = _results_of(scene, chosen)  # box-selecting a strip takes its result above it along
        runs, problems = [], [f"{name}: skipped, the result of a selected strip" for name in sorted(results)]
        sources = [s for s in chosen if s.name not in results]
        for strip in sorted(sources, key=lambda s: (s.frame_final_start, s.channel)):
            try:
                runs.append(jobs.start(scene, strip, link_settings(context), background=_blocking(self)))
            except EXPECTED as exc:
                problems.append(f"{strip.name}: {exc}")
        if _blocking(self):
            problems += [f"{run.info.get('name')}: {error}" for run in runs if (error := jobs.wait(run))]
        if problems:
            self.report({'ERROR'} if not runs else {'WARNING'}, "; ".join(problems))
        return {'FINISHED'} if runs else {'CANCELLED'}


def _results_of(scene, strips) -> set:
    """Names of the strips that are an imported result of a job of another of ``strips``."""
    keys = {s.vse_style.key for s in strips if s.vse_style.key}
    sources = {RESULT_KEY + r.uid: r.source_key for r in scene.vse_style_jobs}
    return {s.name for s in strips if sources.get(s.vse_style.key) in keys}


class VSE_STYLE_OT_preview(bpy.types.Operator):
    """Paint the frame under the playhead with the strip's styles and weights on the engine (the instant
network) and show it in the Stylize tab; nothing is added to the edit"""
    bl_idname = "vse_style.preview"
    bl_label = "Preview"
    bl_options = {'REGISTER'}

    wait: BoolProperty(name="Wait", default=True, options={'HIDDEN', 'SKIP_SAVE'},
                       description="In background mode, return only when the preview is shown")

    @classmethod
    def poll(cls, context):
        return compat.sequencer_scene(context) is not None

    def execute(self, context):
        strip = active_strip(context)
        options = {"preserve_colors": strip.vse_style.preserve_colors,
                   "style_scale": strip.vse_style.brush_scale} if strip is not None else {}
        try:
            preview.start(compat.sequencer_scene(context), strip, link_settings(context),
                          strip.vse_style.width if strip is not None else 0, options, background=_blocking(self))
        except EXPECTED + (preview.PreviewError,) as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        if not _blocking(self):
            return {'FINISHED'}
        error = preview.wait()
        if error:
            self.report({'ERROR'}, error)
            return {'CANCELLED'}
        self.report({'INFO'}, f"Preview: {preview.state.text}")
        return {'FINISHED'}


class VSE_STYLE_OT_cancel(bpy.types.Operator):
    """Stop a stylize job (frames already finished are kept)"""
    bl_idname = "vse_style.cancel"
    bl_label = "Cancel"

    uid: StringProperty(options={'HIDDEN', 'SKIP_SAVE'})

    def execute(self, context):
        run = jobs.get_run(self.uid) if self.uid else None
        if not self.uid:  # the active strip's job, else the active one of the jobs list
            strip, record = active_strip(context), _job_record(context, "")
            run = ((jobs.active_run(strip.name) if strip else None)
                   or (jobs.get_run(record.uid) if record else None))
        if run is None:
            self.report({'WARNING'}, "No running job to cancel")
            return {'CANCELLED'}
        try:
            run.cancel()
        except Exception as exc:  # the engine may be gone: the job stops locally anyway
            run.fail(engine_link.explain(exc))
        return {'FINISHED'}


# -- the jobs list ---------------------------------------------------------------------------------------

class VSE_STYLE_OT_job_import(bpy.types.Operator):
    """Import a finished job's frames as a new strip above its source (fetching missing frames first)"""
    bl_idname = "vse_style.job_import"
    bl_label = "Re-import"
    bl_options = {'REGISTER', 'UNDO'}

    uid: StringProperty(options={'HIDDEN', 'SKIP_SAVE'})
    scene: StringProperty(options={'HIDDEN', 'SKIP_SAVE'})
    wait: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})

    def execute(self, context):
        scene = bpy.data.scenes.get(self.scene) if self.scene else compat.sequencer_scene(context)
        record = jobs.find_record(scene, self.uid) if scene and self.uid else _job_record(context, "")
        if record is None:
            self.report({'ERROR'}, "No such job")
            return {'CANCELLED'}
        try:
            if record.state == "done" and not missing_frames(record.out_dir, record.frame_count):
                strip = jobs.import_now(scene, record)
                self.report({'INFO'}, f"Imported '{strip.name}' on channel {strip.channel}")
                return {'FINISHED'}
            if record.state in ("failed", "cancelled"):
                raise jobs.JobError(f"The job {record.state}: nothing to import")
            run = jobs.resume(scene, record, link_settings(context), background=_blocking(self))
        except EXPECTED as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        return _finish(self, run)


class JobAction:
    """An operator on one job record of this file: finds it and reports the expected failures in one line;
    ``act(context, record)`` does the rest."""
    uid: StringProperty(options={'HIDDEN', 'SKIP_SAVE'})

    def execute(self, context):
        record = _job_record(context, self.uid)
        if record is None:
            self.report({'ERROR'}, "No such job")
            return {'CANCELLED'}
        try:
            return self.act(context, record)
        except EXPECTED as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}


class VSE_STYLE_OT_job_resume(JobAction, bpy.types.Operator):
    """Attach again to a job that was interrupted (Blender closed): follow it, then import the result"""
    bl_idname = "vse_style.job_resume"
    bl_label = "Resume"
    bl_options = {'REGISTER'}

    wait: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})

    def act(self, context, record):
        run = jobs.resume(compat.sequencer_scene(context), record, link_settings(context),
                          background=_blocking(self))
        return _finish(self, run)


class VSE_STYLE_OT_job_import_finished(JobAction, bpy.types.Operator):
    """Import the frames a cancelled, failed or interrupted job finished as a strip over that part of its
    source"""
    bl_idname = "vse_style.job_import_finished"
    bl_label = "Import Finished Frames"
    bl_options = {'REGISTER', 'UNDO'}

    def act(self, context, record):
        strip = jobs.import_finished(compat.sequencer_scene(context), record)
        self.report({'INFO'}, f"Imported '{strip.name}' on channel {strip.channel}")
        return {'FINISHED'}


class VSE_STYLE_OT_job_continue(JobAction, bpy.types.Operator):
    """Run a cancelled or failed job again after the frames it finished, then import the whole result"""
    bl_idname = "vse_style.job_continue"
    bl_label = "Continue"
    bl_options = {'REGISTER'}

    wait: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})

    def act(self, context, record):
        if record.state not in ("cancelled", "failed"):
            raise jobs.JobError(f"Only a cancelled or failed job continues (this one is {record.state})")
        run = jobs.continue_job(compat.sequencer_scene(context), record, link_settings(context),
                                background=_blocking(self))
        return _finish(self, run) if run is not None else {'FINISHED'}


class VSE_STYLE_OT_job_remove(bpy.types.Operator):
    """Remove the job from this file's list, and its inputs and frames from the engine"""
    bl_idname = "vse_style.job_remove"
    bl_label = "Remove Job"
    bl_options = {'REGISTER', 'UNDO'}

    uid: StringProperty(options={'HIDDEN', 'SKIP_SAVE'})
    wait: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})
    on_engine: BoolProperty(
        name="Delete on the Engine", default=True,
        description="Remove the job's uploaded frames and results from the engine too (a running job stops); "
                    "the stylized frames beside the .blend are copies and stay")
    frames: BoolProperty(
        name="Delete Stylized Frames", default=False,
        description="Also delete the stylized frames this job wrote beside the .blend (a strip imported from "
                    "them shows as missing)")

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        scene = compat.sequencer_scene(context)
        record = _job_record(context, self.uid)
        if record is None:
            return {'CANCELLED'}
        run = jobs.get_run(record.uid)
        if run is not None:
            run.close()  # stop following it
        problem = ""
        if self.on_engine and record.job_id:
            problem = jobs.remove_on_engine(link_settings(context), record.job_id, record.token, _blocking(self))
        if self.frames and record.out_dir:
            shutil.rmtree(bpy.path.abspath(record.out_dir), ignore_errors=True)
        jobs.forget_record(scene, record.uid)
        if problem:
            self.report({'WARNING'}, f"Removed from the list; the engine keeps its files: {problem}")
        return {'FINISHED'}


# -- engine ---------------------------------------------------------------------------------------------

class VSE_STYLE_OT_test_connection(bpy.types.Operator):
    """Connect to the engine (starting the local one if needed) and show its version and device"""
    bl_idname = "vse_style.test_connection"
    bl_label = "Test Connection"

    def _done(self, context, outcome):
        addon_prefs = prefs.get(context)
        if isinstance(outcome, BaseException):
            message = engine_link.explain(outcome)
            addon_prefs.status = message
            self.report({'ERROR'}, message)
            return {'CANCELLED'}
        addon_prefs.status = engine_link.describe(outcome)
        self.report({'INFO'}, addon_prefs.status)
        return {'FINISHED'}

    def execute(self, context):  # blocking: scripts and background mode
        try:
            welcome = engine_link.check(link_settings(context))
        except Exception as exc:
            return self._done(context, exc)
        return self._done(context, welcome)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        self._future = engine_link.check_async(link_settings(context))
        prefs.get(context).status = "Connecting..."
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER' or not self._future.done():
            return {'PASS_THROUGH'}
        context.window_manager.event_timer_remove(self._timer)
        exc = self._future.exception()
        return self._done(context, exc if exc is not None else self._future.result())


class VSE_STYLE_OT_notify(bpy.types.Operator):
    """Show a message of the add-on in the status bar (from its timer, where no operator runs)"""
    bl_idname = "vse_style.notify"
    bl_label = "Stylize Message"
    bl_options = {'INTERNAL'}

    message: StringProperty()
    level: StringProperty(default="INFO")

    def execute(self, context):
        self.report({self.level}, self.message)
        return {'FINISHED'}


CLASSES = (VSE_STYLE_OT_slot_add, VSE_STYLE_OT_slot_remove, VSE_STYLE_OT_slot_move, VSE_STYLE_OT_stylize,
           VSE_STYLE_OT_stylize_selected, VSE_STYLE_OT_estimate,
           VSE_STYLE_OT_preview, VSE_STYLE_OT_cancel, VSE_STYLE_OT_job_import, VSE_STYLE_OT_job_resume,
           VSE_STYLE_OT_job_import_finished, VSE_STYLE_OT_job_continue, VSE_STYLE_OT_job_remove,
           VSE_STYLE_OT_test_connection, VSE_STYLE_OT_notify)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
