"""LocalHost: no shell, capped output, timeouts kill the whole process group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from reconciler.actuator.host import LocalHost, read_text_capped, run_capped
from specs.host import CommandNotFound, CommandTimeout, HostError

PY = sys.executable


def test_run_captures_stdout_stderr_and_exit_code() -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    done = LocalHost().run([PY, "-c", code], timeout=10)
    assert done.exit_code == 3
    assert done.stdout == "out\n"
    assert done.stderr == "err\n"
    assert done.argv == [PY, "-c", code]
    assert done.duration >= 0


def test_run_uses_no_shell() -> None:
    # A shell would expand $HOME and the glob; argv is passed through verbatim.
    done = LocalHost().run(["echo", "$HOME", "*", ";", "id"], timeout=10)
    assert done.stdout == "$HOME * ; id\n"


def test_run_sets_c_locale() -> None:
    done = LocalHost().run([PY, "-c", "import os; print(os.environ['LC_ALL'])"], timeout=10)
    assert done.stdout.strip() == "C"


def test_stdin_is_closed() -> None:
    done = LocalHost().run([PY, "-c", "import sys; print(repr(sys.stdin.read()))"], timeout=10)
    assert done.stdout.strip() == "''"


def test_output_is_capped_and_marked() -> None:
    code = "import sys; sys.stdout.write('x' * 5000); sys.stderr.write('y' * 10)"
    done = LocalHost(output_cap=1000).run([PY, "-c", code], timeout=10)
    assert done.stdout.startswith("x" * 1000)
    assert done.stdout.endswith("[truncated: 4000 bytes dropped]")
    assert done.stdout.count("x") == 1000
    assert done.stderr == "y" * 10
    assert done.exit_code == 0


def test_timeout_raises_and_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The child forks a grandchild that would outlive it; both must die.
    code = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        LocalHost().run([PY, "-c", code], timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert info.value.timeout == 1.0
    assert "did not finish within 1s" in str(info.value)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        # a killed but unreaped child is a zombie: gone for our purposes
        stat = Path(f"/proc/{grandchild}/stat")
        if stat.exists() and stat.read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"grandchild {grandchild} survived the timeout kill")


def test_timeout_with_silent_child_still_fires() -> None:
    with pytest.raises(CommandTimeout):
        run_capped([PY, "-c", "import os, time; os.close(1); os.close(2); time.sleep(30)"], 0.5)


def test_missing_binary_is_command_not_found() -> None:
    with pytest.raises(CommandNotFound) as info:
        LocalHost().run(["definitely-not-a-real-tool-xyz", "--help"], timeout=5)
    assert "definitely-not-a-real-tool-xyz: command not found" in str(info.value)


def test_not_executable_is_host_error(tmp_path: Path) -> None:
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)
    with pytest.raises(HostError, match="cannot execute"):
        LocalHost().run([str(f)], timeout=5)


def test_empty_argv_is_refused() -> None:
    with pytest.raises(HostError):
        LocalHost().run([], timeout=5)


def test_read_text_and_stat(tmp_path: Path) -> None:
    f = tmp_path / "a.conf"
    f.write_text("hello\n")
    f.chmod(0o640)
    link = tmp_path / "link"
    link.symlink_to("a.conf")
    host = LocalHost()
    assert host.read_text(str(f)) == "hello\n"
    st = host.stat(str(f))
    assert st.mode == 0o640 and st.size == 6 and not st.is_dir and not st.is_symlink
    assert st.uid == os.getuid()
    lst = host.stat(str(link))
    assert lst.is_symlink and lst.link_target == "a.conf"
    assert host.stat(str(tmp_path)).is_dir
    with pytest.raises(FileNotFoundError):
        host.read_text(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        host.stat(str(tmp_path / "missing"))


def test_read_text_refuses_huge_files(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"a" * 101)
    with pytest.raises(HostError, match="larger than 100 bytes"):
        read_text_capped(f, cap=100)
    assert read_text_capped(f, cap=101) == "a" * 101


def test_stdin_reaches_the_command_without_deadlock() -> None:
    """More input than a pipe holds, echoed back while it is still being written."""
    from reconciler.actuator.host import LocalHost

    data = bytes(range(256)) * 2048  # 512 KiB
    done = LocalHost(output_cap=len(data) * 4).run(["od", "-An", "-v", "-tx1"], timeout=30,
                                                   stdin=data)
    assert done.exit_code == 0
    assert done.stdout.split()[:4] == ["00", "01", "02", "03"]
    assert len(done.stdout.split()) == len(data)
    assert LocalHost().run(["cat"], timeout=10).stdout == ""  # no stdin: /dev/null
