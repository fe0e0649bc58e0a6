"""`zchat connect`, `zchat send` and `zchat who`."""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import replace

import click

from zchat.client import events as ev
from zchat.client import local, oneshot
from zchat.client.render import visible
from zchat.client.script import LineWriter, run_lines
from zchat.client.session import Client, ConnectError
from zchat.client.settings import ENVIRONMENT, Settings
from zchat.common import keys
from zchat.common.protocol import EVERYONE, valid_name

ENDPOINT = re.compile(r"(tcp|ipc)://\S+")


def check_broker(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """One endpoint or several, comma-separated: each a ZeroMQ tcp:// or ipc:// address."""
    endpoints = [e.strip() for e in value.split(",")]
    for endpoint in endpoints:
        if not ENDPOINT.fullmatch(endpoint):
            raise click.BadParameter(f"{endpoint!r} is not a broker endpoint such as tcp://127.0.0.1:5555")
    return ",".join(endpoints)


def check_finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):  # nan passes FloatRange's bounds
        raise click.BadParameter("give a number of seconds")
    return value


# Each option's default is the setting's own (settings.py): one default per setting.
broker_option = click.option(
    "--broker", default=Settings.broker, show_default=True, envvar=ENVIRONMENT["broker"],
    callback=check_broker,
    help="The broker's ROUTER endpoint; several, comma-separated, for the brokers of a cluster "
    "(each reconnect tries the next).",
)  # fmt: skip
timeout_option = click.option(
    "--connect-timeout", default=Settings.connect_timeout, show_default=True,
    envvar=ENVIRONMENT["connect_timeout"], type=click.FloatRange(0.1, 600), callback=check_finite,
    help="Seconds to wait for the broker.",
)  # fmt: skip


server_key_option = click.option(
    "--server-key", default=None, envvar=ENVIRONMENT["server_key"], metavar="KEY",
    help="The broker's public key (z85, or a file holding it): encrypt with CURVE, as your own key pair.",
)  # fmt: skip


def encryption(server_key: str | None) -> tuple[bytes | None, keys.KeyPair | None]:
    """The broker's key and our own pair, made on first use; (None, None) for plain traffic."""
    if not server_key:
        return None, None
    try:
        key = keys.server_key(server_key)
        pair, made = keys.own_pair()
    except (keys.KeyFileError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if made:
        click.echo(
            f"zchat: made your key pair in {keys.home()} (public key {pair.public.decode()})", err=True
        )
    return key, pair


def settings_of(name: str, broker: str, connect_timeout: float, server_key: str | None,
                client: str = "terminal") -> Settings:  # fmt: skip
    """The program's settings, read once from the options (and through them the environment)."""
    key, pair = encryption(server_key)
    return Settings(name, broker, connect_timeout, server_key=key, keys=pair, client=client)


def check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not valid_name(value):
        raise click.BadParameter("a name is 1-32 letters, digits, '_', '-' or '.'")
    return value


name_option = click.option("--name", required=True, envvar=ENVIRONMENT["name"], callback=check_name,
                           help="Your name: 1-32 letters, digits, _ - .")  # fmt: skip


def wants_colour(stream: object) -> bool:
    return bool("NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty())


def start(client: Client) -> Client:
    try:
        return client.connect()
    except ConnectError as e:
        raise click.ClickException(visible(f"cannot join {client.broker} as {client.name}: {e}")) from None


@click.command()
@name_option
@broker_option
@timeout_option
@server_key_option
@click.option("--json", "json_mode", is_flag=True, help="Line mode with one JSON object per event.")
@click.option("--colour/--no-colour", default=True, show_default=True,
              help="Colour names (NO_COLOR in the environment turns it off too).")  # fmt: skip
@click.option("--bell/--no-bell", default=Settings.bell, show_default=True, envvar=ENVIRONMENT["bell"],
              help="Ring the terminal's bell on a private message or a mention of your name.")  # fmt: skip
def connect(name: str, broker: str, connect_timeout: float, server_key: str | None, json_mode: bool,
            colour: bool, bell: bool) -> None:  # fmt: skip
    """Chat: a terminal UI, or line mode when stdin is not a terminal."""
    settings = replace(settings_of(name, broker, connect_timeout, server_key), bell=bell)
    if sys.stdin.isatty() and sys.stdout.isatty() and not json_mode:
        from zchat.client.tui import run_tui  # prompt_toolkit loads only here

        sys.exit(run_tui(settings, colour and "NO_COLOR" not in os.environ))
    writer = LineWriter(
        sys.stdout, name, json_mode, colour=colour and not json_mode and wants_colour(sys.stdout)
    )
    client = Client.from_settings(settings, on_event=writer)
    endpoint = None
    try:
        start(client)
        endpoint = local.listen(
            client, settings, writer.sent_for_another, lambda text: click.echo(text, err=True)
        )
        # Every request is answered within the answer timeout: waiting longer would be for nothing.
        code = run_lines(client, sys.stdin, writer, drain_timeout=settings.answer_timeout)
    except KeyboardInterrupt:  # Ctrl-C: leave properly, then exit as interrupted
        code = 130
    finally:
        client.close()
        if endpoint is not None:
            endpoint.close()
    if client.running():
        # Ctrl-C inside a wait can leave the poller thread stuck on a lock the wait held;
        # then its ZeroMQ context would hold the interpreter's exit for ever.
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


@click.command()
@name_option
@broker_option
@timeout_option
@server_key_option
@click.option("--to", "to", metavar="NAME", help="Send privately to NAME.")
@click.option("--all", "everyone", is_flag=True, help="Send to everyone.")
@click.argument("text", nargs=-1, required=True)
def send(name: str, broker: str, connect_timeout: float, server_key: str | None, to: str | None,
         everyone: bool, text: tuple[str, ...]) -> None:  # fmt: skip
    """Send one message, through NAME's open chat if there is one; exit 0 only when the broker
    accepted it."""
    if bool(to) == everyone:
        raise click.UsageError("give exactly one of --to NAME and --all")
    message = " ".join(text)
    try:
        # As if typed in the user's open chat: a session beside it would be refused (409).
        through = local.send_through_chat(broker, name, to or EVERYONE, message, Settings.answer_timeout)
    except TimeoutError as e:
        raise click.ClickException(f"perhaps not sent: {e}") from None
    if isinstance(through, local.Refused):
        raise click.ClickException(visible(f"not sent: {through.text} ({through.code})"))
    if through is not None:
        click.echo(visible(f"sent to {to or 'everyone'} (id {through.msg_id})"))
        return
    # Unannounced: others see the message, not a join and a leave around it.
    settings = replace(settings_of(name, broker, connect_timeout, server_key), announce=False)
    client = start(Client.from_settings(settings, on_event=lambda event: None))
    try:
        request = client.send(to, message) if to else client.broadcast(message)
        # The client answers every request within its answer timeout; this is a backstop.
        outcome = request.wait(timeout=settings.connect_timeout + settings.answer_timeout + 5)
    except TimeoutError:
        raise click.ClickException("not sent: no answer from the client library in time") from None
    finally:
        client.close()
    if isinstance(outcome, ev.Refusal):
        raise click.ClickException(visible(f"not sent: {outcome.text} ({outcome.code})"))
    click.echo(f"sent to {to or 'everyone'} (id {request.msg_id})")


@click.command()
@broker_option
@timeout_option
@server_key_option
def who(broker: str, connect_timeout: float, server_key: str | None) -> None:
    """Print who is online, one name per line."""
    key, pair = encryption(server_key)
    try:
        names = oneshot.who(broker, connect_timeout, key, pair)
    except TimeoutError as e:
        raise click.ClickException(str(e)) from None
    for name in names:
        click.echo(visible(name))  # checked by the broker, not here


@click.command()
@name_option
@broker_option
@timeout_option
@server_key_option
@click.option("--chat-with", metavar="NAME", help="Talk to NAME privately and to everyone publicly.")
@click.option(
    "--every",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.05, 3600),
    help="Seconds between rounds of talk.",
)
@click.option(
    "--rounds",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Stop after this many rounds (0: run until stopped).",
)
def bot(name: str, broker: str, connect_timeout: float, server_key: str | None, chat_with: str | None,
        every: float, rounds: int) -> None:  # fmt: skip
    """A greeter and echo bot (see client/bot.py to write your own)."""
    from zchat.client.bot import run_bot

    settings = settings_of(name, broker, connect_timeout, server_key, client="bot")
    try:
        sys.exit(run_bot(settings, chat_with, every, rounds))
    except ConnectError as e:
        raise click.ClickException(f"cannot join {broker} as {name}: {e}") from None
