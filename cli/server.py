"""Long-running processes: ``serve``, ``worker``, ``migrate`` and the local mode ``up``."""

from __future__ import annotations

import typer

from cli.common import console, database_reachable, settings_or_exit


def serve(
    host: str | None = typer.Option(None, "--host", help="Bind address (default CAPTIONQ_HOST, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default CAPTIONQ_PORT, 8000)."),
    workers: int = typer.Option(1, "--workers", help="uvicorn worker processes."),
) -> None:
    """Run the HTTP API (uvicorn). Jobs are stored in CAPTIONQ_DATABASE_URL and published to
    CAPTIONQ_BROKER_URL; run `captionq migrate` first."""
    import uvicorn

    from api.app import create_app
    from core import prometheus, tracing
    from core.logging import setup_logging

    settings = settings_or_exit(host=host, port=port)
    setup_logging(settings)
    own_dir = prometheus.multiprocess_dir() is None
    if workers > 1 or not own_dir:
        # Every process writes its metrics to one folder and a scrape, whichever process answers
        # it, sums them (core.prometheus). Set before the worker processes start: they inherit it.
        metrics_dir = prometheus.use_multiprocess_dir()
    try:
        if workers > 1:
            # uvicorn needs an import string to start workers; the factory reads settings there.
            uvicorn.run("api.app:app_from_env", factory=True, host=settings.host, port=settings.port,
                        workers=workers, log_config=None)
            return
        tracing.setup("captionq-api")
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)
    finally:
        if workers > 1 and own_dir:
            prometheus.remove_multiprocess_dir(metrics_dir)


def worker(
    queues: str = typer.Option("gpu,io", "--queues", "-Q", help="Comma-separated queues: gpu (model work), io (webhooks, batch finalisation)."),
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", help="Task threads (gpu: jobs in flight that the batcher can combine; default batch size x 2)."),
    beat: bool = typer.Option(False, "--beat", "-B", help="Also run the periodic scheduler (sweeper); run exactly one per deployment."),
    loglevel: str | None = typer.Option(None, "--loglevel", "-l", help="Log level (default CAPTIONQ_LOG_LEVEL)."),
    model: str | None = typer.Option(None, "--model", help="The model to serve on the gpu queue: a name from CAPTIONQ_MODELS (default CAPTIONQ_WORKER_MODEL, else CAPTIONQ_DEFAULT_MODEL)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=0, max=65535, help="Serve Prometheus metrics at /metrics on this port (default CAPTIONQ_WORKER_METRICS_PORT; bound to CAPTIONQ_WORKER_PROBE_HOST)."),
    health_port: int | None = typer.Option(None, "--health-port", min=0, max=65535, help="Serve the health probe /healthz on this port: 200 once consuming, 503 while starting or stopping (default CAPTIONQ_WORKER_HEALTH_PORT)."),
) -> None:
    """Run a Celery worker. With the gpu queue the model is loaded once, in this process (one
    worker process per GPU: set CAPTIONQ_DEVICE=cuda:N), and only that model's jobs are taken."""
    from worker.app import run_worker

    settings = settings_or_exit(worker_metrics_port=metrics_port, worker_health_port=health_port)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in names if q not in ("gpu", "io")]
    if bad or not names:
        console.print(f"[red]error:[/red] unknown queue(s) {bad or names}: use gpu, io")
        raise typer.Exit(2)
    if model is not None and settings.registry.resolve(model) is None:
        console.print(f"[red]error:[/red] unknown model {model!r} (--model): this deployment serves "
                      f"{', '.join(settings.registry.names)} (CAPTIONQ_MODELS)", highlight=False)
        raise typer.Exit(2)
    run_worker(settings, queues=names, concurrency=concurrency, beat=beat, loglevel=loglevel, model=model)


def migrate() -> None:
    """Apply the database migrations (Alembic `upgrade head`) to CAPTIONQ_DATABASE_URL."""
    settings = settings_or_exit()
    from core.migrate import upgrade

    with database_reachable(settings):
        upgrade(settings)
    console.print(f"database at head: {settings.database_url}")


def up(
    port: int = typer.Option(8000, "--port", help="API port on 127.0.0.1."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address. Anything but loopback requires CAPTIONQ_AUTH=required."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint directory or hub id (default CAPTIONQ_MODEL)."),
) -> None:
    """Embedded local mode: API + a real Celery worker process + the scheduler, on SQLite, a
    broker that needs no server (kombu's filesystem transport) and the local media folder
    (CAPTIONQ_MEDIA_ROOT, default ./media). Same code paths as production. Ctrl-C stops it all."""
    from cli.local import LocalStack, local_settings, port_in_use

    settings = local_settings(host=host, port=port, model=model)
    if port_in_use(settings.host, settings.port):
        console.print(f"[red]error:[/red] port {settings.port} on {settings.host} is already in use "
                      "(another captionq up?); pick another with --port")
        raise typer.Exit(2)
    stack = LocalStack(settings)
    with database_reachable(settings):
        stack.prepare()
    console.print(f"captionq local mode: http://{settings.host}:{settings.port}  "
                  f"(database {settings.database_url}, media {settings.media_root.resolve()}, "
                  f"auth {settings.auth})", highlight=False)
    if settings.auth == "disabled":
        with database_reachable(settings):
            tenant, secret = stack.local_tenant()
        console.print(f"tenant {tenant}: every request belongs to it while auth is disabled", highlight=False)
        console.print(f"webhook secret {secret}  (signs this tenant's webhooks; "
                      "`captionq keys rotate-webhook-secret --tenant ten_local` replaces it)", highlight=False)
    code = stack.run_forever()
    if code:
        raise typer.Exit(code)


def healthcheck(
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds to wait for the answer."),
) -> None:
    """Probe this host's captionq process, for a container's health check: the worker's /healthz
    on CAPTIONQ_WORKER_HEALTH_PORT when that is set, else the API's /healthz on CAPTIONQ_PORT.
    Exit 0 when healthy, 1 otherwise."""
    import urllib.error
    import urllib.request

    settings = settings_or_exit()
    port = settings.worker_health_port or settings.port
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        console.print(f"unhealthy: {url} answered {exc.code} {exc.read().decode(errors='replace')[:200]}",
                      highlight=False)
        raise typer.Exit(1) from None
    except OSError as exc:
        console.print(f"unhealthy: {url}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(body)
