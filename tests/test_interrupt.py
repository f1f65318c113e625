"""SIGTERM in the middle of writing an output, as `docker stop` sends it: the command stops promptly with a
non-zero status and leaves no partial file, also as PID 1 (where a signal without a handler is ignored)."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import write_case

REPO = Path(__file__).resolve().parents[1]
SLOW_WRITES = """
import sys, time
from infer.engine import writer
write = writer._Abandonable.write  # every output chunk, whichever gzip implementation compresses it
def slow_write(self, data):  # an output takes seconds to write, so that the signal arrives in the middle
    time.sleep(1.0)
    return write(self, data)
writer._Abandonable.write = slow_write
from infer.cli import main
sys.exit(main(sys.argv[1:]))
"""
PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]
"""Run the command as PID 1 of a new PID namespace, as the entrypoint runs in a container."""


def pid_namespace_available() -> bool:
    try:
        return subprocess.run([*PID_NAMESPACE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def command_pid(process: subprocess.Popen, as_pid1: bool) -> int:
    """The host PID of the command itself (the child of `unshare` when it runs as PID 1)."""
    if not as_pid1:
        return process.pid
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    for _ in range(100):
        pids = children.read_text().split()
        if pids:
            return int(pids[0])
        time.sleep(0.1)
    raise AssertionError("unshare started no command")


def wait_for(predicate, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(1.0)


@pytest.mark.parametrize("as_pid1", [False, True], ids=["process", "pid1"])
def test_sigterm_mid_write_stops_promptly_and_leaves_no_partial_file(small_checkpoint, tmp_path, as_pid1):
    if as_pid1 and not pid_namespace_available():
        pytest.skip("no PID namespaces here (unshare --pid needs privileges)")
    write_case(tmp_path / "in", "a", shape=(14, 12, 20))  # a chunk per slice: 20 s to write slowly
    output = tmp_path / "out"
    command = [sys.executable, "-c", SLOW_WRITES, "--input", str(tmp_path / "in"), "--output", str(output),
               "--weights", str(small_checkpoint), "--device", "cpu"]
    process = subprocess.Popen([*PID_NAMESPACE, *command] if as_pid1 else command, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any("a-t2f.nii.gz" in p.name for p in output.glob(".*")), 120)  # being written
        signal_sent = time.monotonic()
        __import__("os").kill(command_pid(process, as_pid1), signal.SIGTERM)
        _, err = process.communicate(timeout=8)
    finally:
        process.kill()
        process.wait()
    assert time.monotonic() - signal_sent < 8
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; "), err[-2000:]
    assert list(output.iterdir()) == []
