"""The engine's layout rules, read from the source: dependencies point one way and nothing imports in a
cycle, so each sub-package can be understood (and changed) without the ones above it.

    io  <-  motion, style  <-  optimize, feedforward  <-  pipeline  <-  scale  <-  serve (public API only), cli,
    bench, demo
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine_server"
SERVICE_LIBRARIES = {"zmq", "msgpack", "vse_style_shared"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (function-level imports included), absolute."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import temporal`
    return found


MODULES = {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (ENGINE / parts[1]).is_dir() else "top"


def test_the_layout_is_read_from_the_real_tree():
    assert {"engine_server.pipeline", "engine_server.io.frames", "engine_server.motion.flow",
            "engine_server.style.vgg", "engine_server.optimize.optimizer", "engine_server.serve.server"} <= set(MODULES)
    assert "engine_server.motion.temporal" in GRAPH["engine_server.pipeline"]
    assert "engine_server.style.losses" in GRAPH["engine_server.optimize.objective"]


def test_no_import_cycles():
    visiting, done = [], set()

    def visit(name):
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        visiting.append(name)
        for dep in sorted(GRAPH[name]):
            if dep != "engine_server" and not name.startswith(dep + "."):  # a package's own __init__
                visit(dep)
        visiting.pop()
        done.add(name)

    for name in GRAPH:
        visit(name)


ALLOWED_LAYERS = {
    "io": {"io"},
    "motion": {"io", "motion"},
    "style": {"io", "style"},
    "optimize": {"io", "motion", "style", "optimize"},
    "feedforward": {"io", "motion", "style", "feedforward"},
}


@pytest.mark.parametrize("package", sorted(ALLOWED_LAYERS))
def test_algorithm_packages_depend_only_on_lower_layers(package):
    for name in (m for m in MODULES if layer(m) == package):
        for dep in GRAPH[name]:
            if dep in ("engine_server", "engine_server.errors", f"engine_server.{package}"):
                continue
            assert layer(dep) in ALLOWED_LAYERS[package], f"{name} imports {dep}"


def test_the_algorithm_never_imports_the_service():
    algorithm = [m for m in MODULES if layer(m) in ALLOWED_LAYERS or m in (
        "engine_server.pipeline", "engine_server.options", "engine_server.errors", "engine_server.metrics")]
    assert len(algorithm) > 15
    for name in algorithm:
        imported = imports_of(MODULES[name])
        assert not {m.split(".")[0] for m in imported} & SERVICE_LIBRARIES, f"{name} imports a service library"
        assert not any(m.startswith("engine_server.serve") for m in imported), f"{name} imports the service"
        assert "bpy" not in {m.split(".")[0] for m in imported}


def test_the_scale_out_sits_between_the_algorithm_and_the_service():
    scale = [m for m in MODULES if layer(m) == "scale"]
    assert len(scale) >= 4
    for name in scale:
        imported = imports_of(MODULES[name])
        assert not {m.split(".")[0] for m in imported} & SERVICE_LIBRARIES, f"{name} imports a service library"
        for forbidden in ("engine_server.serve", "engine_server.cli", "engine_server.bench", "engine_server.demo"):
            assert not any(m == forbidden or m.startswith(forbidden + ".") for m in imported), f"{name} imports {forbidden}"
    # Ray is optional: nothing imports it at module level, so the engine runs without the [ray] extra
    for name, path in MODULES.items():
        top_level = [node for node in ast.parse(path.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert not any(alias.name.split(".")[0] == "ray" for node in top_level for alias in node.names
                       if isinstance(node, ast.Import)), f"{name} imports ray at module level"
        assert not any(isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray"
                       for node in top_level), f"{name} imports from ray at module level"


def test_the_service_uses_the_algorithm_only_through_the_public_api():
    import engine_server

    public = {f"engine_server.{name}" for name in [*engine_server.__all__, "__version__"]}
    allowed = ("engine_server.errors", "engine_server.options", "engine_server.arguments", "engine_server.io",
               "engine_server.serve")
    service = [m for m in MODULES if layer(m) == "serve"]
    assert len(service) >= 6
    for name in service:
        for dep in imports_of(MODULES[name]):
            if dep == "engine_server" or not dep.startswith("engine_server"):
                continue
            assert dep in public or dep in allowed or dep.startswith(tuple(a + "." for a in allowed)), \
                f"{name} imports {dep}"


def test_the_public_api_is_still_exported():
    import engine_server

    for name in ("stylize", "Stylizer", "StylizeOptions", "FrameResult", "Progress", "Cancelled", "InputError"):
        assert hasattr(engine_server, name), name


def test_shared_and_addon_never_import_torch_or_the_engine():
    for folder in ("shared", "blender_addon"):
        for path in (ROOT / folder).rglob("*.py"):
            tops = {m.split(".")[0] for m in imports_of(path)}
            assert not tops & {"torch", "torchvision", "engine_server", "cv2"}, f"{path} imports {tops}"
