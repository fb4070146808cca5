"""Prepare, here, what bench/gpu_session_worker.sh and gpu_session_e2e.sh carry in ``.whl/``.

    python bench/device_wheels.py [--dest .whl] [--python-version 3.12]

The device machine has no package index. Its image (Python 3.12, torch, numpy, Pillow, numba,
tokenizers, safetensors, httpx, typer, rich, … — /work/.library/device/KINDS.md's list) lacks the
service half of the worker path: Celery and kombu, SQLAlchemy and Alembic, FastAPI, Starlette and
uvicorn, pydantic and pydantic-settings, boto3 (``storage`` imports it even when no S3 is used),
and it has transformers 5.17 where models/ is pinned to 5.24. This script downloads, with pip,
the versions installed in this virtualenv (the ones the test suite runs; transformers at the
pyproject.toml pin) as wheels for CPython ``--python-version`` on x86-64, unpacks them into one
folder — botocore's data cut down to S3's and the shared files, transformers' model folders cut
down to the families models/ uses, SQLAlchemy without its optional compiled modules,
fastapi-offline without the /docs pages' scripts (:func:`keep`)
— and writes it as ``worker-site.tar.xz`` (~8 MB in 2026-12). It removes loose wheels from
``--dest``. The same tarball serves every GPU session script (they unpack ``.whl/*.tar.xz``).

llguidance (structured output) is not carried: models/ imports it only when a request asks for
a grammar, and the benchmarks ask for none. The tool that runs the command carries at most
64 MiB, the working tree included (~56 MiB in 2026-12): the script prints the total and fails
above it.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20
#: what the worker path imports (api, worker, jobs, core, storage, cli) that the image lacks, or
#: has in a version the project does not pin to (httpx: storage.netguard needs < 0.29)
SERVICE = ["celery", "kombu", "amqp", "vine", "billiard", "tzlocal", "tzdata", "sqlalchemy", "alembic",
           "mako", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "pydantic-settings",
           "python-dotenv", "annotated-types", "typing-inspection", "typing-extensions", "boto3",
           "botocore", "s3transfer", "jmespath", "httpx", "httpcore", "opentelemetry-api",
           "fastapi-offline", "python-multipart", "jsonschema", "jsonschema-specifications", "referencing",
           "rpds-py"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def pinned(name: str) -> str:
    try:
        return f"{name}=={md.version(name)}"
    except md.PackageNotFoundError:  # tzdata: not needed here (the system has a time zone database)
        return name


def download(names: list[str], dest: Path, python: str) -> None:
    pins = [pinned(n) for n in names]
    plat = [x for p in PLATFORMS for x in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp", *plat, "-d", str(dest), *pins],
                   check=True)


#: the model families models/ converts checkpoints onto (models.checkpoint.spec), and what their
#: modules import; transformers' other ~550 model folders (51 of its 60 MB) stay behind
TRANSFORMERS_MODELS = {"__init__.py", "auto", "internvl", "llama", "qwen2", "phi3"}
#: parts of transformers nothing on the worker's path imports (training, pipelines, export, CLI)
TRANSFORMERS_UNUSED = {"pipelines", "cli", "exporters", "trainer.py", "testing_utils.py"}


def keep(name: str) -> bool:
    """botocore/data: only the top-level files and S3's service model; transformers/models: only
    the families in TRANSFORMERS_MODELS; sqlalchemy: its pure-Python modules (the compiled
    speed-ups are optional, 9.5 MB unpacked, and a benchmark's few queries do not need them)."""
    parts = name.split("/")
    if parts[0] == "sqlalchemy" and name.endswith(".so"):
        return False
    if parts[:2] == ["fastapi_offline", "static"] and name.endswith((".js", ".css")):
        return False  # /docs' Swagger UI and ReDoc (2.8 MB); the directory must stay (favicon)
    if parts[:2] == ["transformers", "models"] and len(parts) > 2:
        return parts[2] in TRANSFORMERS_MODELS
    if parts[0] == "transformers" and len(parts) > 1 and parts[1] in TRANSFORMERS_UNUSED:
        return False
    return not (parts[:2] == ["botocore", "data"] and len(parts) > 3 and parts[2] != "s3")


def tree_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl")
    ap.add_argument("--python-version", default="3.12", help="the device image's Python (3.12 in 2026-11)")
    a = ap.parse_args(argv)
    if a.dest.resolve() == (ROOT / ".whl").resolve():
        exclude = ROOT / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        if "/.whl/" not in (exclude.read_text().splitlines() if exclude.exists() else []):
            with exclude.open("a") as f:
                f.write("/.whl/\n")
    a.dest.mkdir(parents=True, exist_ok=True)
    pin = re.search(r'"transformers==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins no transformers"
    for old in a.dest.glob("*.whl"):
        print(f"removing {old} (the tarball holds what the worker needs)")
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        download(SERVICE, wheels, a.python_version)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(wheels), f"transformers=={pin.group(1)}"], check=True)
        for whl in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(whl) as z:
                z.extractall(site, [n for n in z.namelist() if keep(n)])
        shutil.rmtree(site / "bin", ignore_errors=True)
        out = a.dest / "worker-site.tar.xz"
        with tarfile.open(out, "w:xz", preset=9) as tar:
            for p in sorted(site.iterdir()):
                tar.add(p, arcname=p.name)
    carried = sum(p.stat().st_size for p in a.dest.rglob("*") if p.is_file())
    tree = tree_bytes()
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(a.dest.iterdir()))
    print(f"{a.dest}: {sizes}")
    print(f"working tree {tree / 2**20:.1f} MiB + carried {carried / 2**20:.1f} MiB = "
          f"{(tree + carried) / 2**20:.1f} MiB of the 64 MiB a transfer to the GPU machine may carry")
    if a.dest.resolve() == (ROOT / ".whl").resolve() and tree + carried > LIMIT:
        raise SystemExit("over the limit: the device call would be refused")


if __name__ == "__main__":
    main()
