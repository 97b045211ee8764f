"""Fast-mode benchmark: the feed-forward network's speed, stability and style, beside the optimization.

    python -m engine_server.bench fast                       # CPU
    python -m engine_server.bench fast --device cuda         # the GPU rows as well (CPU rows stay)

Table 1, frames per second on a real clip (big_buck_bunny, resized) at 640x360, 1280x720 and 1920x1080:
``fast-per-frame`` (the network alone) and ``fast`` (network + flow + stabilization), end to end from the
decoded frame to the finished uint8 frame (writing files excluded), after one warm-up frame.
Table 2, MPI-Sintel alley_1 (4 frames at 384 px wide, ground-truth flow): e_stab (lower is steadier) and
style distance (the Gram style loss of the outputs against the painting, lower is closer to its style)
of ``fast``, ``fast-per-frame`` and, for the first painting, the temporal optimization mode, each
painting in its own rows, with the ratios of ``fast`` to ``fast-per-frame`` (goal: e_stab <= 0.6x with
style distance <= 1.1x).
Table 3, ``--init fast``: the first frame's total loss after N iterations from the content frame and from
the network's painting (flat schedule, early stop off), and how many iterations the painting saves to
reach the content start's final loss.
Table 4, the add-on's Preview: one frame sent to a local engine (``serve`` on --device) as the add-on
sends it, painted, and back, warm (best of 3 after one warm-up), at 1280x720 and 1920x1080.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from ..io.frames import open_frames, read_image, resize
from ..metrics import stability_error, style_distance
from ..pipeline import Progress, StylizeOptions, Stylizer
from ..style.vgg import load_vgg19
from .common import DATA, parse_size, sintel, table

STYLES = ("starry_night", "the_shipwreck_of_the_minotaur", "udnie", "wave", "scream")


def speed_table(args) -> None:
    clip = open_frames(args.clip)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and args.device != "cpu" else [])
    style = [str(DATA / "styles" / f"{STYLES[0]}.jpg")]
    rows = []
    for device in devices:
        for size in args.sizes:
            count = args.frames if device == "cuda" else max(3, args.frames * 640 * 360 // (size[0] * size[1]))
            frames = [resize(clip[i], size) for i in range(count + 1)]
            row = [device, f"{size[0]}x{size[1]}"]
            for mode in ("fast-per-frame", "fast"):
                stylizer = Stylizer(style, StylizeOptions(mode=mode, device=device))
                stamps = []
                for _ in stylizer.run(frames):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    stamps.append(time.perf_counter())
                fps = (len(stamps) - 1) / (stamps[-1] - stamps[0])  # the first frame is the warm-up
                row.append(f"{fps:.2f}")
            rows.append(row + [str(count)])
            print(f"  {device} {size}: done", file=sys.stderr)
    print(f"\nFrames per second, {args.clip.split('/')[-1]} resized, end to end (decoded frame -> finished frame), "
          f"torch threads {torch.get_num_threads()}")
    print(table(rows, ["device", "size", "fast-per-frame fps", "fast fps (with flow + stabilization)", "frames"]))


def stability_table(args) -> None:
    frames, flows, masks, size = sintel(None, args.sintel_width)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    vgg = load_vgg19(device)
    rows = []
    for k, name in enumerate(args.styles):
        path = DATA / "styles" / f"{name}.jpg"
        painting = read_image(path)
        scores = {}
        modes = ["fast-per-frame", "fast"] + (["temporal"] if k == 0 and not args.skip_temporal else [])
        for mode in modes:
            budget = {"first_iterations": args.first_iterations, "iterations": args.iterations} \
                if mode == "temporal" else {}
            options = StylizeOptions(mode=mode, device=args.device, **budget)
            started = time.perf_counter()
            outputs = [r.image for r in Stylizer([str(path)], options).run(frames)]
            seconds = (time.perf_counter() - started) / len(frames)
            scores[mode] = (stability_error(outputs, flows, masks), style_distance(outputs, painting, vgg, device))
            e_stab, distance = scores[mode]
            label = mode if mode != "temporal" else f"temporal ({args.first_iterations}/{args.iterations} it)"
            ratios = ["", ""]
            if mode == "fast":
                base = scores["fast-per-frame"]
                ratios = [f"{e_stab / base[0]:.2f}x", f"{distance / base[1]:.2f}x"]
            rows.append([name, label, f"{e_stab:.4f}", ratios[0], f"{distance:.4g}", ratios[1], f"{seconds:.2f}"])
        print(f"  {name}: done", file=sys.stderr)
    print(f"\nMPI-Sintel alley_1, 4 frames at {size[0]}x{size[1]}: stability and style")
    print(table(rows, ["painting", "mode", "e_stab", "fast / raw", "style distance", "fast / raw", "s/frame"]))


def init_table(args) -> None:
    frame = resize(read_image(DATA / "flow" / "sintel_alley_1" / "frame_0001.png"), args.init_size)
    style = [str(DATA / "styles" / f"{STYLES[0]}.jpg")]
    curves = {}
    for init in ("content", "fast"):
        curve = {}

        def record(event: Progress) -> None:
            if event.stage == "optimize" and event.loss is not None:
                curve[event.iteration] = event.loss

        options = StylizeOptions(mode="per-frame", device=args.device, first_iterations=args.init_iterations,
                                 init=init, early_stop=False, schedule="reference")
        result = next(iter(Stylizer(style, options, progress=record).run([frame])))
        curve[args.init_iterations] = result.losses["total"]
        curves[init] = curve
    target = curves["content"][args.init_iterations]
    reached = min((i for i, loss in curves["fast"].items() if loss <= target), default=None)
    rows = []
    for n in sorted({1, 10, 25, 50, 100, args.init_iterations} & set(curves["content"]) & set(curves["fast"])):
        rows.append([str(n), f"{curves['content'][n]:.4g}", f"{curves['fast'][n]:.4g}"])
    print(f"\n--init fast: first frame of Sintel alley_1 at {args.init_size[0]}x{args.init_size[1]}, {STYLES[0]}, "
          f"flat schedule, early stop off")
    print(table(rows, ["iterations", "total loss from the content", "total loss from the painting"]))
    if reached is None:
        print(f"the painting's start did not reach the content start's loss at {args.init_iterations} iterations")
    else:
        print(f"the painting's start reaches the content start's {args.init_iterations}-iteration loss after "
              f"{reached} iterations: {args.init_iterations - reached} saved "
              f"({100 * (1 - reached / args.init_iterations):.0f} %)")


def preview_table(args) -> None:
    import socket
    import subprocess
    import tempfile

    import cv2

    from vse_style_shared.client import EngineClient

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    rows = []
    with tempfile.TemporaryDirectory() as jobs:
        engine = subprocess.Popen([sys.executable, "-m", "engine_server", "serve", "--bind", address, "--jobs-dir",
                                   jobs, "--device", device, "--log-level", "warning"])
        client = EngineClient(address, timeout=120)
        try:
            client.hello()
            style = [(f"{STYLES[0]}.jpg", (DATA / "styles" / f"{STYLES[0]}.jpg").read_bytes())]
            source = open_frames(args.clip)[40]
            for size in args.sizes[1:]:
                frame = cv2.imencode(".png", cv2.cvtColor(resize(source, size), cv2.COLOR_RGB2BGR))[1].tobytes()
                client.preview(frame, style)  # warm-up: the network loads on the engine
                best = None
                for _ in range(3):
                    started = time.perf_counter()
                    painted = client.preview(frame, style)
                    took = (time.perf_counter() - started, painted.seconds)
                    best = took if best is None or took < best else best
                rows.append([device, f"{size[0]}x{size[1]}", f"{best[0]:.2f}", f"{best[1]:.2f}"])
        finally:
            client.close()
            engine.terminate()
            engine.wait()
    print("\nPreview round trip to a local engine (PNG frame and painting over loopback), warm, best of 3")
    print(table(rows, ["engine device", "size", "seconds end to end", "seconds on the engine"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_server.bench fast", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="the device of tables 2 and 3 (table 1 adds CUDA rows)")
    parser.add_argument("--clip", default=str(DATA / "video" / "big_buck_bunny.mp4"))
    parser.add_argument("--sizes", type=lambda t: [parse_size(s) for s in t.split(",")],
                        default=[(640, 360), (1280, 720), (1920, 1080)])
    parser.add_argument("--frames", type=int, default=24, help="frames per speed row (fewer on the CPU at large sizes)")
    parser.add_argument("--sintel-width", type=int, default=384)
    parser.add_argument("--styles", type=lambda t: t.split(","), default=list(STYLES))
    parser.add_argument("--first-iterations", type=int, default=100, help="temporal row, first frame")
    parser.add_argument("--iterations", type=int, default=50, help="temporal row, later frames")
    parser.add_argument("--skip-temporal", action="store_true")
    parser.add_argument("--init-size", type=parse_size, default=(256, 109))
    parser.add_argument("--init-iterations", type=int, default=200)
    parser.add_argument("--skip", default="", help="tables to leave out, e.g. speed,init (of speed, stability, init, preview)")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"error: the benchmark needs the shared test data at {DATA}", file=sys.stderr)
        return 2
    skip = set(args.skip.split(","))
    if "speed" not in skip:
        speed_table(args)
    if "stability" not in skip:
        stability_table(args)
    if "init" not in skip:
        init_table(args)
    if "preview" not in skip:
        preview_table(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
