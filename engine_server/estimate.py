"""What a job will cost before it starts: seconds and peak memory on this engine's device.

Memory is a per-pixel model, measured (ru_maxrss over the engine's idle size, one frame of 320x180 to
960x540 on the CPU, fp32): the optimization holds about 5 kB per pixel at its full-size level (VGG19's
activations to relu5_1 and their gradients, and L-BFGS's 2 x 100 history vectors of the image), the
feed-forward network about 0.4 kB. The peak is at full size whatever the schedule.

Time is one iteration measured at a small size on the device and scaled by the pixel count (exact on a
CPU, an upper bound on a GPU, where small sizes cost more than their pixels), times each frame's planned
work in full-size iterations (the coarse-to-fine plan's, with the first frame's larger budget). Later
frames are priced at the later count: on still shots they often stop early on their warm start (the job
takes less), while on fast motion a frame's budget rises towards the first frame's with the share of it
the flow cannot carry over (``schedule.warm_iterations``, known only once its flow is; the job takes
more). The progress ETA corrects itself as frames come in.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .optimize import schedule
from .options import FAST_MODES, StylizeOptions

OPTIMIZE_BYTES_PER_PIXEL = 5200
NETWORK_BYTES_PER_PIXEL = 400
FIXED_BYTES = 200 * 2**20          # style targets, flow, buffers that do not grow with the frame
MEASURE_SIZE = (256, 144)          # where one iteration (or one network pass) is timed
MEMORY_MARGIN = 0.85               # of the free memory a job may plan to use


@dataclass(frozen=True)
class Estimate:
    seconds: float              # the whole job
    seconds_per_frame: float
    peak_bytes: int             # beyond what the engine already holds
    available_bytes: int        # free on the device now
    fits: bool
    largest_width: int          # the widest frames of this aspect that would fit

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "seconds_per_frame": round(self.seconds_per_frame, 2),
                "peak_bytes": int(self.peak_bytes), "available_bytes": int(self.available_bytes),
                "fits": self.fits, "largest_width": self.largest_width}


def peak_bytes(frame_size: tuple[int, int], options: StylizeOptions) -> int:
    per_pixel = NETWORK_BYTES_PER_PIXEL if options.mode in FAST_MODES else OPTIMIZE_BYTES_PER_PIXEL
    return FIXED_BYTES + per_pixel * frame_size[0] * frame_size[1]


def available_bytes(device, held: int = 0) -> int:
    """Memory a job will find on the device: CUDA's free bytes plus what PyTorch's allocator keeps
    cached, or the host's available memory plus ``held`` (what a running job holds now: jobs run one
    at a time, so the next one gets it back)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 + held
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) + held


def frame_work(frame_size: tuple[int, int], options: StylizeOptions) -> tuple[float, float]:
    """(first frame, each later frame) in full-size iterations (1 for the network's single pass)."""
    if options.mode in FAST_MODES:
        return 1.0, 1.0
    first, later = options.resolved_iterations()
    work = [schedule.cost(schedule.plan(options.schedule, frame_size, n, options.coarsest_side))
            for n in (first, later)]
    return work[0], work[1]


def estimate_job(frame_size: tuple[int, int], frame_count: int, options: StylizeOptions, unit_seconds: float,
                 device, held: int = 0) -> Estimate:
    """``unit_seconds``: one iteration (or network pass) measured at MEASURE_SIZE on ``device``; ``held``:
    host memory a running job holds now (it is back before a queued job starts)."""
    scale = frame_size[0] * frame_size[1] / (MEASURE_SIZE[0] * MEASURE_SIZE[1])
    per_iteration = unit_seconds * scale
    first, later = frame_work(frame_size, options)
    passes = options.passes if options.mode == "multipass" else 1
    seconds = per_iteration * (first + later * (frame_count - 1)) * passes
    peak, free = peak_bytes(frame_size, options), available_bytes(device, held)
    budget = MEMORY_MARGIN * free - FIXED_BYTES
    per_pixel = (peak - FIXED_BYTES) / (frame_size[0] * frame_size[1])
    largest = int(frame_size[0] * math.sqrt(max(0.0, budget) / per_pixel / (frame_size[0] * frame_size[1])))
    return Estimate(seconds, seconds / frame_count, peak, free, peak <= MEMORY_MARGIN * free,
                    max(0, largest // 2 * 2))


def measure_unit_seconds(options: StylizeOptions, device, vgg_weights: str = "auto") -> float:
    """One iteration (optimization) or one network pass (fast modes) at MEASURE_SIZE on ``device``."""
    import time

    import torch

    from .feedforward.weights import load_arbitrary_style_network
    from .optimize.optimizer import seconds_per_iteration
    from .style.vgg import load_vgg19

    device = torch.device(device)
    if options.mode not in FAST_MODES:
        return seconds_per_iteration(load_vgg19(device, vgg_weights), MEASURE_SIZE, device)
    network = load_arbitrary_style_network(device)
    frame = torch.rand(1, 3, MEASURE_SIZE[1], MEASURE_SIZE[0], device=device)
    style = torch.rand(1, 3, 256, 256, device=device)
    with torch.no_grad():
        vector = network.style_vector(style)
        network.transformer(frame, vector)  # warm-up
        started = time.perf_counter()
        for _ in range(3):
            network.transformer(frame, vector).sum().item()
    return (time.perf_counter() - started) / 3
