"""The API process never imports torch or the worker package (architecture rule)."""

from __future__ import annotations

import subprocess
import sys


def test_api_imports_neither_torch_nor_worker(tmp_path):
    code = (
        "import sys\n"
        "from core.settings import Settings\n"
        "from api.app import create_app\n"
        f"create_app(Settings(database_url='sqlite:///{tmp_path}/x.db', data_dir='{tmp_path}/d'))\n"
        "banned = ('torch', 'worker', 'transformers', 'models')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
