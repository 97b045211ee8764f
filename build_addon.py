"""Build the Blender extension: one zip per platform in dist/, each validated by Blender's own tool.

    python build_addon.py                          # linux-x64, macos-arm64, macos-x64, windows-x64
    python build_addon.py --platform linux-x64     # just one (repeatable)

Each zip holds blender_addon/, a copy of shared/ as the subpackage ``vse_style_shared``, and the
pyzmq and msgpack wheels (versions from constraints.txt) for that platform and Blender's Python 3.11
(Blender 4.2 to 5.0). Wheels are downloaded with pip once and cached in build/wheels/. Blender's
extension tool (``blender_ext.py``, shipped inside the bpy wheel) builds and validates the zips, so no
Blender binary is needed.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "blender_addon"
SHARED = ROOT / "shared"
PYTHON_VERSION = "3.11"  # Blender 4.2 LTS to 5.0
PACKAGES = ("pyzmq", "msgpack")
# Blender platform -> the pip platform tag to download for (pip also accepts older compatible tags,
# e.g. manylinux2014 for manylinux_2_28, universal2 for the macOS ones).
PLATFORMS = {
    "linux-x64": "manylinux_2_28_x86_64",
    "macos-arm64": "macosx_11_0_arm64",
    "macos-x64": "macosx_10_15_x86_64",
    "windows-x64": "win_amd64",
}


def pinned_versions(constraints: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """{package: version} of PACKAGES as pinned in constraints.txt (the versions CI tests)."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", constraints.read_text(), re.M))
    missing = [p for p in PACKAGES if p not in pins]
    if missing:
        raise SystemExit(f"constraints.txt pins no version of {', '.join(missing)}")
    return {p: pins[p] for p in PACKAGES}


def wheels_for(platform: str, versions: dict[str, str], cache: Path) -> list[Path]:
    """The platform's wheels from the cache, downloading what is missing."""
    folder = cache / platform

    def found():
        return [w for p, v in versions.items() for w in sorted(folder.glob(f"{p}-{v}-*.whl"))]

    if len({w.name.split("-")[0] for w in found()}) < len(versions):
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                   "--python-version", PYTHON_VERSION, "--implementation", "cp",
                   "--abi", "cp" + PYTHON_VERSION.replace(".", ""), "--platform", PLATFORMS[platform],
                   "--dest", str(folder), *(f"{p}=={v}" for p, v in versions.items())]
        print(f"downloading wheels for {platform}", flush=True)
        subprocess.run(command, check=True)
    wheels = found()
    if len(wheels) != len(versions):
        raise SystemExit(f"expected one wheel per package for {platform} in {folder}, found {wheels}")
    return wheels


def blender_ext() -> Path:
    """Blender's extension command line tool inside the installed bpy wheel."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the bpy wheel is not installed: pip install bpy==5.0.1 (Python 3.11)")
    for folder in spec.submodule_search_locations:
        tools = sorted(Path(folder).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if tools:
            return tools[-1]
    raise SystemExit("blender_ext.py not found inside the bpy wheel")


def stage(folder: Path, platforms: list[str], wheels: list[Path]) -> None:
    """The extension's source tree: add-on, bundled shared package, wheels, manifest listing them."""
    shutil.copytree(ADDON, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "vse_style_shared"))
    bundled = folder / "vse_style_shared"
    bundled.mkdir()
    for source in sorted(SHARED.glob("*.py")):
        shutil.copy2(source, bundled / source.name)
    (folder / "wheels").mkdir()
    for wheel in wheels:
        shutil.copy2(wheel, folder / "wheels" / wheel.name)
    manifest = (ADDON / "blender_manifest.toml").read_text()
    listed = "".join(f'    "./wheels/{w.name}",\n' for w in wheels)
    manifest = re.sub(r"^platforms = .*$", "platforms = [" + ", ".join(f'"{p}"' for p in platforms) + "]\n"
                      f"wheels = [\n{listed}]", manifest, count=1, flags=re.M)
    (folder / "blender_manifest.toml").write_text(manifest)


def run_tool(tool: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"blender_ext {args[0]} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def build(platforms: list[str], dist: Path, cache: Path) -> list[Path]:
    versions = pinned_versions()
    by_name = {w.name: w for p in platforms for w in wheels_for(p, versions, cache)}  # universal2: once
    wheels = [by_name[name] for name in sorted(by_name)]
    tool = blender_ext()
    dist.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vse_style_build_") as temp:
        source, output = Path(temp) / "vse_style_transfer", Path(temp) / "out"
        stage(source, platforms, wheels)
        output.mkdir()
        run_tool(tool, "build", "--source-dir", str(source), "--output-dir", str(output), "--split-platforms")
        zips = []
        for built in sorted(output.glob("*.zip")):
            run_tool(tool, "validate", str(built))
            target = dist / built.name
            shutil.move(built, target)
            zips.append(target)
    if len(zips) != len(platforms):
        raise SystemExit(f"expected {len(platforms)} zips, Blender's tool built {[z.name for z in zips]}")
    return zips


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                        help="build for this platform only (repeatable; default: all four)")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default dist/)")
    parser.add_argument("--wheels", type=Path, default=ROOT / "build" / "wheels",
                        help="wheel cache (default build/wheels/)")
    args = parser.parse_args(argv)
    for path in build(args.platform or list(PLATFORMS), args.dist, args.wheels):
        print(f"built and validated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
