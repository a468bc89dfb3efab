"""The caller, their personal API tokens, project members and the project's audit trail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from pearl_pipelines.labels.accounts import Accounts, Role, User, normal_email
from pearl_pipelines.labels.store import LabelStoreError
from review_app.deps import MAX_ID, AccountsDep, ProjectId, ServicesDep, UserDep
from review_app.schemas import (
    AuditOut,
    AuthConfigOut,
    ErrorOut,
    MemberIn,
    MemberOut,
    TokenCreate,
    TokenIssued,
    TokenOut,
    UserOut,
)
from review_app.services.projects import role_name

router = APIRouter(tags=["accounts"])
public_router = APIRouter(tags=["accounts"])  # no sign-in needed (rules.py): included without the guard's errors
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@public_router.get("/api/auth/config", response_model=AuthConfigOut)
def auth_config(services: ServicesDep) -> AuthConfigOut:
    """How the front-end signs in (public: the page asks before it has a token). local: nothing to do. oidc: the
    Authorization Code flow with PKCE (S256) as a public client `client_id` of `issuer`, asking for `scopes`."""
    settings = services.settings
    if settings.auth_mode == "local":
        return AuthConfigOut(mode="local")
    return AuthConfigOut(
        mode="oidc",
        issuer=settings.oidc_issuer,
        client_id=settings.oidc_client_id or settings.oidc_audience,
        scopes=settings.oidc_scopes,
    )


@router.get("/api/me", response_model=UserOut)
def me(user: UserDep) -> UserOut:
    return UserOut(id=user.id, subject=user.subject, name=user.name)


@router.get("/api/tokens", response_model=list[TokenOut])
def list_tokens(accounts: AccountsDep, user: UserDep) -> list[TokenOut]:
    """The caller's tokens (never their secrets)."""
    return [TokenOut.model_validate(t, from_attributes=True) for t in accounts.tokens(user)]


@router.post("/api/tokens", response_model=TokenIssued, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_token(accounts: AccountsDep, user: UserDep, body: TokenCreate, request: Request) -> TokenIssued:
    """A personal API token for scripts and the CLI, acting as the caller; the secret is shown only here."""
    issued = accounts.issue_token(user, body.name, body.days)
    request.state.audit_target = {"token_id": str(issued.id)}  # the id names it; the secret is never recorded
    row = next(t for t in accounts.tokens(user) if t.id == issued.id)
    return TokenIssued(**TokenOut.model_validate(row, from_attributes=True).model_dump(), token=issued.token)


@router.delete("/api/tokens/{token_id}", response_model=TokenOut, responses=ERRORS)
def revoke_token(accounts: AccountsDep, user: UserDep, token_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> TokenOut:
    return TokenOut.model_validate(accounts.revoke_token(user, token_id), from_attributes=True)


@router.get("/api/projects/{project_id}/members", response_model=list[MemberOut], responses=ERRORS)
def list_members(accounts: AccountsDep, project_id: ProjectId) -> list[MemberOut]:
    """The project's members with their roles (and e-mails, where their identity provider gave one)."""
    members = accounts.members(project_id)
    emails = accounts.emails([u.id for u, _ in members])
    return [
        MemberOut(id=u.id, subject=u.subject, name=u.name, role=role_name(role), email=emails.get(u.id))
        for u, role in members
    ]


@router.put("/api/projects/{project_id}/members", response_model=list[MemberOut], responses=ERRORS)
def set_member(accounts: AccountsDep, project_id: ProjectId, body: MemberIn, request: Request) -> list[MemberOut]:
    """Give a user a role in the project (owners only), or change it. By `subject`: the user may not have signed in
    yet; `name` names only a user not seen yet, until their own sign-in (a user's name is their own, never changed
    here). By `email`: a user who has signed in once with that e-mail (422 otherwise, or when several have it).
    Demoting the project's last owner is refused (422)."""
    if body.subject is not None:
        request.state.audit_target = {"subject": body.subject, "role": body.role}  # refusals are audited with it too
        member = accounts.ensure_user(body.subject, body.name or body.subject)
    else:
        request.state.audit_target = {"email": body.email, "role": body.role}
        member = member_by_email(accounts, str(body.email))
        request.state.audit_target["subject"] = member.subject
    accounts.set_role(project_id, member, Role[body.role])
    return list_members(accounts, project_id)


def member_by_email(accounts: Accounts, email: str) -> User:
    """The one user who signed in with `email`; LabelStoreError (422) saying what to do otherwise."""
    if normal_email(email) is None:
        raise LabelStoreError(f"{email[:80]!r} is not an e-mail address; give one like name@example.org, or a subject")
    found = accounts.users_by_email(email)
    if not found:
        raise LabelStoreError(
            f"nobody has signed in with the e-mail {email[:80]!r} yet: ask them to sign in once, or add them by "
            "their subject (oidc:<issuer>#<sub>)"
        )
    if len(found) > 1:
        raise LabelStoreError(f"{len(found)} users signed in with the e-mail {email[:80]!r}: add one by subject")
    return found[0]


@router.delete("/api/projects/{project_id}/members/{user_id}", response_model=list[MemberOut], responses=ERRORS)
def remove_member(
    accounts: AccountsDep, project_id: ProjectId, user_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request
) -> list[MemberOut]:
    member = next((u for u, _ in accounts.members(project_id) if u.id == user_id), None)
    if member is None:
        raise KeyError(f"user {user_id} is not a member of project {project_id}")
    request.state.audit_target = {"subject": member.subject}  # with the path's user_id
    accounts.remove_member(project_id, member)
    return list_members(accounts, project_id)


@router.get("/api/projects/{project_id}/audit", response_model=list[AuditOut], responses=ERRORS)
def audit_trail(accounts: AccountsDep, project_id: ProjectId) -> list[AuditOut]:
    """Who did what in the project, newest first (owners only)."""
    return [
        AuditOut(id=row.id, at=row.at, subject=subject, action=row.action, target=row.target, status=row.status)
        for row, subject in accounts.audit_trail(project_id)
    ]
