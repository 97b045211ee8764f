"""Where the add-on finds the ``vse_style_shared`` package (wire protocol and client).

The extension zip bundles a copy as the subpackage ``vse_style_shared`` (build_addon.py puts it there);
a source checkout (tests, development) imports the package installed in the environment.
"""
import importlib

BUNDLED = f"{__package__}.vse_style_shared"


def load(module: str):
    """Import ``vse_style_shared.<module>``, the bundled copy first."""
    try:
        return importlib.import_module(f"{BUNDLED}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in (BUNDLED, f"{BUNDLED}.{module}"):
            raise  # the bundled copy is there but misses a dependency (zmq, msgpack): say so
    return importlib.import_module(f"vse_style_shared.{module}")
