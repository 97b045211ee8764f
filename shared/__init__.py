"""vse_style_shared: what the Blender add-on and the engine both import.

Pure Python (no torch, no bpy). Installed from the repository's ``shared/`` folder under the
distinctive import name ``vse_style_shared``. ``protocol`` defines the messages (and PROTOCOL_VERSION),
``client`` talks to an engine.
"""
