// Sign-in. Local mode: nothing to do (the server signs loopback callers in). OIDC mode: the OpenID Connect
// Authorization Code flow with PKCE (S256) as a public client, by oidc-client-ts; the redirect URI is this page.
// Tokens live in sessionStorage (this tab only); an expiring access token is renewed with the refresh token when
// the provider gave one, otherwise (or when that fails, or the API answers 401) the page signs in again.
import { UserManager, WebStorageStateStore, type User } from "oidc-client-ts";
import { esc } from "./ui";

export interface AuthConfig {
  mode: "local" | "oidc";
  issuer: string | null;
  client_id: string | null;
  scopes: string | null;
}

const SIGNED_OUT = "pearl.signedOut"; // sessionStorage flag: back from the provider's sign-out, do not sign in again

let manager: UserManager | null = null;
let user: User | null = null;
let displayName = "";
let renewing: Promise<boolean> | null = null;

/** The app's page: redirect URI of the sign-in and of the sign-out (register both at the provider). */
const pageUrl = () => new URL("/", location.href).toString();

export const authEnabled = () => manager !== null;

export const signedInName = () => (manager ? displayName : null);

export function accessToken(): string | null {
  return user && !user.expired ? user.access_token : null;
}

export function authHeaders(): Record<string, string> {
  const token = accessToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Tiles and the websocket take the token as `access_token=` (a browser cannot set headers there). */
export function withAccessToken(url: string): string {
  const token = accessToken();
  if (!token) return url;
  const parsed = new URL(url, location.href);
  const ours = parsed.origin === location.origin || parsed.host === location.host; // ws(s):// has no http origin
  if (!ours || !(parsed.pathname.startsWith("/tiles/") || parsed.protocol.startsWith("ws"))) return url;
  parsed.searchParams.set("access_token", token);
  return parsed.toString();
}

export function setDisplayName(name: string): void {
  displayName = name;
}

/**
 * Start the page's session. Resolves true when the page may go on (local mode, or signed in); false when it is
 * on its way to the identity provider or shows the sign-in screen.
 */
export async function startAuth(): Promise<boolean> {
  const response = await fetch("/api/auth/config");
  if (!response.ok) throw new Error(`GET /api/auth/config: HTTP ${response.status}`);
  const config = (await response.json()) as AuthConfig;
  if (config.mode !== "oidc" || !config.issuer || !config.client_id) return true;
  manager = new UserManager({
    authority: config.issuer,
    client_id: config.client_id,
    scope: config.scopes ?? "openid",
    response_type: "code", // with PKCE (S256): oidc-client-ts sends code_challenge and later code_verifier
    redirect_uri: pageUrl(),
    post_logout_redirect_uri: pageUrl(),
    userStore: new WebStorageStateStore({ store: window.sessionStorage }),
    stateStore: new WebStorageStateStore({ store: window.sessionStorage }),
    automaticSilentRenew: false, // renewed here: refresh token only (no hidden iframe: the page may not be framed)
    loadUserInfo: false,
  });
  manager.events.addUserLoaded((loaded) => {
    user = loaded;
  });
  manager.events.addUserUnloaded(() => {
    user = null;
  });
  manager.events.addAccessTokenExpiring(() => void renew());
  manager.events.addAccessTokenExpired(async () => {
    if (!(await renew())) await signIn();
  });

  const params = new URLSearchParams(location.search);
  if (params.has("state") && (params.has("code") || params.has("error"))) {
    try {
      user = await manager.signinRedirectCallback();
    } catch (error) {
      history.replaceState(null, "", "/");
      showSignIn(`Sign-in failed: ${error instanceof Error ? error.message : String(error)}`);
      return false;
    } finally {
      sessionStorage.removeItem(SIGNED_OUT);
    }
    history.replaceState(null, "", returnPath(user.state)); // the code and state leave the address bar
    return true;
  }
  if (params.has("state") && sessionStorage.getItem(SIGNED_OUT)) {
    await manager.signoutRedirectCallback().catch(() => undefined); // back from the provider's sign-out
    history.replaceState(null, "", "/");
  }
  user = await manager.getUser();
  if (user && !user.expired) return true;
  if (user?.refresh_token && (await renew())) return true;
  if (sessionStorage.getItem(SIGNED_OUT)) {
    showSignIn("You are signed out.");
    return false;
  }
  await signIn();
  return false;
}

/** Where sign-in started (path and query of this origin only), else the page. */
function returnPath(state: unknown): string {
  return typeof state === "string" && state.startsWith("/") && !state.startsWith("//") ? state : "/";
}

/** To the identity provider; it comes back to this page with a code. */
export async function signIn(): Promise<void> {
  if (!manager) return;
  sessionStorage.removeItem(SIGNED_OUT);
  await manager.signinRedirect({ state: location.pathname + location.search });
}

/** A new access token with the refresh token, if there is one; false when that is not possible. */
export function renew(): Promise<boolean> {
  if (!manager) return Promise.resolve(false);
  const m = manager;
  renewing ??= (async () => {
    try {
      const current = await m.getUser();
      if (!current?.refresh_token) return false;
      const renewed = await m.signinSilent(); // with a refresh token: one call to the token endpoint
      return !!renewed && !renewed.expired;
    } catch (error) {
      console.warn("token renewal failed", error);
      return false;
    } finally {
      renewing = null;
    }
  })();
  return renewing;
}

/** After a 401: renew, or sign in again. Resolves true when the request may be retried. */
export async function onUnauthorized(): Promise<boolean> {
  if (!manager) return false;
  if (await renew()) return true;
  await signIn();
  return false;
}

/** Ends the session here and, when the provider has an end-session endpoint, there too. */
export async function signOut(): Promise<void> {
  if (!manager) return;
  sessionStorage.setItem(SIGNED_OUT, "1");
  try {
    await manager.signoutRedirect(); // removes the tokens, then goes to the provider's end_session_endpoint
  } catch {
    await manager.removeUser(); // the provider has no end-session endpoint: the tokens are gone here
    location.assign(pageUrl());
  }
}

function showSignIn(message: string): void {
  const banner = document.getElementById("banner");
  if (!banner) return;
  banner.hidden = false;
  banner.setAttribute("data-testid", "sign-in-banner");
  banner.innerHTML = `<div data-testid="sign-in-message">${esc(message)}</div>
    <button class="btn btn-primary" data-testid="sign-in">Sign in</button>`;
  banner.querySelector("button")?.addEventListener("click", () => void signIn());
}
