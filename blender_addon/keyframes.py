"""Style weights over time: sampling them per frame, carrying their keys to another strip, and keeping
keys with their slot when slots are removed or reordered.

Weights are keyed in scene time on the scene's action (see props.py), so a frame's weight is the
F-curve evaluated at that scene frame, wherever the strip sits and however it is trimmed.
"""
from . import compat
from .props import weight_prop

# Keyframe attributes copied one to one (co and handles are set first).
KEY_ATTRS = ("interpolation", "easing", "handle_left_type", "handle_right_type", "amplitude", "back",
             "period", "type")


def weight_path(strip, index: int) -> str:
    return f"{strip.path_from_id()}.{weight_prop(index)}"


def weight_curve(scene, strip, index: int):
    """The F-curve of slot ``index``'s weight, or None when it is not animated."""
    curve = compat.find_fcurve(scene, weight_path(strip, index))
    if curve is None or curve.mute or (not curve.keyframe_points and not curve.modifiers):
        return None
    return curve


def sample_weights(scene, strip, frames) -> list:
    """Per scene frame, the weight of every style slot (clamped to >= 0: Bezier keys can overshoot)."""
    count = len(strip.vse_style.slots)
    curves = [weight_curve(scene, strip, i) for i in range(count)]
    static = [getattr(strip, weight_prop(i)) for i in range(count)]
    return [[max(0.0, float(c.evaluate(frame))) if c else float(s) for c, s in zip(curves, static)]
            for frame in frames]


def copy_weight_keys(scene, source, target, count: int) -> int:
    """Give ``target`` the weights of ``source``'s first ``count`` slots: values and keyframes.
    Returns the number of F-curves copied."""
    copied = 0
    for i in range(count):
        prop = weight_prop(i)
        setattr(target, prop, getattr(source, prop))
        curve = weight_curve(scene, source, i)
        if curve is None or not curve.keyframe_points:
            continue
        # keyframe_insert creates the action, slot and channelbag as this Blender version needs them
        target.keyframe_insert(prop, frame=curve.keyframe_points[0].co[0])
        copy = compat.find_fcurve(scene, weight_path(target, i))
        _copy_curve(curve, copy)
        copied += 1
    return copied


def _copy_curve(src, dst):
    points = dst.keyframe_points
    points.clear()
    points.add(len(src.keyframe_points))
    for a, b in zip(src.keyframe_points, points):
        b.co = a.co
        b.handle_left, b.handle_right = a.handle_left, a.handle_right
        for attr in KEY_ATTRS:
            setattr(b, attr, getattr(a, attr))
    dst.extrapolation = src.extrapolation
    dst.update()


def remove_slot(scene, strip, index: int):
    """Remove slot ``index`` with its weight keys; later slots move down one, keys included."""
    count = len(strip.vse_style.slots)
    curve = compat.find_fcurve(scene, weight_path(strip, index))
    if curve is not None:
        compat.remove_fcurve(scene, curve)
    for i in range(index + 1, count):
        _rename(scene, strip, i, i - 1)
    strip.vse_style.slots.remove(index)


def swap_slots(scene, strip, a: int, b: int):
    """Swap slots ``a`` and ``b``: their paintings, weights and weight keys."""
    slots = strip.vse_style.slots
    for prop in slots[a].bl_rna.properties:
        if prop.identifier != "rna_type" and not prop.is_readonly:
            name = prop.identifier
            va, vb = getattr(slots[a], name), getattr(slots[b], name)
            setattr(slots[a], name, vb)
            setattr(slots[b], name, va)
    curve_a = compat.find_fcurve(scene, weight_path(strip, a))
    curve_b = compat.find_fcurve(scene, weight_path(strip, b))
    if curve_a is not None:
        curve_a.data_path = weight_path(strip, b)
    if curve_b is not None:
        curve_b.data_path = weight_path(strip, a)
    wa, wb = weight_prop(a), weight_prop(b)
    va, vb = getattr(strip, wa), getattr(strip, wb)
    setattr(strip, wa, vb)
    setattr(strip, wb, va)


def _rename(scene, strip, old: int, new: int):
    """Move the weight (value and F-curve) of index ``old`` to index ``new``."""
    curve = compat.find_fcurve(scene, weight_path(strip, old))
    if curve is not None:
        curve.data_path = weight_path(strip, new)
    setattr(strip, weight_prop(new), getattr(strip, weight_prop(old)))
