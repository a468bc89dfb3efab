"""The composition root: the review app's stores and domain services, built once per app and wired explicitly.

Each service gets in its constructor exactly what it uses; routers reach the one of their domain through deps.py.
Built in main.py's lifespan, kept on `app.state.services`, closed at shutdown.
"""

from __future__ import annotations

from pearl_pipelines.labels.accounts import Accounts, User
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from pearl_pipelines.storage import ObjectStore
from review_app.auth.identity import LOCAL_SUBJECT, Authenticator, check_settings
from review_app.events import EventHub
from review_app.jobs import Debouncer, JobRunner
from review_app.label_runs import submit_label_run
from review_app.rate_limits import WriteLimiter
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas
from review_app.services.compare import CompareService
from review_app.services.labels import LabelService
from review_app.services.model_cache import ModelCache
from review_app.services.models import ModelService
from review_app.services.patches import PatchService
from review_app.services.project_imagery import ProjectImagery
from review_app.services.projects import ProjectService
from review_app.services.quotas import Quotas
from review_app.services.shares import ShareService
from review_app.services.uploads import UploadService
from review_app.services.version_store import VersionPublisher
from review_app.workspace import StateStore


class ReviewServices:
    def __init__(self, settings: Settings) -> None:
        check_settings(settings)  # refuse unsafe auth settings before touching anything
        # Refuses to start on a bad rate-limit spec or storage URI, or a Redis that does not answer.
        self.write_limiter = WriteLimiter(settings.write_rate_limit, settings.rate_limit_storage)
        settings.home_abs.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        # Shared infrastructure: the label DB, the per-project session state, websocket fan-out, the job pool.
        self.store = LabelStore(settings.resolved_label_store_url)
        self.states = StateStore(settings.home_abs, self.store)
        # Published AOI maps also go to the object store, and tiles read them there (a bad URL stops the start).
        self.states.objects = ObjectStore.from_settings(settings) if settings.storage_url else None
        self.accounts = Accounts(self.store, settings.auth_secret)
        self.auth = Authenticator(settings, self.accounts)
        self._known_projects: set[int] = set()
        self.hub = EventHub(settings.events_url)
        self.runner = JobRunner(self.hub, self.states.db)
        self.label_runs = Debouncer(lambda project_id: submit_label_run(project_id, settings, self.store, self.states))
        # MLflow is the version store; a version it logged is Dagster's cue: its label run adopts the version.
        self.publisher = VersionPublisher(
            settings=settings, store=self.store, states=self.states, on_published=self.label_runs.touch
        )
        # The domains, each built from the pieces above and the domains it needs.
        store, states, hub, runner = self.store, self.states, self.hub, self.runner
        self.classes = ClassSchemas(store=store, hub=hub)
        self.model_cache = ModelCache(settings=settings, store=store, states=states, hub=hub)
        self.imagery = ProjectImagery(settings=settings, store=store, states=states, runner=runner)
        self.quotas = Quotas(settings=settings, store=store, accounts=self.accounts, states=states)
        self.uploads = UploadService(settings=settings, quotas=self.quotas)  # imagery uploads and their ingest
        self.aois = AoiService(
            settings=settings,
            store=store,
            states=states,
            classes=self.classes,
            model_cache=self.model_cache,
            runner=runner,
            quotas=self.quotas,
        )
        self.labels = LabelService(store=store, classes=self.classes, aois=self.aois, hub=hub)
        self.models = ModelService(
            settings=settings,
            store=store,
            states=states,
            classes=self.classes,
            model_cache=self.model_cache,
            aois=self.aois,
            runner=runner,
            publisher=self.publisher,
        )
        # Map patches: every AOI map passes them before it is published (StateStore.map_patcher).
        self.patches = PatchService(
            settings=settings,
            store=store,
            states=states,
            classes=self.classes,
            models=self.models,
            runner=runner,
            hub=hub,
        )
        self.compare = CompareService(  # two versions as maps: their change
            settings=settings,
            store=store,
            states=states,
            classes=self.classes,
            aois=self.aois,
            models=self.models,
            runner=runner,
        )
        # Read-only share links: frozen copies of AOI maps behind an unguessable link (routers/shares.py).
        self.shares = ShareService(
            settings=settings, store=store, states=states, classes=self.classes, aois=self.aois, quotas=self.quotas
        )
        self.projects = ProjectService(
            settings=settings,
            store=store,
            states=states,
            classes=self.classes,
            model_cache=self.model_cache,
            imagery=self.imagery,
            aois=self.aois,
        )

    def require_project(self, project_id: int) -> None:
        """KeyError for an unknown (or deleted) project. Ids seen once are remembered: tile requests (dozens a second
        per mapper) then cost no database query for it. A deletion forgets its id here (`forget_project`); other
        processes may still remember it, but a deleted project has no members left, so they refuse it too (only
        the local mode's one user, one process, owns everything without membership)."""
        if project_id not in self._known_projects:
            self.projects.get(project_id)
            self._known_projects.add(project_id)

    def forget_project(self, project_id: int) -> None:
        """After a project's deletion: its id is unknown from now on."""
        self._known_projects.discard(project_id)

    def readable_projects(self, user: User) -> set[int]:
        """Ids of the projects `user` may read (the local user: all of them)."""
        if self.auth.local and user.subject == LOCAL_SUBJECT:
            return {p.id for p in self.projects.list_all()}  # live ones: deleted projects are gone for everyone
        return self.accounts.readable_projects(user)

    def start(self) -> None:
        """First start creates the demo project; every project's imagery and model start loading."""
        self.projects.ensure_demo_project()
        for project in self.projects.list_all():
            self.projects.warm_up(project.id)
            self.publisher.request(project.id)  # versions made while MLflow was down are logged now

    def close(self) -> None:
        self.publisher.close()
        self.label_runs.close()
        self.runner.shutdown()
        self.hub.close()
        self.uploads.close()
        self.store.engine.dispose()
