"""The `zchat` command: a click group whose subcommands live with their parts.

Subcommands are imported only when run, so `zchat broker` never loads the
terminal UI and `zchat connect` never loads the broker.
"""

from __future__ import annotations

import importlib

import click

#: command name -> "module:attribute" of a click command
SUBCOMMANDS = {
    "bot": "zchat.client.cli:bot",
    "broker": "zchat.broker.cli:broker",
    "connect": "zchat.client.cli:connect",
    "keygen": "zchat.common.cli:keygen",
    "send": "zchat.client.cli:send",
    "stats": "zchat.broker.stats:stats",
    "web": "zchat.web.cli:web",
    "who": "zchat.client.cli:who",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zchat")
@click.pass_context
def main(ctx: click.Context) -> None:
    """zchat: real-time chat over ZeroMQ. Options set every time can go in a config file
    (client/config.py: TOML, ~/.config/zchat/config.toml on Linux, or $ZCHAT_CONFIG)."""
    if ctx.invoked_subcommand in ("connect", "send", "who", "bot"):
        from zchat.client.config import ConfigError, default_map

        try:
            ctx.default_map = default_map()  # below options and their environment variables
        except ConfigError as e:
            raise click.ClickException(str(e)) from None


@click.command()
@click.option(
    "--out",
    "folder",
    metavar="DIR",
    default=None,
    help="Folder for zchat.key and zchat.pub [default: $ZCHAT_HOME, else the user config folder].",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def keygen(folder: str | None, force: bool) -> None:
    """Make a CURVE key pair (for `zchat broker --curve-secret`, or your own) and print its public key."""
    from pathlib import Path

    from zchat.common import keys

    target = Path(folder) if folder else keys.home()
    try:
        pair = keys.generate(target, force=force)
    except (keys.KeyFileError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"secret key: {target / keys.SECRET_FILE} (keep it private)", err=True)
    click.echo(f"public key: {target / keys.PUBLIC_FILE}", err=True)
    click.echo(pair.public.decode())
