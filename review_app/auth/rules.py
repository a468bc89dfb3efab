"""Who may call which route: one rule per (method, route template), checked for every route at app start.

A route without a rule makes `create_app` fail (and the role-matrix test), so a new route cannot ship open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pearl_pipelines.labels.accounts import Role

Scope = Literal["public", "user", "project", "job"]
P = "/api/projects/{project_id}"
TILE_LAYERS = ("/tiles/imagery/{project_id}", "/tiles/predictions/{project_id}", "/tiles/confidence/{project_id}")
PUBLIC_PREFIXES = ("/docs", "/redoc", "/openapi.json", "/static", "/healthz")


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
    ("GET", "/api/me"): Rule("user"),
    ("GET", "/api/tokens"): Rule("user"),
    ("POST", "/api/tokens"): Rule("user", audit="token.create"),
    ("DELETE", "/api/tokens/{token_id}"): Rule("user", audit="token.revoke"),
    ("GET", "/api/jobs/{job_id}"): Rule("job"),
    ("GET", P): _v(),
    ("GET", f"{P}/members"): _v(),
    ("PUT", f"{P}/members"): _o("member.set"),
    ("DELETE", f"{P}/members/{{user_id}}"): _o("member.remove"),
    ("GET", f"{P}/audit"): _o(),
    ("POST", f"{P}/classes"): _m("class.add"),
    ("PATCH", f"{P}/classes/{{name}}"): _m("class.update"),
    ("GET", f"{P}/aois"): _v(),
    ("POST", f"{P}/aois"): _m("aoi.create"),
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
    ("GET", f"{P}/metrics"): _v(),
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
    if method == "GET" and (path.startswith(PUBLIC_PREFIXES)):
        return Rule("public")
    return None
