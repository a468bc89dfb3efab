"""Background jobs (imagery mosaic, inference, retrain, restore) in a thread pool, reported on the websocket.

Jobs are rows of the label store's database (pearl_pipelines/labels/app_state.py), so the rules hold across any
number of app processes: a project's jobs run one after another, oldest first, whichever process runs them (a
retrain never reads an embedding cache that an inference is rewriting), and of each expensive kind a project has
at most one running and one waiting. The database is the lock (the project's row lock, taken for each decision):
it is already shared by every process, transactional on SQLite and PostgreSQL alike, and a job's row outlives
its process, which a lock in Redis would not. Each process beats a heartbeat into its active jobs; a job whose
process stops beating for STALE_S is failed with a message by whichever process looks next (never left running).
Progress events are throttled to ~10 per second per job, their database copy to one a second.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pearl_pipelines.labels.app_state import AppState, JobRow
from review_app.events import EventHub
from review_app.rate_limits import TooManyRequests
from review_app.schemas import ErrorEvent, JobEvent, JobKind, JobOut, JobState, WsEventModel

log = logging.getLogger(__name__)
MAX_JOBS_KEPT = 200
LIMITED_KINDS = frozenset({"retrain", "inference"})  # the expensive ones: one running + one waiting per project
PROGRESS_INTERVAL_S = 0.1
SAVE_INTERVAL_S = 1.0  # progress reaches the database (other processes' GET /api/jobs) at most this often
HEARTBEAT_S = 2.0
STALE_S = 10.0  # a job whose process has not beaten for this long is failed
# A waiting job asks again when a job of this process ends, and at least this often (another process's job ended).
CLAIM_POLL_S = 0.2
JOB_ID = re.compile(r"[0-9a-f]{12}")  # what Job makes; anything else names no job


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

    @classmethod
    def of_row(cls, row: JobRow) -> Job:
        return cls(
            project_id=row.project_id,
            kind=row.kind,  # type: ignore[arg-type]
            aoi_id=row.aoi_id,
            id=row.id,
            state=row.state,  # type: ignore[arg-type]
            progress=row.progress,
            message=row.message,
            error=row.error,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

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
    def __init__(self, hub: EventHub, db: AppState, workers: int = 2) -> None:
        self.hub, self.db = hub, db
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pearl-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # this process's jobs (the freshest copy of each)
        self._saved: dict[str, tuple[float, JobState]] = {}  # job -> (when, state) of its last database write
        self._ended = threading.Condition()  # notified when a job of this process ends: the next may start
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._heart = threading.Thread(target=self._beat, daemon=True, name="pearl-job-heartbeat")
        self._heart.start()

    def submit(self, project_id: int, kind: JobKind, body: JobBody, *, aoi_id: int | None = None) -> Job:
        """Queue a job. Of each limited kind a project has at most one running and one waiting (in any process):
        the same request again joins the waiting job; another one (another AOI) is refused: TooManyRequests (429)."""
        job = Job(project_id=project_id, kind=kind, aoi_id=aoi_id)
        with self.db.store.session() as s:
            self.db.store.locked_project(s, project_id)
            reaped = self.db.fail_stale_in(s, _stale_before(), project_id=project_id)
            waiting = self.db.waiting_job(s, project_id, kind) if kind in LIMITED_KINDS else None
            if waiting is None:
                s.add(
                    JobRow(id=job.id, project_id=project_id, kind=kind, aoi_id=aoi_id, state="queued", owner=self.owner)
                )
        self._announce_reaped(reaped)
        if waiting is not None and waiting.aoi_id == aoi_id:
            return self._jobs.get(waiting.id) or Job.of_row(waiting)  # a second label burst: one retrain follows
        if waiting is not None:
            raise TooManyRequests(f"a {kind} is already waiting in project {project_id}; retry when it has started", 5)
        with self._guard:
            self._jobs[job.id] = job
            while len(self._jobs) > MAX_JOBS_KEPT:
                old, _ = self._jobs.popitem(last=False)
                self._saved.pop(old, None)
        self._saved[job.id] = (time.monotonic(), "queued")
        self.announce(job)
        self._pool.submit(self._run, job, body)
        return job

    def _claim(self, job: Job) -> bool:
        """Wait for the job's turn in its project (jobs of other processes included); False: it was failed meanwhile
        (its heartbeat went stale), and does not run. The database alone decides the order: a lock in this process
        too would let a younger job hold it while it waits for an older one (locks are not fair), for ever."""
        while not self._stop.is_set():
            turn, reaped = self.db.claim(job.id, job.project_id, _stale_before())
            self._announce_reaped(reaped)
            if turn == "running":
                return True
            if turn == "gone":
                row = self.db.job(job.id)
                job.state, job.error = "failed", (row.error if row is not None else None) or "the job was cancelled"
                return False
            with self._ended:
                self._ended.wait(CLAIM_POLL_S)
        return False

    def _run(self, job: Job, body: JobBody) -> None:
        try:
            self._run_turn(job, body)
        finally:
            with self._ended:
                self._ended.notify_all()

    def _run_turn(self, job: Job, body: JobBody) -> None:
        if not self._claim(job):
            self.announce(job)
            return
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
        self._save(job)
        self.hub.publish(job.project_id, JobEvent(**job.out().model_dump()))

    def _save(self, job: Job) -> None:
        """The job's row follows: every change of state at once, progress at most every SAVE_INTERVAL_S."""
        now = time.monotonic()
        when, state = self._saved.get(job.id, (0.0, job.state))
        if state == job.state and now - when < SAVE_INTERVAL_S:
            return
        self._saved[job.id] = (now, job.state)
        try:
            self.db.save_job(
                job.id,
                state=job.state,
                progress=job.progress,
                message=job.message,
                error=job.error,
                started_at=job.started_at,
                finished_at=job.finished_at,
            )
        except Exception:  # the database is away for a moment: the event still goes out, the next save catches up
            log.warning("job %s: its row could not be saved", job.id, exc_info=True)

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        row = self.db.job(job_id) if JOB_ID.fullmatch(job_id) else None  # e.g. a NUL: PostgreSQL refuses it
        if row is None:
            raise KeyError(f"no job {job_id!r}")
        return Job.of_row(row)

    def active(self, project_id: int) -> list[Job]:
        """The project's queued and running jobs, in every process."""
        return [self._jobs.get(row.id) or Job.of_row(row) for row in self.db.active_jobs(project_id)]

    def _beat(self) -> None:
        """Keep this process's jobs alive in the database; fail other processes' jobs that stopped beating."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.db.beat(self.owner)
                self._announce_reaped(self.db.fail_stale(_stale_before()))
            except Exception:
                log.warning("job heartbeat failed", exc_info=True)

    def _announce_reaped(self, rows: list[JobRow]) -> None:
        for row in rows:
            log.warning(
                "job %s (%s) of project %s failed: its process %s stopped", row.id, row.kind, row.project_id, row.owner
            )
            self.hub.publish(row.project_id, JobEvent(**Job.of_row(row).out().model_dump()))
            self.hub.publish(row.project_id, ErrorEvent(job_id=row.id, message=row.error or ""))

    def shutdown(self) -> None:
        """Stop: this process's jobs that did not finish are failed now (not left for the heartbeat's timeout)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.db.fail_owner(self.owner, "the app process stopped before this job finished; start it again")
        except Exception:
            log.warning("could not fail this process's unfinished jobs", exc_info=True)


def _stale_before() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=STALE_S)


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
