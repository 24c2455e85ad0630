"""The one ``jinabatch`` command: installed as a console script, the same as ``python -m jinabatch`` and as the job
scripts of a checkout, with ``--help`` per subcommand and the exit codes the README promises."""
from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jinabatch.cli import COMMANDS
from jinabatch.errors import AuthError, JinaBatchError, RateLimited, RetriesExhausted

REPO = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("jinabatch", path=str(Path(sys.executable).parent))


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_console_script_lists_every_command_and_refuses_an_unknown_one():
    assert SCRIPT, "make install puts the jinabatch command next to the venv's python"
    top = _run(SCRIPT, "--help")
    assert top.returncode == 0 and all(f"  {name}" in top.stdout for name in COMMANDS)
    bad = _run(SCRIPT, "embedd", "x.toml")
    assert bad.returncode == 2 and "unknown command 'embedd'" in bad.stderr


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "serve"])
def test_each_subcommand_has_its_own_help_under_its_own_name(command):
    """``jinabatch COMMAND --help`` (the local server's flags for ``serve`` are its own: tested with the server)."""
    r = _run(SCRIPT, command, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: jinabatch {command} "), r.stdout[:200]


def test_the_command_python_m_and_the_job_script_give_the_same_answer(tmp_path):
    """A folder with no run: the same one-line error and exit code 1 from all three forms, also run from another
    directory (the job script finds the checkout's lib/ itself)."""
    missing = str(tmp_path / "none")
    outs = [_run(SCRIPT, "status", missing, cwd=tmp_path),
            _run(sys.executable, "-m", "jinabatch", "status", missing, cwd=tmp_path),
            _run(sys.executable, str(REPO / "jobs" / "status.py"), missing, cwd=tmp_path)]
    assert [r.returncode for r in outs] == [1, 1, 1] and not any(r.stdout for r in outs)
    assert len({r.stderr for r in outs}) == 1
    assert outs[0].stderr.startswith(f"error: ConfigError: {missing}: no _manifest.json here")
    assert outs[0].stderr.count("\n") == 1


def test_errors_cross_a_pickle_with_their_class_message_and_attributes():
    """What a shard task hands the driver across Ray: the error object itself, not its class name."""
    last = RateLimited("429: slow down", retry_after=2.5, limit="tpm")
    e = pickle.loads(pickle.dumps(RetriesExhausted("gave up after 8 attempts", attempts=8, last=last)))
    assert type(e) is RetriesExhausted and str(e) == "gave up after 8 attempts" and e.attempts == 8
    assert e.status == 429 and isinstance(e.last, RateLimited) and (e.last.retry_after, e.last.limit) == (2.5, "tpm")
    auth = pickle.loads(pickle.dumps(AuthError("key rejected", status=401)))
    assert isinstance(auth, JinaBatchError) and auth.status == 401
