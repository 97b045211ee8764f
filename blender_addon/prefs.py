"""Add-on preferences: how to reach the engine."""
import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty

ADDON = __package__  # "bl_ext.<repo>.vse_style_transfer" when installed, "blender_addon" from source


class VSE_STYLE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON

    engine_mode: EnumProperty(
        name="Engine", default="LOCAL",
        items=[("LOCAL", "Local", "Start and stop an engine on this computer, with the Python interpreter "
                                  "of an environment where the engine is installed"),
               ("REMOTE", "Remote", "Use an engine that runs elsewhere (address and keys)")])
    python: StringProperty(
        name="Engine Python", subtype='FILE_PATH',
        description="Python interpreter of the environment where the engine (engine_server) is installed, "
                    "e.g. .venv/bin/python of the project")
    port: IntProperty(name="Port", default=5591, min=1024, max=65535,
                      description="Loopback port of the local engine; an engine already answering there "
                                  "is used as it is")
    jobs_dir: StringProperty(
        name="Jobs Folder", subtype='DIR_PATH',
        description="Where the local engine keeps its jobs, so they survive a restart "
                    "(empty: the extension's user folder)")
    address: StringProperty(name="Address", default="tcp://127.0.0.1:5555",
                            description="ZeroMQ address of the remote engine")
    keys_dir: StringProperty(
        name="Keys Folder", subtype='DIR_PATH',
        description="Folder written by 'python -m engine_server keygen' with server.key and "
                    "client.key_secret (needed for engines on other machines)")
    timeout: FloatProperty(name="Timeout", default=10.0, min=0.5, max=600.0,
                           description="Seconds to wait for an answer from the engine")
    status: StringProperty(name="Status", description="Result of the last connection test")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.row().prop(self, "engine_mode", expand=True)
        if self.engine_mode == "LOCAL":
            layout.prop(self, "python")
            layout.prop(self, "port")
            layout.prop(self, "jobs_dir")
        else:
            layout.prop(self, "address")
            layout.prop(self, "keys_dir")
        layout.prop(self, "timeout")
        row = layout.row()
        row.operator("vse_style.test_connection", icon='LINKED')
        if self.status:
            row.label(text=self.status)


def get(context=None):
    """This add-on's preferences."""
    context = context or bpy.context
    return context.preferences.addons[ADDON].preferences


def register():
    bpy.utils.register_class(VSE_STYLE_AP_preferences)


def unregister():
    bpy.utils.unregister_class(VSE_STYLE_AP_preferences)
