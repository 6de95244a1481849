"""The tests' child-process helper (tests/procs.py): a timeout ends the child and what it
started."""

import subprocess
import sys
import textwrap

import psutil
import pytest

from procs import run

HANGS = textwrap.dedent("""
    import subprocess, sys, time
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[1], "w").write(str(g.pid))
    time.sleep(600)
""")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_timeout_kills_the_child_and_its_children(tmp_path):
    pid_file = tmp_path / "grandchild"
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, "-c", HANGS, str(pid_file)], timeout=5, capture_output=True)
    grandchild = int(pid_file.read_text())
    try:
        psutil.Process(grandchild).wait(timeout=10)  # (SIGKILLed: gone within moments)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass
    assert _gone(grandchild)


def test_a_child_that_ends_gives_its_output_and_code():
    r = run([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], timeout=60,
            capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (3, "out\n")
