"""Run generated code in a child Python with a timeout, a memory cap and no network or subprocesses."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs in the child around the program: resource caps, then an audit hook that refuses network use and
# process spawning. Audit hooks guard against accidents in model output, not a determined attacker
# (ctypes could bypass them), so the child also runs isolated (-I) in an empty temp dir. A pass is the
# program returning, not an exit status: exit() or os._exit(0) before the checks would look like one.
_BOOTSTRAP = """
import os, resource, runpy, sys
mem = {memory_bytes}
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, ({cpu_s}, {cpu_s}))
resource.setrlimit(resource.RLIMIT_FSIZE, ({file_bytes}, {file_bytes}))  # stderr is a file: a flood stops
_BLOCKED = ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
            "socket.gethostbyname", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
            "os.spawn", "os.fork", "os.forkpty", "ctypes.dlopen")
def _guard(event, args):
    if event.startswith(_BLOCKED):
        raise PermissionError(f"sandbox: {{event}} is not allowed")
sys.addaudithook(_guard)
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
except SystemExit as e:
    print(f"sandbox: the program exited ({{e.code!r}}) before its checks ended", file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)
with open({done!r}, "w") as f:
    f.write({token!r})
"""
STDERR_KEPT = 2000  # characters of the child's stderr kept in a RunResult


@dataclass(frozen=True)
class RunResult:
    """Outcome of one program: passed (it ran to its end), or why not ("timeout", "failed"), plus the end of
    its stderr."""

    passed: bool
    status: str
    stderr: str


def run_program(code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> RunResult:
    """Execute `code` as a script in a sandboxed child; it passes when the script runs to its end."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="sandbox_") as tmp:
        script, done, err_file = Path(tmp) / "program.py", Path(tmp) / ".done", Path(tmp) / ".stderr"
        script.write_text(code)
        boot = _BOOTSTRAP.format(
            memory_bytes=memory_mb * 2**20,
            cpu_s=max(1, int(timeout_s) + 1),
            file_bytes=2**20,
            done=str(done),
            token=token,
        )
        with err_file.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", boot, str(script)],
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
                start_new_session=True,  # its own process group, so a timeout kills everything it started
            )
            try:
                proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                timed_out = True
        with err_file.open("rb") as f:
            f.seek(max(0, err_file.stat().st_size - 4 * STDERR_KEPT))
            tail = f.read().decode("utf-8", errors="replace")[-STDERR_KEPT:]  # model output is any bytes
        passed = not timed_out and proc.returncode == 0 and done.is_file() and done.read_text() == token
    return RunResult(passed, "timeout" if timed_out else "passed" if passed else "failed", tail)


def check_completion(
    prompt: str, completion: str, test: str, entry_point: str, timeout_s: float = 10.0
) -> bool:
    """HumanEval-style check: prompt + completion, then the test code and `check(entry_point)`."""
    program = f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"
    return run_program(program, timeout_s=timeout_s).passed


_IO_HARNESS = """

_cases = {cases!r}
_expected = {expected!r}
_got = []
for _case in _cases:
    try:
        _got.append(str({entry_point}(**_case)))  # str(result), so a None result is "None"
    except Exception:
        _got.append(None)  # never equals an expected string
if _got != _expected:
    raise AssertionError("the outputs differ from the expected ones")
"""


def check_io(
    code: str, entry_point: str, cases: list[dict], expected: list[str], timeout_s: float = 10.0
) -> bool:
    """MERA ruHumanEval / ruCodeEval check: `entry_point(**case)` for every case, each result as `str`, must
    equal the expected outputs in order (a None result is "None"; an exception counts as a wrong output)."""
    harness = _IO_HARNESS.format(cases=cases, expected=[str(e) for e in expected], entry_point=entry_point)
    return run_program(code + harness, timeout_s=timeout_s).passed
