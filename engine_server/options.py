"""What a stylize run is asked to do: :class:`StylizeOptions`, shared by the CLI, the API and the engine
server's jobs. Plain data (no torch), so front ends can build and check options without the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

MODES = ("temporal", "per-frame", "multipass", "fast", "fast-per-frame")
FAST_MODES = ("fast", "fast-per-frame")  # the feed-forward network: stabilized along the flow, or raw
INITS = ("content", "noise", "fast")     # fast: the feed-forward network's painting of the frame
SCHEDULES = ("pyramid", "reference")  # engine_server.optimize.schedule implements them
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 on CUDA, fp32 on the CPU


@dataclass
class StylizeOptions:
    mode: str = "temporal"
    width: int | None = None                 # processing width; None: the frames' own size
    iterations: int | None = None            # later frames (per pass in multipass); None: mode default
    first_iterations: int | None = None      # first frame (every frame in per-frame mode)
    passes: int = 15                         # multipass
    schedule: str = "pyramid"                # "pyramid" (coarse to fine) or "reference" (flat, full size)
    coarsest_side: int | None = None         # pyramid: short side of the coarsest level; None: automatic
    content_weight: float = 5.0
    style_weight: float = 1e2
    temporal_weight: float = 1e3
    multipass_temporal_weight: float = 5e2
    tv_weight: float = 1e-3
    long_term: tuple[int, ...] = (1, 2, 4)   # frame distances J of the temporal constraints
    optimizer: str = "lbfgs"
    learning_rate: float = 10.0
    early_stop: bool = True
    # first frame (and untrusted pixels later): fast (the network's painting: a lower loss in the same time,
    # README "Instant modes"), content (the reference's start) or noise
    init: str = "fast"
    style_scale: float = 1.0
    preserve_colors: bool = False
    flow: str = "dis"
    device: str = "auto"
    seed: int = 0
    vgg_weights: str = "auto"
    precision: str = "auto"                  # VGG's convolutions: "bf16" (mixed, CUDA's default) or "fp32"
    cuda_graphs: bool = False                # CUDA, L-BFGS: replay each iteration from a recorded CUDA graph

    def resolved_iterations(self) -> tuple[int, int]:
        """(first-frame, later-frame) iterations: the reference's 2000 / 1000, or 100 per pass."""
        later = self.iterations or (100 if self.mode == "multipass" else 1000)
        first = self.first_iterations or (later if self.mode == "multipass" else 2 * later)
        return first, later

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"--mode {self.mode}: expected one of {', '.join(MODES)}")
        if self.init not in INITS:
            raise InputError(f"--init {self.init}: expected one of {', '.join(INITS)}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"--schedule {self.schedule}: expected one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if self.coarsest_side is not None and self.coarsest_side < 16:
            raise InputError(f"coarsest side {self.coarsest_side}: must be at least 16 px")
        if self.optimizer not in ("lbfgs", "adam"):
            raise InputError(f"optimizer {self.optimizer!r}: expected lbfgs or adam")
        for name in ("iterations", "first_iterations", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} {value}: must be at least 1")
        if not 0 < self.style_scale <= 16:
            raise InputError(f"--style-scale {self.style_scale}: expected a number in (0, 16]")
        if self.passes < 1:
            raise InputError(f"--passes {self.passes}: must be at least 1")
        if not self.long_term or any(j < 1 for j in self.long_term):
            raise InputError(f"long-term distances {self.long_term}: need positive frame distances")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError(f"--device {self.device}: expected auto, cpu or cuda")
