"""The `pearl` command: generate demo regions, ingest imagery, serve the STAC API, cut tiles, run the demo."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from pearl_pipelines.settings import Settings, get_settings


class CliError(Exception):
    """A user mistake: printed as one line, exit code 2, no traceback."""


def _regions(names: str | None) -> list:
    from pearl_pipelines.geo.regions import load_regions

    regions = load_regions()
    if not names:
        return list(regions.values())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in regions]
    if unknown:
        raise CliError(f"unknown region(s) {', '.join(unknown)}; known: {', '.join(regions)}")
    return [regions[n] for n in wanted]


def cmd_generate(args: argparse.Namespace, settings: Settings) -> None:
    from pearl_pipelines.synthetic.regions import build_region

    for region in _regions(args.regions):
        if (settings.catalog_dir / region.name / "collection.json").exists() and not args.force:
            print(f"region {region.name}: already in {settings.catalog_dir} (use --force to rebuild)")
            continue
        started = time.perf_counter()
        collection = build_region(region, settings.catalog_dir, scale=args.scale, show_progress=True)
        n_items = len(list(collection.get_items()))
        print(f"region {region.name}: {n_items} items in {time.perf_counter() - started:.1f} s")


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> None:
    from pearl_pipelines.geo.ingest import IngestError, ingest_files, parse_band_map

    try:
        band_map = parse_band_map(args.bands) if args.bands else None
        items = ingest_files(
            [Path(p) for p in args.files], settings.catalog_dir, args.collection, band_map=band_map, show_progress=True
        )
    except IngestError as exc:
        raise CliError(str(exc)) from exc
    for item in items:
        print(f"ingested {item.id} -> {item.assets['image'].href}")
    print(f"collection {args.collection}: restart the STAC API (`pearl stac`) to serve the new items")


def cmd_stac(args: argparse.Namespace, settings: Settings) -> None:
    from pearl_pipelines.geo.stac_server import StacServer

    with StacServer(settings.catalog_dir, settings.stac_port) as server:
        print(f"STAC API: {server.url} (Ctrl-C stops it)")
        _wait_for_interrupt()


def cmd_tiles(args: argparse.Namespace, settings: Settings) -> list[Path]:
    from pearl_pipelines.geo.grid import aoi_to_tile_keys
    from pearl_pipelines.geo.stac import StacCatalog
    from pearl_pipelines.geo.tiles import fetch_tile

    region = _regions(args.region)[0]
    keys = aoi_to_tile_keys(region.geometry)
    catalog = StacCatalog.from_settings(
        settings, collections=[region.name] if settings.stac_source == "local" else None
    )
    paths = [fetch_tile(catalog, key, settings.tiles_dir) for key in tqdm(keys, desc="imagery tiles", unit="tile")]
    print(f"{len(paths)} imagery tiles (COG) under {settings.tiles_dir}")
    return paths


def cmd_render(args: argparse.Namespace, settings: Settings) -> None:
    from pearl_pipelines.classes import load_schema
    from pearl_pipelines.geo.render import false_color_png, labels_png, true_color_png
    from pearl_pipelines.synthetic.scene import generate_scene

    out = Path(args.out)
    scene = generate_scene(args.size, args.size, seed=args.seed)
    true_color_png(scene.image, out / "demo_true_color.png", max_size=args.max_size)
    false_color_png(scene.image, out / "demo_false_color.png", max_size=args.max_size)
    labels_png(scene.labels, load_schema("chesapeake9"), out / "demo_labels.png", max_size=args.max_size)
    print(f"wrote demo_true_color.png, demo_false_color.png, demo_labels.png to {out}")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    from pearl_pipelines.demo import run_demo

    run_demo(settings, keep_running=not args.no_wait)


def cmd_starter(args: argparse.Namespace, settings: Settings) -> None:
    from pearl_pipelines.ml.shipped import require_shipped
    from pearl_pipelines.ml.starter import (
        STARTER_SCHEMAS,
        format_report,
        recipe_for,
        ship_starter,
        train_starter,
    )
    from pearl_pipelines.services import ensure_mlflow

    schemas = list(STARTER_SCHEMAS) if args.schema == "all" else [args.schema]
    try:
        for schema_id in schemas:
            recipe_for(schema_id, args.arch)  # fail on a bad schema/arch before starting anything
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    with contextlib.ExitStack() as stack:
        try:
            uri = stack.enter_context(ensure_mlflow(settings))
        except ConnectionError as exc:
            raise CliError(str(exc)) from None
        for schema_id in schemas:
            recipe = recipe_for(schema_id, args.arch)
            if args.precision:
                recipe.train.precision = args.precision
            try:
                weights = require_shipped(settings.assets_dir, schema_id, recipe.arch) if args.shipped else None
            except FileNotFoundError as exc:
                raise CliError(f"{exc} (without --shipped)") from None
            result = train_starter(
                schema_id, recipe.arch, settings, recipe=recipe, epochs=args.epochs, tracking_uri=uri, weights=weights
            )
            load = os.getloadavg()[0]
            how = "shipped weights" if weights else f"trained in {result.train_seconds:.0f} s"
            print(
                f"\n{result.model_name} v{result.model_version} ({result.arch}, {result.precision.precision}): {how} "
                f"({result.train_cpu_seconds:.0f} CPU s, load average {load:.1f})"
            )
            print(format_report(result.holdout))
            aliases = "starter, champion" if result.became_champion else "starter"
            print(
                f"  registered models:/{result.model_name}/{result.model_version} (aliases: {aliases}); "
                f"run {uri}/#/experiments/{result.experiment_id}/runs/{result.run_id}; files {result.model_path.parent}"
            )
            if args.ship:
                print(f"  shipped weights written to {ship_starter(result, settings.assets_dir)}")


def cmd_db(args: argparse.Namespace, settings: Settings) -> None:
    """Label-store schema by hand; the app and Dagster also upgrade on start, so this is for deploys and checks."""
    from sqlalchemy import create_engine, make_url

    from pearl_pipelines.labels import migrate

    if args.db_command == "revision":
        print(f"new revision: {migrate.new_revision(args.message)} (review it before committing)")
        return
    url = settings.resolved_label_store_url
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_engine(url)
    try:
        if args.db_command == "upgrade":
            print(f"label store {shown}: at revision {migrate.upgrade(engine, args.revision)}")
        else:
            with engine.connect() as conn:
                current = migrate.current_revision(conn)
            head = migrate.head_revision()
            state = "up to date" if current == head else f"behind (head is {head}; run `pearl db upgrade`)"
            print(f"label store {shown}: revision {current or 'none'}, {state}")
    except migrate.MigrationError as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()


def cmd_access(args: argparse.Namespace, settings: Settings) -> None:
    """Operators' bootstrap of accounts (the API does the same for signed-in owners and users)."""
    from pearl_pipelines.labels.accounts import Accounts, Role
    from pearl_pipelines.labels.store import LabelStore, LabelStoreError

    store = LabelStore(settings.resolved_label_store_url)
    accounts = Accounts(store, settings.auth_secret)
    user = accounts.user(args.subject, args.name or args.subject)
    try:
        if args.access_command == "grant":
            accounts.set_role(args.project, user, Role[args.role])
            print(f"{user.subject} is now {args.role} of project {args.project}")
        else:
            issued = accounts.issue_token(user, args.token_name, args.days)
            print(f"token {issued.id} for {user.subject}, expires {issued.expires_at:%Y-%m-%d}; shown once:")
            print(issued.token)
    except (KeyError, LabelStoreError) as exc:
        raise CliError(str(exc.args[0]) if exc.args else str(exc)) from None
    finally:
        store.engine.dispose()


def _wait_for_interrupt() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pearl", description="Human-in-the-loop land-cover mapping pipelines")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate the synthetic demo regions into the local STAC catalog")
    p.add_argument("--regions", help="comma-separated region names (default: all in assets/regions)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink regions for quick trials (0 < scale <= 1)")
    p.add_argument("--force", action="store_true", help="rebuild regions that already exist")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("ingest", help="turn your own GeoTIFFs into STAC items in the local catalog")
    p.add_argument("files", nargs="+", help="GeoTIFF files (any CRS; uint8, uint16 or float)")
    p.add_argument("--collection", default="ingested", help="collection to add the items to (default: ingested)")
    p.add_argument("--bands", help="source band numbers for R,G,B,NIR, e.g. 3,2,1,4 for B,G,R,NIR files")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("stac", help="serve the local catalog as a STAC API on 127.0.0.1")
    p.set_defaults(func=cmd_stac)

    p = sub.add_parser("tiles", help="cut a region into imagery tile COGs through the STAC API")
    p.add_argument("--region", default="demo")
    p.set_defaults(func=cmd_tiles)

    p = sub.add_parser("render", help="render true-colour, false-colour and label PNGs of a demo scene")
    p.add_argument("--out", default="docs/images")
    p.add_argument("--size", type=int, default=1024, help="scene side in metres (1 m pixels)")
    p.add_argument("--max-size", type=int, default=512, help="PNG side in pixels")
    p.add_argument("--seed", type=int, default=505)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("starter", help="train, evaluate on holdout and register the starter models in MLflow")
    p.add_argument("--schema", default="all", choices=["chesapeake9", "chesapeake4", "all"])
    p.add_argument("--arch", choices=["fcn", "unet"], help="default: each schema's starter architecture")
    p.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="default: PEARL_PRECISION (auto)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ship", action="store_true", help="also write the trained weights to assets/starters")
    how.add_argument("--shipped", action="store_true", help="register the shipped weights instead of training")
    p.set_defaults(func=cmd_starter)

    p = sub.add_parser("db", help="label-store schema: Alembic migrations (PEARL_LABEL_STORE_URL or SQLite in home)")
    db = p.add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="migrate to the newest revision (adopts a pre-Alembic SQLite database)")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    db.add_parser("current", help="print the database's revision and whether it is the newest")
    rev = db.add_parser("revision", help="developers: autogenerate the next revision after changing the models")
    rev.add_argument("-m", "--message", required=True, help="what the revision changes, e.g. 'label notes column'")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("access", help="review-app accounts: grant a project role, issue a personal API token")
    access = p.add_subparsers(dest="access_command", required=True)
    grant = access.add_parser("grant", help="give a user (by OIDC subject) a role in a project")
    grant.add_argument("--project", type=int, required=True)
    grant.add_argument("--role", choices=["viewer", "mapper", "owner"], required=True)
    token = access.add_parser("token", help="issue a personal API token for scripts and the CLI")
    token.add_argument("--name", dest="token_name", required=True, help="what the token is for")
    token.add_argument("--days", type=int, default=90, help="lifetime in days (1-366, default 90)")
    for q in (grant, token):
        q.add_argument("--subject", required=True, help="the user: 'oidc:<issuer>#<sub>' (see GET /api/me)")
        q.add_argument("--display-name", dest="name", help="shown until the user signs in")
    p.set_defaults(func=cmd_access)

    p = sub.add_parser("demo", help="generate, start the local services, run the main job, print the URLs")
    p.add_argument("--no-wait", action="store_true", help="stop the services once the job is done")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "scale", 1.0) is not None and not 0 < getattr(args, "scale", 1.0) <= 1:
        print("pearl: error: --scale must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        args.func(args, get_settings())
    except CliError as exc:
        print(f"pearl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
