"""The ``captionq`` command line (``captionq --help``). Each command builds the settings once, here
at the entry point, and passes them down; heavy imports (torch, uvicorn, celery) happen inside
the command that needs them so ``captionq --help`` stays instant."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from cli import (
    batch_cmd,
    caption,
    client,
    devtools,
    keys,
    models_cmd,
    plans,
    server,
    tenants_cmd,
    workers_cmd,
)
from cli.common import console

try:  # typer vendors click (typer._click) in the versions this project uses
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - typer releases that use the click package
    from click import exceptions as click_errors  # type: ignore[no-redef]

app = typer.Typer(
    name="captionq",
    help=(
        "captionq: asynchronous captioning and visual question answering with InternVL2.\n\n"
        "Production: `captionq migrate`, `captionq serve`, `captionq worker`.  "
        "On one machine: `captionq up`, or `captionq caption FILE` for a one-shot answer."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("serve")(server.serve)
app.command("worker")(server.worker)
app.command("migrate")(server.migrate)
app.command("up")(server.up)
app.command("healthcheck")(server.healthcheck)
app.command("caption")(caption.caption)
app.command("make-test-checkpoint")(devtools.make_test_checkpoint)
app.add_typer(keys.app, name="keys")
app.add_typer(plans.app, name="plans")
app.add_typer(tenants_cmd.app, name="tenants")
app.add_typer(models_cmd.app, name="models")
app.add_typer(batch_cmd.app, name="batch")
for _name, _fn in client.COMMANDS.items():
    if _name != "status":  # `status ID` is v1's; `status` alone shows the fleet (workers_cmd)
        app.command(_name)(_fn)
app.command("workers")(workers_cmd.workers)
app.command("status")(workers_cmd.status)


def main() -> None:
    """Run the CLI. A usage mistake (an unknown option, a missing argument, a bad value) is one
    line naming the command's --help, exit 2, instead of click's usage box."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="captionq", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        code = 0
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "captionq"
        console.print(f"[red]error:[/red] {escape(exc.format_message().rstrip('.'))} (see {escape(where)} --help)",
                      highlight=False)
        code = 2
    except click_errors.ClickException as exc:
        console.print(f"[red]error:[/red] {escape(exc.format_message())}", highlight=False)
        code = exc.exit_code
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
