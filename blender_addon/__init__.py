"""VSE Style Transfer: stylize sequencer strips with keyframed blends of paintings.

A Blender extension (see blender_manifest.toml). It never imports torch: the engine runs in its own
process (started here, or remote) and is reached through the client of ``vse_style_shared``.
"""
from . import engine_link, jobs, operators, prefs, preview, props, ui

MODULES = (props, prefs, operators, ui, jobs, preview)


def register():
    for module in MODULES:
        module.register()


def unregister():
    for module in reversed(MODULES):
        module.unregister()
    engine_link.stop_local()
