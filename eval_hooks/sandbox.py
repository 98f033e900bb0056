"""Run generated code in a child Python with a timeout, a memory cap and no network or subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs in the child before the program: resource caps, then an audit hook that refuses network use and
# process spawning. Audit hooks guard against accidents in model output, not a determined attacker
# (ctypes could bypass them), so the child also runs isolated (-I) in an empty temp dir.
_BOOTSTRAP = """
import resource, runpy, sys
mem = {memory_bytes}
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, ({cpu_s}, {cpu_s}))
_BLOCKED = ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
            "socket.gethostbyname", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
            "os.spawn", "os.fork", "os.forkpty", "ctypes.dlopen")
def _guard(event, args):
    if event.startswith(_BLOCKED):
        raise PermissionError(f"sandbox: {{event}} is not allowed")
sys.addaudithook(_guard)
runpy.run_path(sys.argv[1], run_name="__main__")
"""


@dataclass(frozen=True)
class RunResult:
    """Outcome of one program: passed (exit 0), or why not ("timeout", "failed"), plus captured stderr."""

    passed: bool
    status: str
    stderr: str


def run_program(code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> RunResult:
    """Execute `code` as a script in a sandboxed child; it passes when it exits with status 0."""
    with tempfile.TemporaryDirectory(prefix="sandbox_") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(code)
        boot = _BOOTSTRAP.format(memory_bytes=memory_mb * 2**20, cpu_s=max(1, int(timeout_s) + 1))
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", boot, str(script)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
            start_new_session=True,  # its own process group, so a timeout kills everything it started
            text=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            return RunResult(False, "timeout", err[-2000:])
    status = "passed" if proc.returncode == 0 else "failed"
    return RunResult(proc.returncode == 0, status, err[-2000:])


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
    raise SystemExit(1)
"""


def check_io(
    code: str, entry_point: str, cases: list[dict], expected: list[str], timeout_s: float = 10.0
) -> bool:
    """MERA ruHumanEval / ruCodeEval check: `entry_point(**case)` for every case, each result as `str`, must
    equal the expected outputs in order (a None result is "None"; an exception counts as a wrong output)."""
    harness = _IO_HARNESS.format(cases=cases, expected=[str(e) for e in expected], entry_point=entry_point)
    return run_program(code + harness, timeout_s=timeout_s).passed
