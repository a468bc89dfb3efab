"""Per-user quotas: how much one signed-in user can make the server store (PEARL_QUOTA_*).

A user owns the projects they created (or were made owner of); what those projects hold on disk is charged to
their owners: the project's folder (prediction layers, model versions), its AOIs' embedding caches and the
imagery mosaics it reads (a mosaic shared by several projects counts once per owner). Memory is bounded
elsewhere: projects of one imagery source share one mosaic, projects of one base model share it in a bounded
cache (ModelCache), so the quotas on projects and AOIs bound what a user can make the server hold.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pearl_pipelines.labels.accounts import Accounts, Role, User
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from review_app.services.errors import QuotaExceeded
from review_app.workspace import StateStore


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (a file: its size; missing: 0). Symlinks are not followed."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while we walked (a cache being replaced)
                continue
    return total


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class Quotas:
    def __init__(self, *, settings: Settings, store: LabelStore, accounts: Accounts, states: StateStore) -> None:
        self.settings, self.store, self.accounts, self.states = settings, store, accounts, states

    def owned_projects(self, user: User) -> list[int]:
        return sorted(p for p in self.accounts.readable_projects(user) if self.accounts.role(user, p) == Role.owner)

    def owners(self, project_id: int) -> list[User]:
        return [user for user, role in self.accounts.members(project_id) if role == Role.owner]

    def check_new_project(self, user: User) -> None:
        """Before `user` creates a project: under the project quota, and under the byte quota."""
        owned = self.owned_projects(user)
        if len(owned) >= self.settings.quota_projects:
            raise QuotaExceeded(
                f"project quota reached: you own {len(owned)} projects and PEARL_QUOTA_PROJECTS allows "
                f"{self.settings.quota_projects}; delete one or ask an operator to raise the quota"
            )
        self._check_bytes(user, owned)

    def check_new_aoi(self, project_id: int) -> None:
        """Before an AOI is added to the project: under the AOI quota, and its owners under the byte quota."""
        count = len(self.store.list_aois(project_id))
        if count >= self.settings.quota_aois:
            raise QuotaExceeded(
                f"AOI quota reached: project {project_id} has {count} AOIs and PEARL_QUOTA_AOIS allows "
                f"{self.settings.quota_aois}"
            )
        self.check_growth(project_id)

    def check_growth(self, project_id: int) -> None:
        """Before work that writes to disk for the project (an AOI's inference): its owners under the byte quota."""
        for owner in self.owners(project_id):
            self._check_bytes(owner, self.owned_projects(owner))

    def bytes_of(self, project_ids: Iterable[int]) -> int:
        """Disk bytes the projects hold: their folders, their AOIs' embedding caches and their imagery mosaics."""
        paths: set[Path] = set()
        for project_id in project_ids:
            workspace = self.states.workspace(project_id)
            state = workspace.state()
            paths.add(workspace.paths.root)
            paths.add(self.states.imagery_path(project_id))  # counted, not downloaded
            paths.update(workspace.embeddings_dir(aoi_id, state) for aoi_id in state.aois)
        # A path inside another one (a per-project mosaic or cache under the project's folder) counts once.
        outer = [p for p in paths if not any(q != p and p.is_relative_to(q) for q in paths)]
        return sum(tree_bytes(p) for p in outer)

    def _check_bytes(self, user: User, owned: list[int]) -> None:
        used = self.bytes_of(owned)
        if used >= self.settings.quota_bytes:
            raise QuotaExceeded(
                f"storage quota reached: the projects of {user.name} hold {_gib(used)} and PEARL_QUOTA_BYTES allows "
                f"{_gib(self.settings.quota_bytes)} per user; delete AOIs or projects, or ask an operator"
            )
