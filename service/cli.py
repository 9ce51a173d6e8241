"""The ``lethe`` command.

``service`` never imports ``workers`` at import time; the commands that need the worker side
(the embedded in-process worker, ``demo``, ``pull``) load it by module name when they run.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated

import httpx
import typer

from service.core.config import Settings, get_settings
from service.models import Role

app = typer.Typer(help="Lethe: make trained models forget people.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")


def embedded_settings(data_dir: Path) -> Settings:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(
        embedded=True,
        database={"url": f"sqlite:///{data_dir / 'lethe.sqlite3'}"},
        broker={"url": "memory://"},
        storage={"root": data_dir / "artifacts"},
        security={"secret_key": _embedded_secret(data_dir)},
    )


def _embedded_secret(data_dir: Path) -> str:
    """A per-installation secret kept beside the embedded database (created once, 0600)."""
    path = data_dir / "secret_key"
    if not path.exists():
        import secrets

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _create_token(settings: Settings, role: Role, name: str) -> str:
    from service.core.db import make_engine, make_session_factory
    from service.core.security import create_token

    engine = make_engine(settings.database)
    try:
        with make_session_factory(engine).begin() as session:
            _, token = create_token(session, role, name)
    finally:
        engine.dispose()
    return token


@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option(help="requester | operator | serving | auditor | admin")],
    name: Annotated[str, typer.Option(help="A label for the token")] = "cli",
    embedded_dir: Annotated[Path | None, typer.Option(help="Use the embedded database in this directory")] = None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    settings = embedded_settings(embedded_dir) if embedded_dir else get_settings()
    typer.echo(_create_token(settings, role, name))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    from service.core import migrate

    migrate.upgrade(get_settings().database.url, revision)


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    from service.core import migrate

    migrate.downgrade(get_settings().database.url, revision)


@app.command()
def serve(
    embedded: Annotated[bool, typer.Option(help="SQLite + local artifacts + in-process worker; no servers")] = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: Annotated[Path, typer.Option(help="Embedded mode: where the database and artifacts live")] = Path("var/embedded"),
    demo: Annotated[bool, typer.Option(help="Embedded mode: register and train the demo model, then run deletions")] = False,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (production mode)")] = 1,
) -> None:
    """Run the HTTP API (and, with --embedded, a Celery worker in the same process)."""
    import uvicorn

    if not embedded:
        uvicorn.run("service.main:create_app", factory=True, host=host, port=port, workers=workers)
        return

    from service.core import migrate
    from service.main import create_app

    settings = embedded_settings(data_dir)
    migrate.upgrade(settings.database.url)
    admin_token = _create_token(settings, Role.admin, "embedded-admin")
    app_ = create_app(settings)
    runner = _start_embedded_worker(settings)
    base = f"http://{host}:{port}"
    typer.echo(
        f"\nLethe (embedded) on {base}  data: {data_dir.resolve()}\n"
        f"admin token (shown once): {admin_token}\n"
        f"dashboard: {base}/admin   API docs: {base}/docs\n"
        f"try:\n  curl -s -X POST {base}/v1/deletion-requests -H 'Authorization: Bearer {admin_token}' "
        f"-H 'Content-Type: application/json' -d '{{\"subject_id\": \"alice-123\"}}'\n"
    )
    if demo and runner is not None:
        runner.start_demo(base, admin_token)
    try:
        uvicorn.run(app_, host=host, port=port, log_level="info")
    finally:
        if runner is not None:
            runner.stop()


def _start_embedded_worker(settings: Settings):
    """Start the in-process Celery worker from ``workers.embedded`` when it is installed."""
    try:
        mod = importlib.import_module("workers.embedded")
    except ModuleNotFoundError as exc:
        typer.echo(f"(no in-process worker: {exc}; requests are recorded but not processed)", err=True)
        return None
    return mod.start(settings)


@app.command()
def pull(
    model: str,
    to: Annotated[Path, typer.Option(help="Directory to write the weights into")],
    url: Annotated[str, typer.Option(help="Lethe base URL")] = "http://127.0.0.1:8000",
    token: Annotated[str, typer.Option(help="A token with the serving role")] = "",
    ref: Annotated[str, typer.Option(help="latest, production or a version number")] = "latest",
    watch: Annotated[bool, typer.Option(help="Keep long-polling and pull each new version")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer of the server")] = 30.0,
) -> None:
    """Download a version's weights (sha256-verified, atomic) and load the model."""
    client_mod = importlib.import_module("workers.client")
    client = client_mod.LetheClient(url, token, timeout=timeout)
    failures: tuple[type[BaseException], ...] = (client_mod.PullError, ValueError, httpx.HTTPError)

    def show(p) -> None:
        m = p.manifest
        typer.echo(f"{m['model']} v{m['number']} sha256={m['sha256']} -> {p.path}")

    try:
        if watch:
            client.watch(model, to, show, ref=ref)
        else:
            show(client.pull(model, to, ref=ref))
    except failures as exc:
        typer.echo(failure_line(exc, url), err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # pragma: no cover - --watch until Ctrl-C
        pass
    finally:
        client.close()


@app.command()
def demo(
    url: Annotated[str, typer.Option(help="Lethe base URL")] = "http://127.0.0.1:8000",
    token: Annotated[str, typer.Option(help="An admin token")] = "",
) -> None:
    """Register a digits model, train it, delete a few subjects and print their receipts."""
    try:
        importlib.import_module("workers.demo").run(url, token)
    except (httpx.HTTPError, RuntimeError) as exc:
        typer.echo(failure_line(exc, url), err=True)
        raise typer.Exit(1) from None


def failure_line(exc: BaseException, url: str) -> str:
    """One clear line for a failed call to the server (no traceback)."""
    if isinstance(exc, httpx.TimeoutException):
        return f"error: {url} did not answer in time ({type(exc).__name__}); the server may be busy, try again"
    if isinstance(exc, httpx.ConnectError):
        return f"error: cannot connect to {url}; is Lethe running there? (start it with: lethe serve --embedded)"
    if isinstance(exc, httpx.HTTPStatusError):
        r = exc.response
        try:
            detail = r.json().get("detail") or r.reason_phrase
        except ValueError:
            detail = r.reason_phrase
        return f"error: {r.request.method} {r.request.url.path} answered {r.status_code}: {detail}"
    if isinstance(exc, httpx.HTTPError):
        return f"error: request to {url} failed: {type(exc).__name__}: {exc}"
    return f"error: {exc}"


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
