"""The ``captionq`` command line (../shared/CLI.md). Each command builds the settings once, here
at the entry point, and passes them down; heavy imports (torch, uvicorn, celery) happen inside
the command that needs them so ``captionq --help`` stays instant."""

from __future__ import annotations

import typer

from cli import caption, client, devtools, keys, models_cmd, server

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
app.command("caption")(caption.caption)
app.command("make-test-checkpoint")(devtools.make_test_checkpoint)
app.add_typer(keys.app, name="keys")
app.add_typer(models_cmd.app, name="models")
for _name, _fn in client.COMMANDS.items():
    app.command(_name)(_fn)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
