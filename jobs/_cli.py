"""Shared by the job scripts: run from a plain checkout (nothing installed), the checkout's ``lib/`` is where
``jinabatch`` is imported from. Every script here imports this first, then calls ``jinabatch.cli``."""
from __future__ import annotations

import sys
from pathlib import Path

LIB = str(Path(__file__).resolve().parents[1] / "lib")
if LIB not in sys.path:
    sys.path.insert(0, LIB)


def run(command: str) -> int:
    """``jinabatch COMMAND`` with this script's arguments: the same code as the installed command."""
    from jinabatch.cli import main

    return main([command, *sys.argv[1:]])
