"""`zchat web`: the gateway, and `zchat web invite NAME` for a CURVE broker."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from zchat.client.cli import broker_option, check_name, server_key_option, timeout_option
from zchat.common import keys

EXTRA_MISSING = "zchat web needs the websockets package: pip install 'zchat[web]'"


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


keys_option = click.option(
    "--keys", "key_folder", metavar="DIR", envvar="ZCHAT_WEB_KEYS", default=None,
    help="Folder of the web users' key pairs and invitations [default: $ZCHAT_HOME/web].",
)  # fmt: skip


@click.group(invoke_without_command=True)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, envvar="ZCHAT_WEB_LISTEN",
              help="HOST:PORT for the page and the WebSocket (port 0: a free one).")  # fmt: skip
@click.option("--origin", "origins", multiple=True, envvar="ZCHAT_WEB_ORIGIN", metavar="URL",
              help="An origin whose pages may open the WebSocket, e.g. https://chat.example.org (repeat, "
                   "or space-separated in the variable) [default: where it listens].")  # fmt: skip
@click.option("--resume-window", default=60.0, show_default=True, envvar="ZCHAT_WEB_RESUME_WINDOW",
              type=click.FloatRange(1, 86400), help="Seconds a session waits for its page to come back.")  # fmt: skip
@click.option("--max-sessions", default=1000, show_default=True, envvar="ZCHAT_WEB_MAX_SESSIONS",
              type=click.IntRange(1), help="Sessions the gateway holds at most.")  # fmt: skip
@broker_option
@timeout_option
@server_key_option
@keys_option
@click.option("--log-level", default="info", show_default=True, envvar="ZCHAT_LOG_LEVEL",
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.pass_context
def web(ctx: click.Context, listen: str, origins: tuple[str, ...], resume_window: float, max_sessions: int,
        broker: str, connect_timeout: float, server_key: str | None, key_folder: str | None,
        log_level: str) -> None:  # fmt: skip
    """Serve the web page and its WebSocket gateway to the broker."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        from zchat.web.server import Gateway
    except ImportError as e:
        if "websockets" not in str(e):
            raise
        raise click.ClickException(EXTRA_MISSING) from None
    from zchat.web.invites import Invites, default_folder
    from zchat.web.sessions import Settings

    host, port = parse_listen(listen)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    key = None
    if server_key:
        try:
            key = keys.server_key(server_key)
        except keys.KeyFileError as e:
            raise click.ClickException(str(e)) from None
    settings = Settings(broker, key, connect_timeout, resume_window, max_sessions=max_sessions)
    invites = Invites(Path(key_folder) if key_folder else default_folder()) if key else None
    allowed = {o.rstrip("/") for value in origins for o in value.split()}
    gateway = Gateway(settings, invites, allowed)
    asyncio.run(gateway.serve(host, port))


@web.command()
@click.argument("name", callback=check_name)
@keys_option
@click.option("--url", default="http://127.0.0.1:8080/", show_default=True, envvar="ZCHAT_WEB_URL",
              help="The page's address as the user reaches it.")  # fmt: skip
def invite(name: str, key_folder: str | None, url: str) -> None:
    """Make NAME an invitation link (and a key pair the gateway holds for NAME)."""
    from zchat.web.invites import Invites, default_folder

    folder = Path(key_folder) if key_folder else default_folder()
    try:
        token, pair = Invites(folder).create(name)
    except (keys.KeyFileError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{name}'s public key: {pair.public.decode()} (file {folder / name.lower() / keys.PUBLIC_FILE});",
               err=True)  # fmt: skip
    click.echo("give the link to them alone: it signs in as them (a new invite replaces it)", err=True)
    click.echo(f"{url.rstrip('/')}/#invite={name}:{token}")
