"""The `tinker-recovery` command."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from app.config import Settings


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, or exit with a readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = [
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in error.errors()
        ]
        sys.exit("tinker-recovery: invalid settings\n" + "\n".join(lines))


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app import logs
    from app.main import create_app

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.no_migrate:
        overrides["migrate_on_start"] = False
    settings = load_settings(**overrides)
    logs.configure(settings.log_level)
    app = create_app(settings)
    # What exists now (modules, routes, schemas) lives as long as the process:
    # kept out of the collector's reach, it no longer lengthens every full
    # collection, which pauses every open stream while it runs.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=max(settings.shutdown_grace_ms // 1000, 1) + 2,
    )


def migrate(args: argparse.Namespace) -> None:
    from app.storage.migrate import downgrade, upgrade

    settings = load_settings()
    if args.downgrade:
        downgrade(settings.database_url, args.revision or "base")
    else:
        upgrade(settings.database_url, args.revision or "head")
    target = args.revision or ("base" if args.downgrade else "head")
    print(f"database at revision {target}")


def openapi(args: argparse.Namespace) -> None:
    from app.main import create_app

    schema = create_app(Settings(host="127.0.0.1")).openapi()
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)


def fake_tinker(args: argparse.Namespace) -> None:
    from app.tinker.fake import run_fake_tinker

    run_fake_tinker(args.host, args.port)


def demo(args: argparse.Namespace) -> None:
    from app.demo import run_demo

    sys.exit(run_demo())


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="tinker-recovery",
        description="Watch Tinker training runs and restore corrupted ones.",
    )
    commands = main.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="serve the API and the recovery engine")
    run.add_argument("--host", help="overrides RECOVERY_HOST")
    run.add_argument("--port", type=int, help="overrides RECOVERY_PORT")
    run.add_argument("--no-migrate", action="store_true", help="skip migrations")
    run.set_defaults(handler=serve)

    mig = commands.add_parser("migrate", help="apply the database migrations")
    mig.add_argument("revision", nargs="?", help="target revision (default head)")
    mig.add_argument("--downgrade", action="store_true", help="go down instead")
    mig.set_defaults(handler=migrate)

    spec = commands.add_parser("openapi", help="write the OpenAPI schema")
    spec.add_argument("-o", "--output", default="openapi.json", help="file or -")
    spec.set_defaults(handler=openapi)

    fake = commands.add_parser("fake-tinker", help="serve the bundled fake Tinker")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8001)
    fake.set_defaults(handler=fake_tinker)

    show = commands.add_parser("demo", help="the whole flow against the fake Tinker")
    show.set_defaults(handler=demo)
    return main


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
