"""``python -m engine_server submit``: ``stylize`` on a remote engine, with the same options and outputs.

The frames are read and resized here exactly as ``stylize`` would (``open_frames``), uploaded as
lossless PNG at processing size, and the finished frames come back as the PNG files the engine wrote,
so DIR/frame_000001.png ... are the files a local ``stylize`` writes. DIR/report.json has the same keys
(settings, weights source and device from the engine) plus ``server`` and ``job``. Ctrl-C leaves the
job on the engine; ``--resume`` reattaches to the job named in DIR/report.json, finishes its upload if
it was interrupted, and fetches what is missing from DIR. The job belongs to the client's token, kept in
DIR/.engine-token (mode 0600) so that ``--resume`` can reach it again. Without a job in DIR/report.json it submits
a new job (the engine cannot continue after frames it did not make).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from vse_style_shared.client import EngineClient, EngineError, EngineUnavailable
from vse_style_shared.protocol import OPTION_CHECKS

from .. import load_style_weights
from ..arguments import options_from_args
from ..errors import InputError
from ..io.frames import (encode_png, finished_frames, frame_filename, open_frames, read_image, write_atomic,
                         write_video)
from ..io.report import write_report


def add_parser(sub, add_stylize_options) -> None:
    p = sub.add_parser("submit", help="stylize on a running engine (local or remote)",
                       description="Like `stylize` (same options, same DIR/frame_000001.png ... and DIR/report.json) "
                                   "but the work runs on the engine at --server. The job survives this command: "
                                   "after Ctrl-C or a lost connection, --resume reattaches and fetches the rest.")
    add_stylize_options(p)
    p.add_argument("--server", default="tcp://127.0.0.1:5555", metavar="tcp://HOST:PORT",
                   help="engine address (default tcp://127.0.0.1:5555)")
    p.add_argument("--server-key", metavar="FILE", help="the engine's CURVE public key (server.key from keygen)")
    p.add_argument("--client-key", metavar="FILE", help="this client's CURVE keypair (client.key_secret from keygen)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds without an answer before the engine counts as unreachable (default 10)")
    p.add_argument("--encoding", choices=("png", "raw"), default="png",
                   help="how frames are uploaded: png (lossless, compact; default) or raw 8-bit RGB")
    p.add_argument("--name", help="job label shown in the engine's job list (default: INPUT's name)")
    for action in p._actions:  # same options as stylize; two of them mean something slightly different here
        if action.dest == "resume":
            action.help = "reattach to the job recorded in DIR/report.json, keep the frames in DIR, fetch the rest"
        elif action.dest == "device":
            action.help = "auto (whatever the engine has), cpu or cuda: refuse if the engine runs on another device"


def run_submit(args) -> int:
    try:
        return _run(args)
    except (InputError, EngineUnavailable, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error: the engine refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # during the upload: the job waits on the engine in state 'uploading'
        print("interrupted: the job waits on the engine for the rest of its frames; --resume finishes the upload",
              file=sys.stderr)
        return 130


def _job_options(options) -> dict:
    """The StylizeOptions a job carries: every option the protocol accepts (width and device are the
    client's and the engine's business)."""
    values = {name: getattr(options, name) for name in OPTION_CHECKS}
    values["long_term"] = list(values["long_term"])
    return {k: v for k, v in values.items() if v is not None}


def _check_device(wanted: str, engine_device: str, address: str) -> None:
    engine = engine_device.split()[0]
    if wanted == "auto" or engine == wanted or engine.split(":")[0] == wanted:
        return
    raise InputError(f"--device {wanted}: the engine at {address} runs on {engine_device}")


def _run(args) -> int:
    options = options_from_args(args)
    options.validate()
    out_dir = Path(args.out)
    source = open_frames(args.input, options.width)
    count, (width, height) = len(source), source.size
    weights = load_style_weights(args.style_keyframes, args.style, count)
    for style in args.style:
        read_image(style, "--style")
    styles = [(Path(style).name, Path(style).read_bytes()) for style in args.style]

    out_dir.mkdir(parents=True, exist_ok=True)
    token = read_token(out_dir) if args.resume else None
    client = EngineClient(args.server, args.server_key, args.client_key, args.timeout, name="engine_server submit",
                          token=token)
    save_token(out_dir, client.token)
    try:
        welcome = client.hello()
        _check_device(args.device, welcome["device"], args.server)
        report_path = out_dir / "report.json"
        job_id, done, state = None, 0, None
        previous = {}
        if args.resume and report_path.is_file():
            previous = json.loads(report_path.read_text())
            job_id = previous.get("job")
            if job_id is not None:
                try:
                    state = client.status(job_id)["state"]
                except EngineError:
                    raise InputError(f"--resume: job {job_id} from {report_path} is not known to the engine at "
                                     f"{args.server} (run without --resume to start again)") from None
                done = finished_frames(out_dir, count)
        report = {"input": str(args.input), "styles": list(args.style), "frame_count": count,
                  "size": [width, height], "status": "running", "frames": [], "server": args.server, "job": job_id}
        report["frames"] = [f for f in previous.get("frames", []) if f.get("index", 0) <= done]
        started = time.perf_counter()
        frames = _frame_sources(source, args.encoding)
        if job_id is None:
            upload = client.start_submit(frames, styles, weights.tolist(), _job_options(options), width, height,
                                         name=args.name or Path(str(args.input)).name, encoding=args.encoding)
        elif state == "uploading":  # the last run was stopped mid-upload: send what the engine lacks
            upload = client.resume_upload(job_id, frames, args.encoding)
        else:
            upload = None
        if upload is not None:
            job_id = _upload(upload, len(frames), lambda job: write_report(report_path, {**report, "job": job}))
            report["job"] = job_id
        write_report(report_path, report)
        return _follow(client, job_id, done, report, out_dir, args, started)
    finally:
        client.close()


TOKEN_FILE = ".engine-token"


def read_token(out_dir: Path) -> str | None:
    """The token of the job this folder's last run submitted (None for a folder without one)."""
    try:
        return (out_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def save_token(out_dir: Path, token: str) -> None:
    """Keep the token beside the frames, readable by this user only (it opens the job on the engine)."""
    path = out_dir / TOKEN_FILE
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(token)


def _frame_sources(source, encoding: str) -> list:
    """One callable per frame, so frames are encoded only when their turn to be uploaded comes."""
    if encoding == "raw":
        return [lambda i=i: source[i].tobytes() for i in range(len(source))]
    return [lambda i=i: encode_png(source[i]) for i in range(len(source))]


def _upload(upload, count: int, accepted) -> str:
    """Run an Upload with a progress bar; ``accepted(job_id)`` as soon as the engine has the job."""
    while upload.state in ("submitting", "resuming"):  # no bar before the engine answered: errors stay one line
        upload.tick(0.1, block=True)
    if upload.state != "failed":
        accepted(upload.job_id)
        with tqdm(total=count, unit="frame", desc="upload", file=sys.stderr, dynamic_ncols=True) as bar:
            while not upload.tick(0.1, block=True):
                bar.update(len(upload.acked) - bar.n)
            bar.update(len(upload.acked) - bar.n)
    if upload.error is not None:
        raise upload.error
    return upload.job_id


def _follow(client: EngineClient, job_id: str, done: int, report: dict, out_dir: Path, args, started: float) -> int:
    """Receive frames until the job ends; write them, the report and the progress bar as they come."""
    session = client.open_session(job_id, since=done)
    bar = tqdm(total=report["frame_count"], initial=done, unit="frame", file=sys.stderr, dynamic_ncols=True)
    report_path = out_dir / "report.json"
    try:
        while not session.done:
            for event in session.tick(0.2, block=True):
                kind = event["type"]
                if kind == "frame":
                    write_atomic(out_dir / frame_filename(event["index"]), event["data"])
                    report["frames"] = [f for f in report["frames"] if f["index"] != event["index"]]
                    report["frames"].append({"index": event["index"], "seconds": event["seconds"],
                                             "iterations": event["iterations"], "losses": event["losses"]})
                    write_report(report_path, report)
                    bar.update(1)
                elif kind == "progress" and event["stage"] == "optimize" and event.get("loss") is not None:
                    bar.set_postfix_str(f"frame {event['frame']}/{event['frame_count']} it {event['iteration']} "
                                        f"loss {event['loss']:.4g}", refresh=False)
                elif kind == "unreachable":
                    raise EngineUnavailable(f"{event['message']}; job {job_id} goes on there when it is back "
                                            f"(run again with --resume to reattach)")
                elif kind == "error":
                    raise EngineError(event["code"], event["message"], event.get("field"))
    except KeyboardInterrupt:
        report["status"] = "interrupted"
        print(f"interrupted: job {job_id} keeps running on the engine; --resume reattaches and fetches the rest",
              file=sys.stderr)
        return 130
    finally:
        bar.close()
        report["seconds"] = round(time.perf_counter() - started, 3)
        report["frames"].sort(key=lambda f: f["index"])
        _merge_description(report, session.status, args)
        write_report(report_path, report)
        session.close(detach=False)
    status = session.status
    report["status"] = status["state"]
    write_report(report_path, report)
    if status["state"] == "failed":
        error = status.get("error") or {}
        print(f"error: job {job_id} failed on the engine: {error.get('message')}", file=sys.stderr)
        return 2 if error.get("code") == "bad_field" else 1
    if status["state"] == "cancelled":
        print(f"error: job {job_id} was cancelled on the engine ({len(report['frames'])} frames kept in {out_dir})",
              file=sys.stderr)
        return 1
    if args.video:
        indices = sorted(f["index"] for f in report["frames"])
        write_video([read_image(out_dir / frame_filename(i), "frame") for i in indices], args.video, args.fps)
    print(f"wrote {len(report['frames'])} frames to {out_dir}", file=sys.stderr)
    return 0


def _merge_description(report: dict, status: dict | None, args) -> None:
    """The engine's Stylizer.describe() (options, iterations, device, weights source, flow, torch), with
    width and device as given here, like stylize's report (the engine gets frames already at that size)."""
    described = (status or {}).get("report")
    if not described:
        return
    described = dict(described)
    described["options"] = {**described.get("options", {}), "width": args.width, "device": args.device}
    head = {k: report[k] for k in ("input", "styles", "frame_count", "size")}
    rest = {k: v for k, v in report.items() if k not in head}
    report.clear()
    report.update(head, **described, **rest)
