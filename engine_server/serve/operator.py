"""``python -m engine_server jobs``: the operator's view of a jobs folder, every owner's jobs.

Clients see only their own jobs (PROTOCOL.md, Owners); whoever runs the engine reads the folder itself:

    python -m engine_server jobs [--jobs-dir DIR]            # a table of every job
    python -m engine_server jobs --delete ID [ID ...]        # remove jobs (with the engine stopped)

Listing only reads (it is safe beside a running engine); deleting needs the folder's lock, so it
refuses while an engine holds the folder (a client deletes through the engine with ``delete_job``).
"""
from __future__ import annotations

import sys
import time

from .jobs import DEFAULT_JOBS_DIR, JobsDirBusy, JobStore, remove_folder


def add_parser(sub) -> None:
    p = sub.add_parser("jobs", help="list (or delete) the jobs in an engine's jobs folder, every owner's",
                       description="The operator's view of a jobs folder: every job, its owner (a short hash of "
                                   "its token or CURVE key), state, frames and size. --delete removes jobs while "
                                   "no engine holds the folder.")
    p.add_argument("--jobs-dir", default=DEFAULT_JOBS_DIR, metavar="DIR",
                   help="the engine's --jobs-dir (default %(default)s)")
    p.add_argument("--delete", nargs="+", metavar="ID", help="remove these jobs and their files")


def run_jobs(args) -> int:
    store = JobStore(args.jobs_dir)
    if not store.root.is_dir():
        print(f"error: --jobs-dir {args.jobs_dir}: no such folder", file=sys.stderr)
        return 2
    if args.delete:
        return _delete(store, args.delete)
    rows = [(job.id, _owner(job.owner), job.state, f"{len(job.finished)}/{job.frame_count}",
             f"{job.size[0]}x{job.size[1]}", f"{job.bytes / 2**20:.1f}",
             time.strftime("%Y-%m-%d %H:%M", time.localtime(job.updated)))
            for job in store.scan(tidy=False)]
    header = ("job", "owner", "state", "finished", "size", "MiB", "last change")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(rows)} jobs, {sum(job.bytes for job in store.scan(tidy=False)) / 2**30:.2f} GiB in {store.root}",
          file=sys.stderr)
    return 0


def _owner(owner: str | None) -> str:
    if owner is None:
        return "(none: protocol 1)"
    kind, _, value = owner.partition(":")
    return f"{kind}:{value[:8]}"


def _delete(store: JobStore, ids: list[str]) -> int:
    try:
        store.lock()
    except (JobsDirBusy, OSError) as exc:
        print(f"error: {exc}: stop it first (or delete through it: a client's delete_job)", file=sys.stderr)
        return 2
    try:
        known = {job.id: job for job in store.scan()}
        missing = [job_id for job_id in ids if job_id not in known]
        if missing:
            print(f"error: no job {missing[0]} in {store.root}", file=sys.stderr)
            return 2
        for job_id in ids:
            remove_folder(store.detach_folder(known[job_id]))
            print(f"deleted {job_id}", file=sys.stderr)
        return 0
    finally:
        store.unlock()
