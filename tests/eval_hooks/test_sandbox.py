import time

from eval_hooks.sandbox import check_completion, check_io, run_program

PROMPT = 'def add(a, b):\n    """Sum of a and b."""\n'
TEST = "def check(f):\n    assert f(2, 3) == 5\n"


def test_correct_and_wrong_completions():
    assert check_completion(PROMPT, "    return a + b\n", TEST, "add")
    assert not check_completion(PROMPT, "    return a - b\n", TEST, "add")
    assert not check_completion(PROMPT, "    return a +\n", TEST, "add")  # syntax error


def test_infinite_loop_is_killed():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert (result.passed, result.status) == (False, "timeout")
    assert time.monotonic() - start < 5


def test_network_and_subprocess_are_blocked():
    net = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n")
    assert not net.passed and "sandbox: socket" in net.stderr
    sub = run_program("import subprocess\nsubprocess.run(['true'])\n")
    assert not sub.passed and "sandbox: subprocess.Popen" in sub.stderr


def test_memory_limit():
    result = run_program("x = bytearray(512 * 2**20)\n", memory_mb=256)
    assert not result.passed and "MemoryError" in result.stderr
    assert run_program("x = bytearray(16 * 2**20)\n", memory_mb=256).passed


def test_io_check_compares_str_of_every_result_none_included():
    # ruHumanEval's HumanEval/12: longest([]) returns None, and the record's expected output is "None".
    code = "def longest(strings):\n    return max(strings, key=len) if strings else None\n"
    cases = [{"strings": []}, {"strings": ["a", "bb"]}]
    assert check_io(code, "longest", cases, ["None", "bb"])
    assert not check_io(code, "longest", cases, ["", "bb"])
    assert not check_io("def longest(strings):\n    raise ValueError\n", "longest", cases, ["None", "bb"])


def test_exiting_before_the_checks_is_a_failure():
    for body in ("    import sys; sys.exit(0)\n", "    exit()\n", "    import os; os._exit(0)\n"):
        assert not check_completion(PROMPT, body, TEST, "add"), body
    assert not check_io("def add(a, b):\n    quit()\n", "add", [{"a": 2, "b": 3}], ["5"])
    assert not run_program("raise SystemExit(0)\n").passed


def test_a_stderr_flood_is_cut_and_undecodable_bytes_are_kept_readable():
    start = time.monotonic()
    flood = run_program("import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n", timeout_s=3.0)
    assert not flood.passed and time.monotonic() - start < 6 and len(flood.stderr) <= 2000
    odd = run_program("import sys\nsys.stderr.buffer.write(b'\\xff\\xfe ok')\n")
    assert odd.passed and odd.stderr == "\ufffd\ufffd ok"
