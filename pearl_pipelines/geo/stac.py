"""Imagery access through a STAC API: one code path for the local catalog and Planetary Computer NAIP.

The local default is a real STAC API (rustac) on loopback over the catalog under PEARL_HOME;
production points the same client at Planetary Computer and signs asset URLs with its SAS tokens.

Outbound requests (server-side request forgery): a `StacCatalog` sends requests to its own API's origin (scheme,
host, port) only. A redirect, a `next` page or a landing-page link to any other origin is refused before it is
sent, and no link is read from a local file. The review app builds its catalogs from the operator's list of APIs
(`Settings.resolved_stac_apis`, by id), never from a URL a user sent. Asset hrefs an API returns are opened by
GDAL; `checked_href` is the one gate they pass first. Errors name the API (its id in the review app), the HTTP
status and what to do, never the remote server's response body; the server log has the URL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pystac
import requests
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pearl_pipelines.settings import DEFAULT_STAC_API, Settings, get_settings

log = logging.getLogger(__name__)

IMAGE_ASSET = "image"  # NAIP's 4-band asset key; the local catalog uses the same key
PLANETARY_COMPUTER_COLLECTION = "naip"
PLANETARY_COMPUTER_HOST = "planetarycomputer.microsoft.com"  # its API's hrefs are signed with SAS tokens
TIMEOUT = (10.0, 120.0)  # seconds to connect, and to wait for an answer, per request to a STAC API
RETRIES = 3  # connection failures retried per request
MAX_REDIRECTS = 5  # redirects followed per request (within the API's own origin only)
HTTP_SCHEMES = ("http", "https")
Origin = tuple[str, str, int]


class StacError(RuntimeError):
    """The STAC API could not be reached or answered with an error."""


class UnsafeHref(StacError):
    """An asset href that GDAL must not open: not an http(s) URL, or not a file inside the local catalog."""


class OffListRequest(requests.RequestException):
    """A request (or a redirect) to an origin other than the STAC API's: refused, never sent."""


def url_origin(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed port or IPv6 literal
        return None
    if parts.scheme not in HTTP_SCHEMES or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower().rstrip("."), port or (443 if parts.scheme == "https" else 80)


def checked_href(href: str, *, local_root: Path | None = None) -> str:
    """`href` (of a catalog's asset) if GDAL may open it, else UnsafeHref; every catalog href GDAL opens passes here.

    An absolute http(s) URL is accepted (GDAL reads it with /vsicurl/). A local file is accepted only for the local
    catalog (`local_root`): an absolute path that resolves (symlinks followed) inside that folder, returned resolved.
    Everything else is refused: relative paths, file:// and other schemes, GDAL's /vsi* names and connection
    strings, control characters.
    """
    if not isinstance(href, str) or not href or href != href.strip() or any(ord(c) < 32 for c in href):
        raise UnsafeHref("empty, padded or has control characters")
    if url_origin(href) is not None:
        return href
    if urlsplit(href).scheme:
        raise UnsafeHref("not an http(s) URL")
    if local_root is None:
        raise UnsafeHref("not an http(s) URL (a remote STAC API's assets must be URLs)")
    if href.startswith("/vsi") or not Path(href).is_absolute():
        raise UnsafeHref("not an absolute file path")
    resolved = Path(href).resolve()
    if not resolved.is_relative_to(Path(local_root).resolve()):
        raise UnsafeHref("outside the local catalog")
    return str(resolved)


class _AllowListAdapter(HTTPAdapter):
    """Sends only to the allowed origins. requests sends every redirect through an adapter too, so a redirect off
    the list is refused here before any connection is made."""

    def __init__(self, origins: frozenset[Origin]) -> None:
        super().__init__(max_retries=Retry(total=RETRIES, read=False, backoff_factor=0.5))
        self.origins = origins

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if url_origin(request.url or "") not in self.origins:
            raise OffListRequest("request to a host that is not the STAC API's refused", request=request)
        return super().send(request, *args, **kwargs)


class _AllowListIO(StacApiIO):
    """pystac-client's I/O with requests limited to `origins` and no reading of local files (a link href that is a
    path would otherwise be opened)."""

    def __init__(self, origins: frozenset[Origin]) -> None:
        super().__init__(timeout=TIMEOUT, max_retries=None)
        adapter = _AllowListAdapter(origins)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.max_redirects = MAX_REDIRECTS

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = source.to_dict().get("href", "") if isinstance(source, pystac.Link) else str(source)
        if url_origin(href) is None:
            raise APIError("a link that is not an http(s) URL was not followed")
        return super().read_text(source, *args, **kwargs)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(exc: BaseException) -> int | None:
    for cause in _causes(exc):
        status = getattr(cause, "status_code", None)
        if isinstance(status, int):
            return status
        response = getattr(cause, "response", None)
        if isinstance(getattr(response, "status_code", None), int):
            return int(response.status_code)  # type: ignore[union-attr]
    return None


def _sign_planetary_computer(obj: Any) -> None:
    """pystac-client modifier: sign blob hrefs in place with a Planetary Computer SAS token.

    Token failures are HTTP errors (OSErrors) too; re-raised here so they are not reported as an
    unreachable STAC API.
    """
    import planetary_computer
    from planetary_computer.settings import Settings as PcSettings

    try:
        planetary_computer.sign_inplace(obj)
    except (OSError, ValueError) as exc:
        status = _status(exc)
        log.warning("Planetary Computer SAS token from %s failed: %r", PcSettings.get().sas_url, exc)
        raise StacError(
            "could not get a Planetary Computer SAS token to sign asset URLs"
            + (f" (HTTP {status})" if status else "")
            + "; check network access, PC_SDK_SAS_URL and PC_SDK_SUBSCRIPTION_KEY (the server log has the details)"
        ) from None


@dataclass
class StacCatalog:
    """Searches a STAC API and yields items whose image assets rasterio can open.

    `name`: what errors call the API (the review app: its id); None: its URL (operator tools).
    `local_root`: the local catalog folder, for an API serving it (rustac): asset hrefs may then be files inside
    it. None: asset hrefs must be http(s) URLs.
    """

    url: str
    collections: Sequence[str] | None = None
    sign_planetary_computer: bool = False
    image_asset: str = IMAGE_ASSET
    name: str | None = None
    local_root: Path | None = None
    _client: Client | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, collections: Sequence[str] | None = None) -> StacCatalog:
        settings = settings or get_settings()
        if settings.stac_source == "planetary-computer":
            default: Sequence[str] | None = [settings.stac_collection or PLANETARY_COMPUTER_COLLECTION]
        else:
            default = [settings.stac_collection] if settings.stac_collection else None
        return cls(
            url=settings.resolved_stac_url,
            collections=collections or default,
            sign_planetary_computer=settings.stac_source == "planetary-computer",
            local_root=settings.catalog_dir if settings.stac_source == "local" else None,
        )

    @classmethod
    def for_api(cls, api: str, settings: Settings, collections: Sequence[str] | None = None) -> StacCatalog:
        """The operator's STAC API `api` (an id of `settings.resolved_stac_apis`; KeyError for any other)."""
        url = settings.resolved_stac_apis[api]
        default = api == DEFAULT_STAC_API
        origin = url_origin(url)
        return cls(
            url=url,
            collections=collections,
            name=api,
            # Planetary Computer's hrefs are signed: the default API of the planetary-computer source, or PC itself.
            sign_planetary_computer=(default and settings.stac_source == "planetary-computer")
            or (origin is not None and origin[1] == PLANETARY_COMPUTER_HOST),
            # The local source's API (rustac) serves the local catalog: its hrefs are files in it.
            local_root=settings.catalog_dir if default and settings.stac_source == "local" else None,
        )

    @property
    def label(self) -> str:
        """The API as errors name it."""
        return repr(self.name) if self.name else self.url

    def _error(self, action: str, exc: BaseException) -> StacError:
        """A StacError for people (API name, HTTP status, what to do); the URL and the error go to the log."""
        status = _status(exc)
        # The log gets the URL and the error's kind, never the response body (nor a parser's message quoting it).
        causes = list(_causes(exc))
        detail = next(
            (repr(c) for c in causes if isinstance(c, OSError) and not isinstance(c, APIError)),
            " <- ".join(type(c).__name__ for c in causes),
        )
        log.warning("STAC API %s (%s): %s failed: HTTP %s, %s", self.label, self.url, action, status, detail)
        if any(isinstance(c, OffListRequest) for c in _causes(exc)):
            return StacError(
                f"the STAC API {self.label} sent the request to another host, which was refused; "
                "ask the operator to check the API's URL (PEARL_STAC_APIS)"
            )
        if status is not None and 400 <= status < 500:
            return StacError(
                f"the STAC API {self.label} refused the {action} (HTTP {status}); "
                "check the collections, bbox and datetime of the imagery"
            )
        if status is not None:
            return StacError(f"the STAC API {self.label} failed (HTTP {status}); try again later")
        if any(isinstance(c, OSError) for c in _causes(exc)):
            return StacError(f"cannot reach the STAC API {self.label}; try again later, or ask the operator about it")
        return StacError(f"the STAC API {self.label} gave an answer that is not STAC; ask the operator to check it")

    @property
    def client(self) -> Client:
        if self._client is None:
            modifier = _sign_planetary_computer if self.sign_planetary_computer else None
            origin = url_origin(self.url)
            if origin is None:
                raise StacError(f"the STAC API {self.label} has no http(s) URL; ask the operator to check it")
            try:
                self._client = Client.open(self.url, modifier=modifier, stac_io=_AllowListIO(frozenset({origin})))
            except StacError:
                raise
            except Exception as exc:  # anything the remote end answered: an error that names the API only
                raise self._error("request", exc) from None
        return self._client

    def search(
        self,
        bbox: Sequence[float] | None = None,
        *,
        intersects: dict[str, Any] | None = None,
        datetime: str | None = None,
        collections: Sequence[str] | None = None,
        max_items: int | None = 1000,
    ) -> list[pystac.Item]:
        """Items intersecting a lon/lat bbox or GeoJSON geometry, newest first within each location."""
        client = self.client
        try:
            search = client.search(
                collections=list(collections or self.collections or []) or None,
                bbox=list(bbox) if bbox is not None else None,
                intersects=intersects,
                datetime=datetime,
                max_items=max_items,
            )
            items = list(search.items())
        except StacError:
            raise
        except Exception as exc:
            raise self._error("search", exc) from None
        items.sort(key=lambda it: it.datetime.isoformat() if it.datetime else "", reverse=True)
        return items

    def image_hrefs(self, items: Sequence[pystac.Item]) -> Iterator[tuple[pystac.Item, str]]:
        """(item, href) of each item's image asset, signed where the source needs it, and safe to open
        (`checked_href`: http(s) URLs; files only inside the local catalog)."""
        for item in items:
            asset = item.assets.get(self.image_asset)
            if asset is None:
                raise StacError(
                    f"item {item.id} has no {self.image_asset!r} asset; it has: {', '.join(item.assets) or 'none'}"
                )
            try:
                href = checked_href(asset.href, local_root=self.local_root)
            except UnsafeHref as exc:
                log.warning(
                    "STAC API %s (%s): item %r: href %r refused: %s", self.label, self.url, item.id, asset.href, exc
                )
                raise UnsafeHref(
                    f"the STAC API {self.label} gave item {item.id[:80]!r} an image href that is {exc}; "
                    "it was not opened. "
                    "Ask the operator to check the API"
                ) from None
            yield item, href

    def collection_ids(self) -> list[str]:
        try:
            return [c.id for c in self.client.get_collections()]
        except StacError:
            raise
        except Exception as exc:
            raise self._error("collections request", exc) from None
