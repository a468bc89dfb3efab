"""Imagery access through a STAC API: one code path for the local catalog and Planetary Computer NAIP.

The local default is a real STAC API (rustac) on loopback over the catalog under PEARL_HOME;
production points the same client at Planetary Computer and signs asset URLs with its SAS tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pystac
from pystac_client import Client
from pystac_client.exceptions import APIError

from pearl_pipelines.settings import Settings, get_settings

IMAGE_ASSET = "image"  # NAIP's 4-band asset key; the local catalog uses the same key
PLANETARY_COMPUTER_COLLECTION = "naip"


class StacError(RuntimeError):
    """The STAC API could not be reached or answered with an error."""


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
        raise StacError(
            f"could not get a Planetary Computer SAS token from {PcSettings.get().sas_url} to sign asset URLs: {exc}; "
            "check network access, PC_SDK_SAS_URL and PC_SDK_SUBSCRIPTION_KEY"
        ) from exc


@dataclass
class StacCatalog:
    """Searches a STAC API and yields items whose image assets rasterio can open."""

    url: str
    collections: Sequence[str] | None = None
    sign_planetary_computer: bool = False
    image_asset: str = IMAGE_ASSET
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
        )

    @property
    def client(self) -> Client:
        if self._client is None:
            modifier = _sign_planetary_computer if self.sign_planetary_computer else None
            try:
                self._client = Client.open(self.url, modifier=modifier)
            except (APIError, OSError) as exc:
                raise StacError(f"cannot open the STAC API at {self.url}: {exc}") from exc
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
        try:
            search = self.client.search(
                collections=list(collections or self.collections or []) or None,
                bbox=list(bbox) if bbox is not None else None,
                intersects=intersects,
                datetime=datetime,
                max_items=max_items,
            )
            items = list(search.items())
        except APIError as exc:
            raise StacError(f"STAC search at {self.url} failed: {exc}") from exc
        except OSError as exc:
            raise StacError(f"cannot reach the STAC API at {self.url}: {exc}") from exc
        items.sort(key=lambda it: it.datetime.isoformat() if it.datetime else "", reverse=True)
        return items

    def image_hrefs(self, items: Sequence[pystac.Item]) -> Iterator[tuple[pystac.Item, str]]:
        """(item, href) of each item's image asset, signed where the source needs it."""
        for item in items:
            asset = item.assets.get(self.image_asset)
            if asset is None:
                raise StacError(
                    f"item {item.id} has no {self.image_asset!r} asset; it has: {', '.join(item.assets) or 'none'}"
                )
            yield item, asset.href

    def collection_ids(self) -> list[str]:
        return [c.id for c in self.client.get_collections()]
