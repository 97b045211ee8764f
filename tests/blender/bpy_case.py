"""Runs one case of cases.py inside a fresh bpy process (bpy is a process-wide singleton).

    python bpy_case.py CASE '{"json": "arguments"}'

Loads the add-on from the source checkout, runs ``cases.CASE(**arguments)`` and prints its result as
one ``RESULT: {...}`` line for the test to assert on. Assertions inside a case fail the process.
"""
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bpy  # noqa: E402
import addon_utils  # noqa: E402  (on the path once bpy is imported)

ADDON = "blender_addon"


def enable():
    """A factory-fresh Blender with the add-on enabled; returns its preferences."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    module = addon_utils.enable(ADDON, default_set=True, handle_error=_raise)
    assert module is not None, "add-on failed to enable"
    workspace = bpy.context.workspace
    if workspace is not None and hasattr(workspace, "sequencer_scene"):
        # 5.0: the scene a Sequencer workspace edits; strip.modifiers.new() crashes without one
        workspace.sequencer_scene = bpy.context.scene
    return bpy.context.preferences.addons[ADDON].preferences


def _raise(exc):
    raise exc


def main():
    import cases
    name, arguments = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    try:
        result = getattr(cases, name)(**arguments)
    finally:
        if ADDON in bpy.context.preferences.addons:  # stops a local engine the add-on started
            addon_utils.disable(ADDON, default_set=True)
    print("RESULT: " + json.dumps(result if result is not None else {}), flush=True)


if __name__ == "__main__":
    code = 0
    try:
        main()
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # bpy 4.2 as a module crashes in its exit handlers once a Python update callback was registered
    # (SpaceType teardown after the interpreter is gone); real Blender does not exit that way.
    os._exit(code)
