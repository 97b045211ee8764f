"""python -m engine_server.bench {modes,speed,fast,memory,soak,scale,profile} [options]: the benchmarks (figures, not tests).

modes: per-frame vs temporal vs multipass on the same frames (stability, style over a long shot).
speed: the reference's flat schedule beside the coarse-to-fine one, then a clip at production size.
fast: the feed-forward modes' frames per second, stability and style, and what --init fast saves.
memory: host memory over a long run (a 200-frame clip), read as needed against decoded up front.
soak: hostile and normal clients against a loopback engine while a real job runs (issue 10's goals).
scale: one clip on 1 and 2 local Ray workers: speedup, seam stability (issue 11's goals).
profile: where one iteration's time goes at each pyramid level; eager against CUDA-graphed iterations.
Each subcommand's --help lists its options.
"""
from __future__ import annotations

import sys

from . import fast, memory, modes, profile, scale, soak, speed

COMMANDS = {"modes": modes.main, "speed": speed.main, "fast": fast.main, "memory": memory.main, "soak": soak.main,
            "scale": scale.main, "profile": profile.main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown benchmark {argv[0]!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
