"""The package layering of ARCHITECTURE.md, checked on the imports each package really makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_FOR_CORE = ("litserve", "fastapi", "starlette", "dagster", "uvicorn")


@pytest.mark.parametrize("package", ["models", "lakehouse"])
def test_core_packages_import_no_serving_or_orchestration_framework(package):
    modules = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                     for p in (ROOT / package).rglob("*.py"))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN_FOR_CORE!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{package}/ pulled in {out.stdout.strip()}"


def test_lakehouse_imports_nothing_of_ours():
    ours = ("models", "online", "assets", "orchestration")
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "lakehouse").rglob("*.py")
        if any(line.lstrip().startswith((f"import {o}", f"from {o}")) for o in ours
               for line in p.read_text().splitlines())
    ]
    assert offenders == []
