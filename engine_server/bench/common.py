"""What the benchmarks share: the test material in ../shared/data, timing a run, printing a table."""
from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..io.flowfiles import read_flo
from ..io.frames import read_image, resize
from ..metrics import inside_mask
from ..motion.warp import warp_numpy
from ..pipeline import StylizeOptions, Stylizer

# ../shared/data beside the project, or where VSE_STYLE_DATA points
DATA = Path(os.environ.get("VSE_STYLE_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


def resident_mib() -> float | None:
    """The process's resident memory (Linux), None elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20
    except OSError:
        return None


def tree_resident_mib(root: int | None = None) -> float | None:
    """Resident memory of a process and every process under it (Linux), None elsewhere: for a local Ray
    runtime, the driver, Ray's own processes and every worker. Pages shared between them count in each."""
    root = os.getpid() if root is None else root
    try:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue  # gone meanwhile
        tree, grew = {root}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree |= more
            grew = bool(more)
        pages = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/statm") as statm:
                    pages += int(statm.read().split()[1])
            except OSError:
                continue
        return pages * 4096 / 2**20
    except OSError:
        return None


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def scale_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = flow.shape[:2]
    known = np.all(np.abs(flow) < 1e9, axis=2)
    flow = np.where(known[..., None], flow, 0.0).astype(np.float32)
    resized = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR)
    resized[..., 0] *= size[0] / w
    resized[..., 1] *= size[1] / h
    return resized


def sintel(size: tuple[int, int] | None, width: int):
    folder = DATA / "flow" / "sintel_alley_1"
    frames = [read_image(folder / f"frame_{i:04d}.png") for i in range(1, 5)]
    if size is None:
        size = (width, round(frames[0].shape[0] * width / frames[0].shape[1]))
    frames = [resize(f, size) for f in frames]
    flows, masks = [], []
    for i in range(1, 4):
        flow = scale_flow(read_flo(folder / f"flow_{i:04d}_to_{i + 1:04d}.flo"), size)
        mask = inside_mask(flow)
        occlusion = folder / f"occlusion_{i:04d}_to_{i + 1:04d}.png"
        if occlusion.exists():
            occluded = cv2.resize(cv2.imread(str(occlusion), cv2.IMREAD_GRAYSCALE), size,
                                  interpolation=cv2.INTER_NEAREST) > 127
            mask *= ~occluded
        else:
            error = np.abs(frames[i - 1].astype(np.float32) - warp_numpy(frames[i], flow)).mean(axis=2)
            mask *= error < 12
        flows.append(flow)
        masks.append(mask)
    return frames, flows, masks, size


def run_mode(styles, frames, options: StylizeOptions):
    stylizer = Stylizer(styles, options)
    if stylizer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    results = sorted(stylizer.run(frames), key=lambda r: r.index)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if stylizer.device.type == "cuda" else None
    return results, seconds, peak


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
