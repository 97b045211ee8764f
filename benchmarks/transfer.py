"""Frame transfer throughput on loopback: the wire protocol next to bare pyzmq, same bytes, same run.

    python benchmarks/transfer.py [--frames 24] [--repeats 5]

1920x1080 RGB frames made from scikit-image photographs (astronaut and coffee side by side, with a
little sensor noise and a per-frame shift, so PNG sizes are those of real footage, ~3.6 MB), sent
as PNG and as raw 8-bit RGB (6.2 MB). Rows, each the best of --repeats runs (after a warm-up):

- bare pyzmq: DEALER -> ROUTER, one frame per message, a small ack back, 4 messages in flight
  (the client's upload window); for downloads, ROUTER -> DEALER;
- protocol framing: the same, but every message is built with ``protocol.pack`` and decoded and
  validated with ``protocol.unpack`` on the other side (PNG header / raw size checks included);
- engine upload: ``EngineClient.start_submit`` into a running ``engine_server serve``, which also
  stores every frame in its jobs directory (raw frames are encoded to PNG there);
- engine fetch: ``EngineClient.fetch`` of finished frames the engine reads from disk (raw: decoded).

All servers are separate processes, as in real use. Overhead = 1 - throughput / bare throughput.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

WINDOW = 4


# -- the far ends (run as subprocesses) -----------------------------------------------------------

def serve_router(kind: str, address: str) -> None:
    """bare: ack every message / send N blobs on request; framing: the same through pack/unpack."""
    from vse_style_shared.protocol import Limits, ProtocolError, pack, unpack

    limits = Limits()
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(address)
    blobs = {}
    while True:
        peer, *frames = router.recv_multipart(copy=False)
        if frames[0].bytes == b"quit":
            break
        if frames[0].bytes == b"keep":  # remember a blob to serve downloads of it
            blobs[frames[1].bytes.decode()] = frames[2].bytes
            router.send_multipart([peer, b"ok"])
        elif frames[0].bytes.startswith(b"get"):
            _, name, count = frames[0].bytes.decode().split()
            for i in range(int(count)):
                if kind == "bare":
                    router.send_multipart([peer, b"f", blobs[name]], copy=False)
                else:
                    w, h = 1920, 1080
                    router.send_multipart([peer, *pack({"type": "frame", "job": "j", "index": i + 1, "encoding": name,
                                                        "width": w, "height": h, "losses": {}}, [blobs[name]])],
                                          copy=False)
            router.send_multipart([peer, b"end"])
        elif kind == "bare":
            router.send_multipart([peer, b"ack"])
        else:
            try:
                message = unpack(frames, limits)
                reply = {"type": "uploaded", "id": message.id, "job": "j", "index": message.header["index"],
                         "received": 1}
            except ProtocolError as exc:
                reply = exc.header()
            router.send_multipart([peer, *pack(reply)])
    router.close()
    context.term()


# -- measurements ----------------------------------------------------------------------------------

def make_frames(count: int):
    import cv2
    import numpy as np
    from skimage import data

    left = cv2.resize(data.astronaut(), (1080, 1080), interpolation=cv2.INTER_CUBIC)
    right = cv2.resize(data.coffee(), (840, 1080), interpolation=cv2.INTER_CUBIC)
    base = np.concatenate([left, right], axis=1)
    rng = np.random.default_rng(0)
    raws, pngs = [], []
    for i in range(count):
        frame = np.clip(np.roll(base, 8 * i, axis=1) + rng.normal(0, 1.5, base.shape), 0, 255).astype(np.uint8)
        raws.append(frame.tobytes())
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        pngs.append(encoded.tobytes())
    return {"png": pngs, "raw": raws}


def make_style() -> bytes:
    import cv2
    from skimage import data

    return cv2.imencode(".png", data.brick())[1].tobytes()


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bare_upload(sock, blobs, framing: bool, encoding: str) -> None:
    from vse_style_shared.protocol import pack, unpack

    in_flight = sent = 0
    header = {"type": "upload", "job": "j", "encoding": encoding, "width": 1920, "height": 1080}
    while sent < len(blobs) or in_flight:
        while in_flight < WINDOW and sent < len(blobs):
            if framing:
                sock.send_multipart(pack({**header, "id": sent, "index": sent + 1}, [blobs[sent]]), copy=False)
            else:
                sock.send_multipart([b"u", blobs[sent]], copy=False)
            sent += 1
            in_flight += 1
        reply = sock.recv_multipart(copy=False)
        if framing:
            assert unpack(reply, direction="reply").type == "uploaded"
        in_flight -= 1


def bare_download(sock, name: str, count: int, framing: bool) -> None:
    from vse_style_shared.protocol import unpack

    sock.send(f"get {name} {count}".encode())
    received = 0
    while True:
        frames = sock.recv_multipart(copy=False)
        if frames[0].bytes == b"end":
            break
        if framing:
            unpack(frames, direction="reply")
        received += 1
    assert received == count


def seed_done_job(jobs_dir: Path, pngs: list, token: str) -> str:
    """A finished job of ``token``'s owner on disk, so the engine has frames to serve (no stylization)."""
    from engine_server.io.frames import write_atomic
    from engine_server.serve.jobs import JobStore, token_owner

    store = JobStore(jobs_dir)
    spec = {"frame_count": len(pngs), "width": 1920, "height": 1080, "styles": ["s.png"],
            "weights": [[1.0]] * len(pngs), "options": {}}
    job = store.create(spec, [pngs[0]], token_owner(token))
    for i, data in enumerate(pngs, 1):
        write_atomic(job.input_path(i), data)
        write_atomic(job.output_path(i), data)
    job.state = "done"
    store.save(job)
    return job.id


def store_only(folder: Path, blobs, encoding: str) -> None:
    """What the engine does with uploads besides the protocol: (encode to PNG and) write each file."""
    from engine_server.io.frames import encode_png, write_atomic
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(blobs, 1):
        if encoding == "raw":
            blob = encode_png(np.frombuffer(blob, np.uint8).reshape(1080, 1920, 3))
        write_atomic(folder / f"frame_{i:06d}.png", blob)


def read_only(folder: Path, count: int, encoding: str) -> None:
    """What the engine does for a fetch besides the protocol: read each file (and decode it to raw)."""
    from engine_server.io.frames import decode_image

    for i in range(1, count + 1):
        data = (folder / f"frame_{i:06d}.png").read_bytes()
        if encoding == "raw":
            decode_image(data).tobytes()


def engine_upload(client, blobs, encoding: str, style: bytes) -> None:
    # The job is declared with one frame more than is uploaded, so it never starts: only the transfer
    # (and the engine's validation and storing) is measured, not a 1080p stylization.
    upload = client.start_submit(blobs + [None], [("s.png", style)], None, {}, 1920, 1080,
                                 encoding=encoding, window=WINDOW)
    upload.total = len(blobs)  # upload the first N only
    while len(upload.acked) < len(blobs):
        upload.tick(0.05, block=True)
        if upload.state == "failed":
            raise upload.error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--router", nargs=2, metavar=("KIND", "ADDR"), help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.router:
        serve_router(*args.router)
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from engine_process import Engine, free_port
    from vse_style_shared.client import EngineClient

    print(f"making {args.frames} 1920x1080 frames ...", file=sys.stderr)
    frames = make_frames(args.frames)
    sizes = {enc: sum(map(len, blobs)) for enc, blobs in frames.items()}
    style = make_style()
    context = zmq.Context.instance()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        token = "transfer-benchmark-token"
        job = seed_done_job(tmp / "jobs", frames["png"], token)
        routers, socks = {}, {}
        for kind in ("bare", "framing"):
            address = f"tcp://127.0.0.1:{free_port()}"
            routers[kind] = subprocess.Popen([sys.executable, __file__, "--router", kind, address])
            sock = socks[kind] = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            for enc, blobs in frames.items():
                sock.send_multipart([b"keep", enc.encode(), blobs[0]])
                sock.recv()
        engine = Engine(tmp / "engine", jobs_dir=tmp / "jobs", extra=["--log-level", "warning"]).start()
        client = EngineClient(engine.address, timeout=60, token=token)
        try:
            for enc, blobs in frames.items():
                runs = {
                    ("upload", "bare pyzmq"): lambda: bare_upload(socks["bare"], blobs, False, enc),
                    ("upload", "protocol framing"): lambda: bare_upload(socks["framing"], blobs, True, enc),
                    ("upload", "storage alone (no network)"): lambda: store_only(tmp / "store", blobs, enc),
                    ("upload", "engine (validate + store)"): lambda: engine_upload(client, blobs, enc, style),
                    ("download", "bare pyzmq"): lambda: bare_download(socks["bare"], enc, len(blobs), False),
                    ("download", "protocol framing"): lambda: bare_download(socks["framing"], enc, len(blobs), True),
                    ("download", "storage alone (no network)"): lambda: read_only(tmp / "jobs" / job / "output",
                                                                                  len(blobs), enc),
                    ("download", "engine fetch (from disk)"): lambda: client.fetch(job, 1, len(blobs), enc),
                }
                # downloads from the bare/framing ends repeat one frame; same size as the frames fetched
                for (direction, path), run in runs.items():
                    run()  # warm up
                    seconds = min(timed(run) for _ in range(args.repeats))  # best of: other load only adds
                    payload = sizes[enc] if "pyzmq" not in path and "framing" not in path or direction == "upload" \
                        else len(blobs[0]) * len(blobs)
                    results.append({"direction": direction, "path": path, "encoding": enc,
                                    "mb_per_frame": payload / len(blobs) / 1e6, "seconds": seconds,
                                    "frames_per_s": len(blobs) / seconds, "mb_per_s": payload / seconds / 1e6})
        finally:
            client.close()
            engine.terminate()
            for kind, sock in socks.items():
                sock.send(b"quit")
                sock.close()
                routers[kind].wait(timeout=10)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: list[dict]) -> None:
    """vs bare: 1 - MB/s / bare MB/s. vs bare+storage (engine rows): the engine's time against the bare
    transfer plus the storage work done one after the other, i.e. the protocol's own share."""
    by = {(r["direction"], r["encoding"], r["path"].split()[0]): r for r in results}
    print(f"{'direction':<9} {'encoding':<8} {'path':<27} {'MB/frame':>8} {'frames/s':>9} {'MB/s':>7} "
          f"{'vs bare':>8} {'vs bare+storage':>16}")
    for r in results:
        bare, storage = (by[(r["direction"], r["encoding"], kind)] for kind in ("bare", "storage"))
        versus = both = "-"
        if r is not bare and r is not storage:
            versus = f"{100 * (1 - r['mb_per_s'] / bare['mb_per_s']):.1f} %"
        if r["path"].startswith("engine"):
            serial = 1 / bare["frames_per_s"] + 1 / storage["frames_per_s"]  # seconds per frame
            both = f"{100 * (1 / (r['frames_per_s'] * serial) - 1):+.1f} %"
        print(f"{r['direction']:<9} {r['encoding']:<8} {r['path']:<27} {r['mb_per_frame']:>8.2f} "
              f"{r['frames_per_s']:>9.1f} {r['mb_per_s']:>7.0f} {versus:>8} {both:>16}")


if __name__ == "__main__":
    raise SystemExit(main())
