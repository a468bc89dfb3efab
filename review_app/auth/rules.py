"""Who may call which route: one rule per (method, route template), checked for every route at app start.

A route without a rule makes `create_app` fail (and the role-matrix test), so a new route cannot ship open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pearl_pipelines.labels.accounts import Role

# share: a read-only share link's routes; the guard signs nobody in, the route checks the link's token itself
# (review_app/routers/shares.py) and an unknown, expired or revoked one is a bare 404.
Scope = Literal["public", "user", "project", "job", "share"]
P = "/api/projects/{project_id}"
TILE_LAYERS = (
    "/tiles/imagery/{project_id}",
    "/tiles/predictions/{project_id}",
    "/tiles/confidence/{project_id}",
    "/tiles/compare/{project_id}",  # compare: versions' maps and their change (routers/compare.py)
)
PUBLIC_PREFIXES = ("/docs", "/redoc", "/openapi.json", "/static", "/healthz")
SHARE_TILE_LAYERS = ("/tiles/shares/{token}/imagery", "/tiles/shares/{token}/maps/{aoi_id}")  # routers/shares.py


@dataclass(frozen=True)
class Rule:
    scope: Scope  # public: anyone; user: any signed-in user; project/job: a role in the route's project
    need: Role = Role.viewer
    audit: str | None = None  # action recorded in the audit trail (who, what, which project, status)


def _v(audit: str | None = None) -> Rule:
    return Rule("project", Role.viewer, audit)


def _m(audit: str | None = None) -> Rule:
    return Rule("project", Role.mapper, audit)


def _o(audit: str | None = None) -> Rule:
    return Rule("project", Role.owner, audit)


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/"): Rule("public"),
    ("GET", "/api/auth/config"): Rule("public"),  # how to sign in: asked before there is a token
    ("GET", "/api/projects"): Rule("user"),  # lists only the caller's projects
    ("POST", "/api/projects"): Rule("user", audit="project.create"),  # the caller becomes its owner
    # The projects page (issue 24 item 1): what a new project can be made of; rename and delete (owners).
    ("GET", "/api/imagery/local"): Rule("user"),
    ("GET", "/api/imagery/stac"): Rule("user"),
    ("GET", "/api/imagery/stac/{api}/collections"): Rule("user"),
    ("GET", "/api/imagery/stac/{api}/search"): Rule("user"),
    ("GET", "/api/imagery/stac/{api}/items/{collection}/{item_id}/thumbnail.png"): Rule("user"),
    ("GET", "/api/starters"): Rule("user"),
    ("PATCH", P): _o("project.rename"),
    ("DELETE", P): _o("project.delete"),
    ("GET", "/api/me"): Rule("user"),
    ("GET", "/api/tokens"): Rule("user"),
    ("POST", "/api/tokens"): Rule("user", audit="token.create"),
    ("DELETE", "/api/tokens/{token_id}"): Rule("user", audit="token.revoke"),
    ("GET", "/api/jobs/{job_id}"): Rule("job"),
    # Read-only share links (routers/shares.py): the link's token opens its share and nothing else.
    ("GET", "/share/{token}"): Rule("share"),
    ("GET", "/api/shares/{token}"): Rule("share"),
    ("GET", "/api/shares/{token}/aois/{aoi_id}/classes.tif"): Rule("share"),
    ("GET", "/api/shares/{token}/aois/{aoi_id}/areas.csv"): Rule("share"),
    ("GET", "/maps"): Rule("public"),  # the public-maps page: maps their owners listed
    ("GET", "/api/public-maps"): Rule("public"),
    ("GET", f"{P}/shares"): _o(),
    ("POST", f"{P}/shares"): _o("share.create"),
    ("DELETE", f"{P}/shares/{{share_id}}"): _o("share.revoke"),
    # Imagery uploads (routers/uploads.py): each upload and ingest is its caller's own (others get 404).
    ("GET", "/api/uploads"): Rule("user"),
    ("POST", "/api/uploads"): Rule("user", audit="upload.create"),
    ("GET", "/api/uploads/{upload_id}"): Rule("user"),
    ("PUT", "/api/uploads/{upload_id}"): Rule("user", audit="upload.chunk"),
    ("DELETE", "/api/uploads/{upload_id}"): Rule("user", audit="upload.delete"),
    ("GET", "/api/uploads/{upload_id}/preview.png"): Rule("user"),
    ("POST", "/api/uploads/ingests"): Rule("user", audit="upload.ingest"),
    ("GET", "/api/uploads/ingests/{ingest_id}"): Rule("user"),
    ("GET", P): _v(),
    ("GET", f"{P}/members"): _v(),
    ("PUT", f"{P}/members"): _o("member.set"),
    ("DELETE", f"{P}/members/{{user_id}}"): _o("member.remove"),
    ("GET", f"{P}/audit"): _o(),
    ("POST", f"{P}/classes"): _m("class.add"),
    ("PATCH", f"{P}/classes/{{name}}"): _m("class.update"),
    ("GET", f"{P}/aois"): _v(),
    ("POST", f"{P}/aois"): _m("aoi.create"),
    ("POST", f"{P}/aois/upload"): _m("aoi.upload"),  # an AOI file (routers/aois.py)
    ("GET", f"{P}/aois/{{aoi_id}}"): _v(),
    ("POST", f"{P}/aois/{{aoi_id}}/inference"): _m("inference"),
    ("GET", f"{P}/aois/{{aoi_id}}/suggestions"): _v(),
    ("GET", f"{P}/aois/{{aoi_id}}/export/classes.tif"): _v("export.classes"),
    ("GET", f"{P}/aois/{{aoi_id}}/export/areas.csv"): _v("export.areas"),
    ("GET", f"{P}/labels"): _v(),
    ("POST", f"{P}/labels"): _m("label.add"),
    ("DELETE", f"{P}/labels/{{label_id}}"): _m("label.delete"),
    ("POST", f"{P}/labels/undo"): _m("label.undo"),
    ("GET", f"{P}/labels/export.geojson"): _v("export.labels"),
    ("GET", f"{P}/labels/export.gpkg"): _v("export.labels"),
    ("POST", f"{P}/retrain"): _m("retrain"),
    ("GET", f"{P}/strategy"): _v(),
    ("PUT", f"{P}/strategy"): _m("strategy.set"),
    ("GET", f"{P}/checkpoints"): _v(),
    ("POST", f"{P}/checkpoints"): _m("checkpoint.save"),
    ("POST", f"{P}/checkpoints/{{checkpoint_id}}/restore"): _m("checkpoint.restore"),
    ("GET", f"{P}/checkpoints/compare"): _v(),
    ("GET", f"{P}/compare"): _v(),  # two versions' maps: change table and tile links
    ("POST", f"{P}/compare"): _v("compare.prepare"),  # makes the versions' maps (a cache, no project data)
    ("GET", f"{P}/metrics"): _v(),
    # Map patches (routers/patches.py): hand corrections drawn over the maps.
    ("GET", f"{P}/patches"): _v(),
    ("POST", f"{P}/patches"): _m("patch.add"),
    ("POST", f"{P}/patches/undo"): _m("patch.undo"),
    ("DELETE", f"{P}/patches/{{patch_id}}"): _m("patch.remove"),
    ("POST", f"{P}/patches/{{patch_id}}/labels"): _m("patch.as_labels"),
    ("WS", f"{P}/ws"): _v(),
}


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of a route template; tile layers (every titiler route under them) need viewer."""
    if method == "HEAD":
        method = "GET"
    if (method, path) in RULES:
        return RULES[method, path]
    if method == "GET" and path.startswith(TILE_LAYERS):
        return _v()
    if method == "GET" and path.startswith(SHARE_TILE_LAYERS):
        return Rule("share")
    if method == "GET" and (path.startswith(PUBLIC_PREFIXES)):
        return Rule("public")
    return None
