"""Data the add-on stores in the .blend: style slots and options per strip, jobs per scene.

Style weights are plain float properties registered directly on the strip class
(``strip.vse_style_w0`` ...): Blender can only keyframe properties it can build an animation path to,
and property groups hung on a strip have none. Directly on the strip they animate like opacity does:
I over the field, the dope sheet and graph editor work, and renaming or moving the strip carries its
keys along.
"""
import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from .compat import RELATIVE_PATH, STRIP_TYPE

MAX_STYLES = 16  # the engine's default max_styles
OUTPUT_DIR = "//stylized/"

PRESETS = {  # quality preset -> the options it sets (the editor may change them afterwards)
    "INSTANT": {"mode": "fast", "width": 0},
    "PREVIEW": {"mode": "temporal", "width": 480, "iterations": 100},
    "FINAL": {"mode": "temporal", "width": 0, "iterations": 1000},
}
# A preview should take seconds a frame on the engine that makes it: smaller on a CPU, larger on a GPU.
DEVICE_PREVIEWS = {"cpu": {"mode": "temporal", "width": 320, "iterations": 50},
                   "cuda": {"mode": "temporal", "width": 960, "iterations": 100}}


def preset_values(name: str) -> dict | None:
    """What preset ``name`` sets, for the engine last spoken to (its device's Preview)."""
    from . import engine_link

    device = engine_link.last_device.split(":")[0].split()[0] if engine_link.last_device else ""
    if name == "PREVIEW" and device in DEVICE_PREVIEWS:
        return DEVICE_PREVIEWS[device]
    return PRESETS.get(name)


def weight_prop(index: int) -> str:
    """Name of the strip property holding style slot ``index``'s weight."""
    return f"vse_style_w{index}"


class VSE_STYLE_PG_slot(bpy.types.PropertyGroup):
    image: StringProperty(name="Painting", subtype='FILE_PATH', options=RELATIVE_PATH,
                          description="Image file of the style painting")


_applying = False  # a preset is setting its values: they are not the editor's own changes


def _apply_preset(self, _context):
    global _applying
    values = preset_values(self.preset)
    if values is None:  # Custom: the values stay as they are
        return
    _applying = True
    try:
        for key, value in values.items():
            setattr(self, key, value)
    finally:
        _applying = False


def _leave_preset(self, _context):
    """Editing a value the preset set makes the settings Custom (the preset no longer describes them)."""
    preset = preset_values(self.preset)
    if not _applying and preset is not None and any(getattr(self, k) != v for k, v in preset.items()):
        self.preset = "CUSTOM"


class VSE_STYLE_PG_strip(bpy.types.PropertyGroup):
    key: StringProperty(options={'HIDDEN'})  # a stable identity: finds the strip again after a rename
    slots: CollectionProperty(type=VSE_STYLE_PG_slot)
    active_slot: IntProperty(name="Active Style")
    preset: EnumProperty(
        name="Quality", default="PREVIEW", update=_apply_preset,
        items=[("INSTANT", "Instant", "The feed-forward network at source resolution, steadied along the motion: "
                                      "seconds per frame on a CPU, many frames per second on a GPU"),
               ("PREVIEW", "Preview", "Optimized, small: 480 px wide, 100 iterations per frame (320 px and 50 "
                                      "iterations on a CPU engine, 960 px on a GPU one)"),
               ("FINAL", "Final", "Optimized at source resolution, 1000 iterations per frame (2000 for the "
                                  "first)"),
               ("CUSTOM", "Custom", "Your own method, width and iterations (set when you change a preset's)")])
    mode: EnumProperty(
        name="Method", default="temporal", update=_leave_preset,
        items=[("fast", "Instant", "Ghiasi et al.'s arbitrary-style network, one pass per frame, steadied along "
                                   "the optical flow"),
               ("temporal", "Optimized", "Ruder et al.'s optimization: closest to the paintings, with temporal "
                                         "consistency; minutes per frame on a CPU, seconds on a GPU")])
    width: IntProperty(name="Width", default=480, min=0, max=8192, subtype='PIXEL', update=_leave_preset,
                       description="Processing width in pixels (0: the source's own); the height keeps "
                                   "the aspect ratio")
    iterations: IntProperty(name="Iterations", default=100, min=1, max=5000, update=_leave_preset,
                            description="Optimizer iterations per frame (the first frame gets twice as many)")
    start: EnumProperty(
        name="Start From", default="fast",
        items=[("fast", "Painting", "Each shot, and what the motion uncovers, starts from the instant network's "
                                    "painting: a lower loss in the same time (the engine's default)"),
               ("content", "Footage", "Start from the footage itself, as Ruder et al.'s reference does: more "
                                      "iterations for the same loss")])
    temporal_weight: FloatProperty(name="Temporal Weight", default=1000.0, min=0.0, soft_max=10000.0,
                                   description="How strongly each frame follows the previous stylized "
                                               "frames along the optical flow (less flicker)")
    frame_range: EnumProperty(
        name="Frames", default="STRIP",
        items=[("STRIP", "Whole Strip", "Every frame of the strip that shows in the edit"),
               ("PREVIEW", "Preview Range", "Only the strip's frames inside the scene's preview range (Timeline: "
                                            "View > Set Preview Range, or P)")])
    replace_result: BoolProperty(
        name="Replace Previous Result", default=False,
        description="Put the new result where this strip's last result was, and remove that one, instead of "
                    "stacking a new strip on the next free channel")
    style_strength: FloatProperty(
        name="Style Strength", default=1.0, min=0.1, max=10.0, soft_min=0.25, soft_max=4.0,
        description="How far the result goes from the footage toward the paintings: below 1 keeps more of the "
                    "footage, above 1 paints more over it")
    brush_scale: FloatProperty(
        name="Brush Scale", default=1.0, min=0.25, max=4.0,
        description="Size of the paintings' brush strokes on the frame: 2 paints strokes twice as large")
    preserve_colors: BoolProperty(name="Preserve Colors", default=False,
                                  description="Transfer the painting's brush work only, keep the footage's "
                                              "colours")
    flow: EnumProperty(
        name="Flow", default="dis",
        items=[("dis", "DIS", "OpenCV DIS optical flow: fast on the CPU"),
               ("farneback", "Farneback", "OpenCV Farneback optical flow"),
               ("raft", "RAFT", "torchvision RAFT (needs its weights on the engine machine)")])


class VSE_STYLE_PG_job(bpy.types.PropertyGroup):
    """One stylize job of this file, kept so it can be re-imported or resumed after a restart."""
    uid: StringProperty()          # local id, known before the engine assigns job_id
    job_id: StringProperty()       # the engine's id ("" until the engine accepted the job)
    token: StringProperty()        # the owner's secret the job was submitted with (engine_link.owner_token)
    name: StringProperty()         # label: the source strip's name when submitted
    source: StringProperty()       # source strip name when last seen (found by source_key after a rename)
    source_key: StringProperty()   # the source's vse_style.key
    source_frame_start: FloatProperty()  # the source's frame_start at submit: how far it moved since
    state: StringProperty(default="exporting")
    frame_start: IntProperty()     # first scene frame of the source's visible range
    frame_count: IntProperty()
    channel: IntProperty()         # the source's channel
    out_dir: StringProperty(subtype='DIR_PATH', options=RELATIVE_PATH)  # stylized frames: //stylized/...
    width: IntProperty()
    height: IntProperty()
    source_size: bpy.props.IntVectorProperty(size=2)  # source media pixels, to place the result like it
    rendered: BoolProperty()       # exported by rendering the sequencer (else read from the source)
    finished: IntProperty()
    progress: FloatProperty(min=0.0, max=1.0, subtype='FACTOR')
    progress_text: StringProperty()
    error: StringProperty()
    result: StringProperty()       # name of the imported strip
    replace: BoolProperty()        # the result replaces the source's previous result
    partial: BoolProperty()        # the imported result holds only the frames finished so far
    summary: StringProperty()      # the settings in a few words, for the jobs list
    created: FloatProperty()


def copy_group(source, target):
    """Copy every property of a property group (recursively) from ``source`` to ``target``."""
    for prop in source.bl_rna.properties:
        name = prop.identifier
        if name == "rna_type":
            continue
        if prop.type == 'COLLECTION':
            items = getattr(target, name)
            items.clear()
            for item in getattr(source, name):
                copy_group(item, items.add())
        elif prop.type == 'POINTER':
            copy_group(getattr(source, name), getattr(target, name))
        elif not prop.is_readonly:  # declaration order: preset comes before the fields it sets
            setattr(target, name, getattr(source, name))


CLASSES = (VSE_STYLE_PG_slot, VSE_STYLE_PG_strip, VSE_STYLE_PG_job)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    _register_classes()
    STRIP_TYPE.vse_style = PointerProperty(type=VSE_STYLE_PG_strip)
    for i in range(MAX_STYLES):
        setattr(STRIP_TYPE, weight_prop(i), FloatProperty(
            name=f"Style {i + 1} Weight", default=1.0, min=0.0, soft_max=1.0,
            description="Weight of this painting in the frame's style blend; keyframe it (I) to make "
                        "style transitions"))
    scene = bpy.types.Scene
    scene.vse_style_jobs = CollectionProperty(type=VSE_STYLE_PG_job)
    scene.vse_style_job_index = IntProperty(name="Active Job")
    scene.vse_style_output = StringProperty(
        name="Output", default=OUTPUT_DIR, subtype='DIR_PATH', options=RELATIVE_PATH,
        description="Folder for stylized frames; '//' is the folder of the .blend file")


def unregister():
    scene = bpy.types.Scene
    for name in ("vse_style_output", "vse_style_job_index", "vse_style_jobs"):
        delattr(scene, name)
    for i in range(MAX_STYLES):
        delattr(STRIP_TYPE, weight_prop(i))
    del STRIP_TYPE.vse_style
    _unregister_classes()
