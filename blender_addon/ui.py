"""The Stylize tab of the Sequencer sidebar."""
import os
import time

import bpy

from . import compat, jobs, preview
from .props import weight_prop

STATE_ICONS = {"done": 'CHECKMARK', "failed": 'ERROR', "cancelled": 'CANCEL', "interrupted": 'PAUSE'}


def _strip(context):
    scene = compat.sequencer_scene(context)
    editor = scene.sequence_editor if scene else None
    return editor.active_strip if editor else None


class VSE_STYLE_UL_slots(bpy.types.UIList):
    """Style slots of the active strip: painting and its (animatable) weight."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        strip = _strip(context)
        row = layout.row(align=True)
        name = os.path.basename(bpy.path.abspath(item.image)) if item.image else "(choose a painting)"
        row.label(text=name, icon='IMAGE_DATA')
        if strip is not None:
            row.prop(strip, weight_prop(index), text="Weight")


class VSE_STYLE_UL_jobs(bpy.types.UIList):
    """This file's stylize jobs."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        state = jobs.display_state(item)
        row = layout.row()
        when = time.strftime("%H:%M", time.localtime(item.created)) if item.created else ""
        row.label(text=f"{item.name} · {when}", icon=STATE_ICONS.get(state, 'TIME'))
        row.label(text=item.summary or f"{item.width}x{item.height}")
        row.label(text=f"{state} {item.finished}/{item.frame_count}")


class SidebarPanel:
    """The Stylize tab of the Sequencer's sidebar (N)."""
    bl_space_type = 'SEQUENCE_EDITOR'
    bl_region_type = 'UI'
    bl_category = "Stylize"

    @classmethod
    def poll(cls, context):
        return compat.sequencer_scene(context) is not None


class VSE_STYLE_PT_stylize(SidebarPanel, bpy.types.Panel):
    bl_label = "Stylize"

    def draw(self, context):
        layout = self.layout
        strip = _strip(context)
        if strip is None:
            layout.label(text="Select a strip to stylize", icon='INFO')
            return
        settings = strip.vse_style
        layout.label(text=strip.name, icon='SEQUENCE')
        row = layout.row()
        row.template_list("VSE_STYLE_UL_slots", "", settings, "slots", settings, "active_slot", rows=3)
        buttons = row.column(align=True)
        buttons.operator("vse_style.slot_add", icon='ADD', text="")
        buttons.operator("vse_style.slot_remove", icon='REMOVE', text="")
        buttons.separator()
        buttons.operator("vse_style.slot_move", icon='TRIA_UP', text="").direction = 'UP'
        buttons.operator("vse_style.slot_move", icon='TRIA_DOWN', text="").direction = 'DOWN'
        if 0 <= settings.active_slot < len(settings.slots):
            layout.prop(settings.slots[settings.active_slot], "image")
        run = jobs.active_run(strip.name)
        record = jobs.find_record(compat.sequencer_scene(context), run.uid) if run else None
        if record is not None:
            row = layout.row(align=True)
            row.progress(factor=record.progress, type='BAR', text=record.progress_text or record.state)
            row.operator("vse_style.cancel", icon='CANCEL', text="").uid = record.uid
        else:
            row = layout.row(align=True)
            row.scale_y = 1.3
            row.operator("vse_style.stylize", icon='BRUSH_DATA')
            row.operator("vse_style.preview", icon='HIDE_OFF')
            row.operator("vse_style.estimate", icon='TIME', text="")
            if strip.name in jobs.estimates:
                layout.label(text=jobs.estimates[strip.name], icon='TIME')
            selected = [s for s in compat.strips_all(compat.sequencer_scene(context).sequence_editor)
                        if s.select and len(s.vse_style.slots)]
            if len(selected) > 1:
                layout.operator("vse_style.stylize_selected", text=f"Stylize {len(selected)} Selected")


class VSE_STYLE_PT_preview(SidebarPanel, bpy.types.Panel):
    """The last preview of the active strip: the engine's painting of one frame."""
    bl_label = "Preview"
    bl_parent_id = "VSE_STYLE_PT_stylize"

    @classmethod
    def poll(cls, context):
        strip = _strip(context)
        return strip is not None and preview.state.strip == strip.name

    def draw(self, context):
        layout = self.layout
        state = preview.state
        if state.icon_id and not state.error:  # the last painting stays while the next one is made
            layout.template_icon(icon_value=state.icon_id, scale=8.0)
        icon = 'ERROR' if state.error else ('TIME' if state.busy else 'IMAGE_DATA')
        layout.label(text=state.text, icon=icon)
        if state.size[0] and not state.busy:
            layout.label(text=f"Full size: the image '{preview.IMAGE_NAME}' in an Image Editor", icon='INFO')


class StripPanel(SidebarPanel):
    """A sub-panel of the active strip's settings (nothing to show without one)."""

    @classmethod
    def poll(cls, context):
        return _strip(context) is not None


class VSE_STYLE_PT_options(StripPanel, bpy.types.Panel):
    bl_label = "Options"
    bl_parent_id = "VSE_STYLE_PT_stylize"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = _strip(context).vse_style
        layout.row().prop(settings, "preset", expand=True)
        for name in ("mode", "width", "style_strength", "brush_scale", "preserve_colors", "frame_range",
                     "replace_result"):
            layout.prop(settings, name)


class VSE_STYLE_PT_advanced(StripPanel, bpy.types.Panel):
    """What only some editors change: iterations, the start, temporal weight, optical flow, the output folder."""
    bl_label = "Advanced"
    bl_parent_id = "VSE_STYLE_PT_options"
    bl_options = {'DEFAULT_CLOSED'}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = _strip(context).vse_style
        names = ("flow",) if settings.mode == "fast" else ("iterations", "start", "temporal_weight", "flow")
        for name in names:
            layout.prop(settings, name)
        layout.prop(compat.sequencer_scene(context), "vse_style_output")


class VSE_STYLE_PT_jobs(SidebarPanel, bpy.types.Panel):
    bl_label = "Jobs"

    def draw(self, context):
        layout = self.layout
        scene = compat.sequencer_scene(context)
        layout.template_list("VSE_STYLE_UL_jobs", "", scene, "vse_style_jobs", scene, "vse_style_job_index", rows=3)
        index = scene.vse_style_job_index
        for i, other in enumerate(scene.vse_style_jobs):  # every running job's progress, whichever is selected
            if i != index and jobs.get_run(other.uid) is not None:
                layout.progress(factor=other.progress, type='BAR', text=f"{other.name}: {other.progress_text}")
        if not 0 <= index < len(scene.vse_style_jobs):
            return
        record = scene.vse_style_jobs[index]
        state = jobs.display_state(record)
        if jobs.get_run(record.uid) is not None:
            layout.progress(factor=record.progress, type='BAR', text=record.progress_text or state)
        if record.error:
            layout.label(text=record.error, icon='ERROR')
        row = layout.row(align=True)
        if state == "done":
            row.operator("vse_style.job_import", icon='IMPORT').uid = record.uid
        elif state in ("interrupted", "cancelled", "failed"):
            if state == "interrupted":
                row.operator("vse_style.job_resume", icon='PLAY').uid = record.uid
            elif record.job_id:  # Continue attaches when the engine never stopped it (a lost connection)
                row.operator("vse_style.job_continue", icon='PLAY').uid = record.uid
            if record.finished:
                row.operator("vse_style.job_import_finished", icon='IMPORT', text="Import Finished").uid = record.uid
        elif state not in jobs.FINAL_STATES:
            row.operator("vse_style.cancel", icon='CANCEL').uid = record.uid
        row.operator("vse_style.job_remove", icon='X', text="").uid = record.uid


CLASSES = (VSE_STYLE_UL_slots, VSE_STYLE_UL_jobs, VSE_STYLE_PT_stylize, VSE_STYLE_PT_preview, VSE_STYLE_PT_options,
           VSE_STYLE_PT_advanced, VSE_STYLE_PT_jobs)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
