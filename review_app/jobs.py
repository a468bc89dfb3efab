"""Background jobs (imagery mosaic, inference, retrain, restore) in a thread pool, reported on the websocket.

Jobs of one project run one after another (a per-project lock): a retrain never reads an embedding
cache that an inference is rewriting. Progress events are throttled to ~10 per second per job.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from review_app.events import EventHub
from review_app.rate_limits import TooManyRequests
from review_app.schemas import ErrorEvent, JobEvent, JobKind, JobOut, JobState, WsEventModel

log = logging.getLogger(__name__)
MAX_JOBS_KEPT = 200
LIMITED_KINDS = frozenset({"retrain", "inference"})  # the expensive ones: one running + one waiting per project
PROGRESS_INTERVAL_S = 0.1


class JobFailed(RuntimeError):
    """A job stopped for a reason the mapper can act on; the message is shown as is."""


@dataclass
class Job:
    project_id: int
    kind: JobKind
    aoi_id: int | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: JobState = "queued"
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    def out(self) -> JobOut:
        return JobOut(
            id=self.id,
            project_id=self.project_id,
            kind=self.kind,
            state=self.state,
            progress=round(self.progress, 4),
            message=self.message,
            error=self.error,
            aoi_id=self.aoi_id,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


class JobContext:
    """What a job body gets: progress reporting and event publishing for its project."""

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self.runner, self.job = runner, job
        self._last = 0.0

    def progress(self, done: float, total: float, message: str | None = None) -> None:
        self.job.progress = min(1.0, done / total) if total else 0.0
        if message is not None:
            self.job.message = message
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_S or done >= total:
            self._last = now
            self.runner.announce(self.job)

    def step(self, message: str, fraction: float | None = None) -> None:
        self.job.message = message
        if fraction is not None:
            self.job.progress = fraction
        self.runner.announce(self.job)

    def publish(self, event: WsEventModel) -> None:
        self.runner.hub.publish(self.job.project_id, event)


JobBody = Callable[[JobContext], str | None]


class JobRunner:
    def __init__(self, hub: EventHub, workers: int = 2) -> None:
        self.hub = hub
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pearl-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def submit(self, project_id: int, kind: JobKind, body: JobBody, *, aoi_id: int | None = None) -> Job:
        """Queue a job. Of each limited kind a project has at most one running and one waiting: the same request
        again joins the waiting job; another one (a different AOI) is refused with TooManyRequests (429)."""
        job = Job(project_id=project_id, kind=kind, aoi_id=aoi_id)
        with self._guard:
            if kind in LIMITED_KINDS:
                waiting = next(
                    (j for j in self._jobs.values() if (j.project_id, j.kind, j.state) == (project_id, kind, "queued")),
                    None,
                )
                if waiting is not None and waiting.aoi_id == aoi_id:
                    return waiting  # e.g. a second label burst while the first retrain runs: one retrain follows
                if waiting is not None:
                    raise TooManyRequests(
                        f"a {kind} is already waiting in project {project_id}; retry when it has started", 5
                    )
            self._jobs[job.id] = job
            while len(self._jobs) > MAX_JOBS_KEPT:
                self._jobs.popitem(last=False)
            lock = self._locks[project_id]
        self.announce(job)
        self._pool.submit(self._run, job, body, lock)
        return job

    def _run(self, job: Job, body: JobBody, lock: threading.Lock) -> None:
        with lock:
            job.state, job.started_at = "running", dt.datetime.now(dt.UTC)
            self.announce(job)
            try:
                message = body(JobContext(self, job))
                job.state, job.progress, job.message = "done", 1.0, message or job.message
            except JobFailed as exc:
                job.state, job.error = "failed", str(exc)
            except (ValueError, KeyError, RuntimeError, OSError) as exc:
                # Domain errors (RetrainError, ImageryError, AoiError...) carry a message meant for people.
                log.warning("job %s (%s) failed: %s", job.id, job.kind, exc, exc_info=True)
                job.state, job.error = "failed", exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            except Exception:
                log.exception("job %s (%s) crashed", job.id, job.kind)
                job.state, job.error = "failed", f"{job.kind} failed unexpectedly; the server log has the details"
            job.finished_at = dt.datetime.now(dt.UTC)
            self.announce(job)
            if job.state == "failed":
                self.hub.publish(job.project_id, ErrorEvent(job_id=job.id, message=job.error or ""))

    def announce(self, job: Job) -> None:
        self.hub.publish(job.project_id, JobEvent(**job.out().model_dump()))

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no job {job_id!r}") from None

    def active(self, project_id: int) -> list[Job]:
        return [j for j in list(self._jobs.values()) if j.project_id == project_id and j.state in ("queued", "running")]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Debouncer:
    """Calls `action(key)` once, `delay` seconds after the last `touch(key)` (label bursts -> one Dagster run)."""

    def __init__(self, action: Callable[[int], None], delay: float = 5.0) -> None:
        self.action, self.delay = action, delay
        self._timers: dict[int, threading.Timer] = {}
        self._guard = threading.Lock()

    def touch(self, key: int) -> None:
        with self._guard:
            if (timer := self._timers.get(key)) is not None:
                timer.cancel()
            timer = threading.Timer(self.delay, self._fire, args=(key,))
            timer.daemon = True
            self._timers[key] = timer
            timer.start()

    def _fire(self, key: int) -> None:
        with self._guard:
            self._timers.pop(key, None)
        try:
            self.action(key)
        except Exception:  # a failed submission must never reach the mapper: log it, the next label retries
            log.exception("label run submission for project %s failed", key)

    def close(self) -> None:
        with self._guard:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
