"""The few sequencer and animation APIs that changed between Blender 4.2 LTS and 5.0.

4.2-4.4 call strips "sequences" (``sequences``/``sequences_all``, ``bpy.types.Sequence``) and keep
F-curves in ``action.fcurves``; 5.0 has ``strips``/``strips_all``/``bpy.types.Strip`` and keeps
F-curves in the channelbag of the action slot the ID uses (slotted actions, 4.4+).
"""
import bpy

# The RNA base class of every strip; the add-on's per-strip properties are registered on it.
STRIP_TYPE = getattr(bpy.types, "Strip", None) or bpy.types.Sequence


def strips(container):
    """Top-level strips of a SequenceEditor, or the children of a meta strip."""
    return container.strips if hasattr(container, "strips") else container.sequences


def strips_all(editor):
    """Every strip of a SequenceEditor, including those inside meta strips."""
    return editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all


def new_effect(collection, name, effect_type, channel, frame_start, length, inputs=()):
    """``new_effect`` takes ``length``/``input1`` in 5.0 and ``frame_end``/``seq1`` before."""
    params = collection.bl_rna.functions["new_effect"].parameters.keys()
    kwargs = {}
    if "length" in params:
        kwargs["length"] = length
        names = ("input1", "input2")
    else:
        kwargs["frame_end"] = frame_start + length
        names = ("seq1", "seq2")
    kwargs.update(zip(names, inputs))
    return collection.new_effect(name=name, type=effect_type, channel=channel, frame_start=frame_start,
                                 **kwargs)


def container_of(editor, strip):
    """The collection holding ``strip``: its meta strip's children or the editor's top level."""
    meta = strip.parent_meta() if hasattr(strip, "parent_meta") else None
    return strips(meta) if meta is not None else strips(editor)


def fcurves(id_data):
    """The F-curves animating ``id_data`` (empty when it has no action)."""
    anim = id_data.animation_data
    if anim is None or anim.action is None:
        return ()
    if hasattr(anim, "action_slot"):  # slotted actions (4.4+); the only way in 5.0
        from bpy_extras.anim_utils import action_get_channelbag_for_slot
        bag = action_get_channelbag_for_slot(anim.action, anim.action_slot)
        return bag.fcurves if bag is not None else ()
    return anim.action.fcurves


def find_fcurve(id_data, data_path, index=0):
    curves = fcurves(id_data)
    if hasattr(curves, "find"):
        return curves.find(data_path, index=index)
    return next((c for c in curves if c.data_path == data_path and c.array_index == index), None)


def remove_fcurve(id_data, curve):
    fcurves(id_data).remove(curve)


# Options for file path properties that may hold '//' (blend-relative) paths: newer versions warn
# about such paths unless the property says it supports them; older ones do not know the option.
RELATIVE_PATH = ({'PATH_SUPPORTS_BLEND_RELATIVE'}
                 if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties else set())


def sequencer_scene(context):
    """The scene the Sequencer shows: 5.0 lets a workspace edit another scene than the window's
    (``context.sequencer_scene``); before 5.0, and when the workspace has none, it is the window's."""
    return getattr(context, "sequencer_scene", None) or context.scene
