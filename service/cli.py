"""The ``lethe`` command.

``service`` never imports ``workers`` at import time; the commands that need the worker side
(the embedded in-process worker, ``demo``, ``pull``) load it by module name when they run.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer

from service.core.config import Settings, get_settings
from service.models import Role

app = typer.Typer(help="Lethe: make trained models forget people.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
client_app = typer.Typer(help="Clients: who holds tokens and owns requests.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log: export, offline verification, checkpoints, keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(client_app, name="client")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")

CLI_ACTOR = "cli"
EmbeddedDir = Annotated[Path | None, typer.Option(help="Use the embedded database in this directory")]


def embedded_settings(data_dir: Path) -> Settings:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(
        embedded=True,
        database={"url": f"sqlite:///{data_dir / 'lethe.sqlite3'}"},
        broker={"url": "memory://"},
        storage={"root": data_dir / "artifacts"},
        security={"secret_key": _embedded_secret(data_dir)},
        audit={"hmac_key": _embedded_secret(data_dir, "audit_hmac_key"),
               "signing_key": _embedded_secret(data_dir, "audit_signing_key", _new_signing_key)},
        opendsr={"key_file": data_dir / "opendsr-signing-key.pem"},
    )


def _new_signing_key() -> str:
    from service.audit.keys import new_signing_seed_b64

    return new_signing_seed_b64()


def _random_secret() -> str:
    import secrets

    return secrets.token_urlsafe(48)


def _embedded_secret(data_dir: Path, name: str = "secret_key", make=_random_secret) -> str:
    """A per-installation secret kept beside the embedded database (created once, 0600): the
    server secret, the audit HMAC key and the audit signing key each have their file."""
    path = data_dir / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make())
    return path.read_text().strip()


def _settings(embedded_dir: Path | None) -> Settings:
    settings = embedded_settings(embedded_dir) if embedded_dir else get_settings()
    from service.audit import keys as audit_keys

    audit_keys.configure(settings.audit)
    return settings


def _in_transaction(settings: Settings, work):
    """Run ``work(session)`` in one committed transaction; problems exit 1 with their detail."""
    from service.audit import keys as audit_keys
    from service.core.db import make_engine, make_session_factory
    from service.core.errors import ProblemError

    audit_keys.configure(settings.audit)  # events written here link with this settings' key
    engine = make_engine(settings.database)
    try:
        with make_session_factory(engine).begin() as session:
            return work(session)
    except ProblemError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _create_token(settings: Settings, role: Role, name: str, client: str | None = None) -> str:
    from service.client import service as clients

    def work(session):
        owner = clients.find_client(session, client) if client is not None else None
        return clients.issue_token(session, role=role, name=name, client=owner, actor=CLI_ACTOR).token

    return _in_transaction(settings, work)


@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option(help="requester | operator | serving | auditor | admin")],
    name: Annotated[str, typer.Option(help="A label for the token")] = "cli",
    client: Annotated[str | None, typer.Option(help="Client id or name (default: the client named NAME, created if missing)")] = None,
    embedded_dir: EmbeddedDir = None,
) -> None:
    """Create a token and print it once (only its hash is stored). Audited."""
    typer.echo(_create_token(_settings(embedded_dir), role, name, client))


@token_app.command("list")
def token_list(
    active: Annotated[bool, typer.Option(help="Only tokens that are not revoked")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    embedded_dir: EmbeddedDir = None,
) -> None:
    """List tokens (never their secrets): id, role, client, name, prefix, created, revoked."""
    from service.client import service as clients

    rows = _in_transaction(_settings(embedded_dir), lambda s: clients.list_tokens(s, include_revoked=not active))
    for t in rows:
        if as_json:
            typer.echo(t.model_dump_json())
        else:
            revoked = t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "-"
            typer.echo(f"{t.id}\t{t.role.value}\t{t.client}\t{t.name}\t{t.prefix}…\t"
                       f"{t.created_at.isoformat(timespec='seconds')}\trevoked={revoked}")


@token_app.command("revoke")
def token_revoke(token_id: int, embedded_dir: EmbeddedDir = None) -> None:
    """Revoke a token (audited). API processes stop accepting it within
    ``security.token_cache_ttl_s`` (default 10 s)."""
    from service.client import service as clients

    t = _in_transaction(_settings(embedded_dir), lambda s: clients.revoke(s, token_id, actor=CLI_ACTOR))
    typer.echo(f"revoked token {t.id} ({t.role.value}, client {t.client}) at {t.revoked_at.isoformat()}")


@client_app.command("create")
def client_create(name: str, embedded_dir: EmbeddedDir = None) -> None:
    """Create a client and print its id. Audited."""
    from service.client import service as clients

    c = _in_transaction(_settings(embedded_dir), lambda s: clients.create_client(s, name, actor=CLI_ACTOR))
    typer.echo(str(c.id))


@client_app.command("list")
def client_list(embedded_dir: EmbeddedDir = None) -> None:
    from service.client import service as clients

    for c in _in_transaction(_settings(embedded_dir), clients.list_clients):
        typer.echo(f"{c.id}\t{c.name}\tactive_tokens={c.active_tokens}")


@audit_app.command("export")
def audit_export(
    out: Annotated[Path | None, typer.Option(help="Write here (default: standard output)")] = None,
    embedded_dir: EmbeddedDir = None,
) -> None:
    """Write every audit event, then every signed checkpoint, as JSON lines."""
    from service.audit.service import export_lines

    def work(session):
        fh = open(out, "w", encoding="utf-8") if out is not None else sys.stdout
        try:
            n = 0
            for line in export_lines(session):
                fh.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
                n += 1
            return n
        finally:
            if out is not None:
                fh.close()

    n = _in_transaction(_settings(embedded_dir), work)
    if out is not None:
        typer.echo(f"wrote {n} lines to {out}", err=True)


@audit_app.command("verify")
def audit_verify(
    export: Annotated[Path, typer.Argument(help="A file written by `lethe audit export`")],
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint you trust (JSON from /v1/audit/checkpoint or a manifest)")],
    public_key: Annotated[Path, typer.Option(help="The signing public key (PEM, or JSON from /v1/audit/public-key)")],
    hmac_key_file: Annotated[Path | None, typer.Option(help="Also recompute every link with this HMAC key")] = None,
) -> None:
    """Check an export offline, with nothing but the public key: the checkpoint's signature, and
    that events 1..seq are complete, in order, linked, and end at the signed head."""
    from service.audit.keys import AuditKeys, hmac_key_id, load_private_key, load_public_key
    from service.audit.service import verify_export

    try:
        pub = load_public_key(public_key.read_text())
        cp = json.loads(checkpoint.read_text())
        if isinstance(cp, dict) and "audit_checkpoint" in cp:  # a whole version manifest
            cp = cp["audit_checkpoint"]
        lines = [json.loads(x) for x in export.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, ValueError, KeyError) as exc:
        typer.echo(f"FAILED: cannot read the inputs: {exc}", err=True)
        raise typer.Exit(2) from None
    keys = None
    if hmac_key_file is not None:
        k = hmac_key_file.read_text().strip()
        keys = AuditKeys(hmac_key_id(k), {hmac_key_id(k): k.encode()}, load_private_key(""))
    result = verify_export(lines, cp, pub, hmac_keys=keys)
    if not result.ok:
        typer.echo(f"FAILED: {result.reason}")
        raise typer.Exit(1)
    what = "links and content (HMAC)" if result.content_checked else "signature, order and links (not content: no HMAC key)"
    typer.echo(f"ok: {result.covered} events verified up to checkpoint seq {result.checkpoint_seq}; checked {what}")
    for note in result.notes:
        typer.echo(f"note: {note}")


@audit_app.command("checkpoint")
def audit_checkpoint(embedded_dir: EmbeddedDir = None) -> None:
    """Sign a checkpoint of the chain's head now and print it (JSON)."""
    from service.audit.service import checkpoint_dict, latest_checkpoint, sign_checkpoint

    def work(session):
        cp = sign_checkpoint(session, only_if_new=True) or latest_checkpoint(session)
        return None if cp is None else checkpoint_dict(cp)

    doc = _in_transaction(_settings(embedded_dir), work)
    if doc is None:
        typer.echo("error: the audit log is empty", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(doc))


@audit_app.command("public-key")
def audit_public_key(embedded_dir: EmbeddedDir = None) -> None:
    """Print the public key that checkpoints are signed with (PEM), as /v1/audit/public-key does."""
    from service.audit import keys as audit_keys
    from service.audit.keys import public_key_pem

    _settings(embedded_dir)
    typer.echo(public_key_pem(audit_keys.current().public_key), nl=False)


@audit_app.command("keygen")
def audit_keygen() -> None:
    """Print a new Ed25519 signing key (for LETHE_AUDIT__SIGNING_KEY) and its public key."""
    from service.audit.keys import load_private_key, public_key_id, public_key_pem

    seed = _new_signing_key()
    pub = load_private_key(seed).public_key()
    typer.echo(f"LETHE_AUDIT__SIGNING_KEY={seed}\n# key id {public_key_id(pub)}\n{public_key_pem(pub)}", nl=False)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    from service.core import migrate

    settings = _settings(None)
    migrate.upgrade(settings.database.url, revision)
    if revision == "head":
        from service.audit.service import rekey_legacy_chain

        n = _in_transaction(settings, rekey_legacy_chain)
        if n:
            typer.echo(f"audit chain: {n} events of the old unkeyed chain re-linked with the HMAC key")


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
