"""How much the engine keeps: per-owner quotas on new work, and which old jobs the clean-up removes.

An engine shared by a studio must not fill its disk: each owner (a client's token or CURVE key) may hold
at most ``quota_jobs`` jobs and ``quota_bytes`` of files, and the operator's clean-up removes jobs that
ended (or stopped receiving frames) more than ``keep_days`` ago, then, while the store is over
``max_store_bytes``, the oldest ended jobs. Jobs that are queued or running are never removed.
Pure functions of job records and a clock, so they are tested without an engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from vse_style_shared.protocol import FINAL_STATES

from .jobs import Job

DAY = 86400.0


@dataclass(frozen=True)
class Retention:
    keep_days: float = 30.0          # 0: keep jobs forever
    max_store_bytes: int = 0         # 0: no cap on the whole store
    quota_jobs: int = 100            # jobs one owner may hold
    quota_bytes: int = 20 * 2**30    # bytes of files one owner's jobs may hold

    def refusal(self, owned: list[Job], adding: int = 0, new_job: bool = False) -> str | None:
        """Why an owner holding ``owned`` may not add a job or ``adding`` bytes; None when it may."""
        if new_job and len(owned) >= self.quota_jobs:
            return (f"this client already has {len(owned)} jobs on the engine (at most {self.quota_jobs}); "
                    f"delete some it no longer needs")
        used = sum(job.bytes for job in owned)
        if used + adding > self.quota_bytes:
            return (f"this client's jobs hold {used / 2**30:.1f} GiB on the engine (at most "
                    f"{self.quota_bytes / 2**30:.1f} GiB); delete some it no longer needs")
        return None


def removable(job: Job) -> bool:
    """Ended jobs, and uploads nobody finished; never work that is queued or running."""
    return job.state in FINAL_STATES or job.state == "uploading"


def expired(jobs: Iterable[Job], retention: Retention, now: float) -> list[Job]:
    """The jobs the clean-up removes now, oldest first: past ``keep_days`` since their last change, then
    the oldest ended ones while the rest is over ``max_store_bytes``."""
    jobs = sorted(jobs, key=lambda job: job.updated)
    gone = []
    if retention.keep_days > 0:
        cutoff = now - retention.keep_days * DAY
        gone = [job for job in jobs if removable(job) and job.updated < cutoff]
    if retention.max_store_bytes > 0:
        chosen = {job.id for job in gone}
        total = sum(job.bytes for job in jobs if job.id not in chosen)
        for job in jobs:
            if total <= retention.max_store_bytes:
                break
            if job.id not in chosen and job.state in FINAL_STATES:
                gone.append(job)
                total -= job.bytes
    return gone
