#!/usr/bin/env python3
"""Project tasks that need nothing but Python 3.11+: ``python3 tasks.py demo`` and ``python3 tasks.py test``.

Each task first makes sure ``.venv`` exists and holds this package with its pinned dependencies
(``constraints.txt``); it reinstalls only when ``pyproject.toml`` or the constraints change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".learnpulse-install-stamp"


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_env() -> None:
    """Create .venv and install the package (editable, with dev extras) if anything changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older Python
        sys.exit(f"learnpulse needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("installing learnpulse and its dependencies into .venv ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(_fingerprint())


def run(*argv: str) -> int:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, check=False).returncode


def task_demo(args: list[str]) -> int:
    return run("learnpulse", "demo", *args)


def task_lint(_: list[str]) -> int:
    paths = ("src", "tests", "bench", "tasks.py")
    return run("ruff", "check", *paths) or run("ruff", "format", "--check", *paths) or run("mypy")


def task_test(args: list[str]) -> int:
    """Lint, type-check, then the whole pytest suite (PostgreSQL tests included when a server is reachable)."""
    status = task_lint([])
    if status:
        return status
    return run("pytest", "-n", os.environ.get("LEARNPULSE_TEST_WORKERS", "2"), *args)


TASKS = {"demo": task_demo, "test": task_test, "lint": task_lint}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        print(f"usage: python3 tasks.py {{{'|'.join(TASKS)}}} [args...]", file=sys.stderr)
        return 2
    ensure_env()
    return TASKS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
