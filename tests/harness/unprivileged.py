"""Run a function as another uid, in-process: fork, drop groups/gid/uid, call.

In-process on purpose: the child needs no access to the checkout or the venv
(a CI clone can live in a 0700 directory), since everything it runs was
imported before the fork. The child never returns into pytest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

NOBODY = 65534


def run_as(uid: int, call: Callable[[], Any]) -> Any:
    """`call()`'s JSON-able return value, computed by a child running as `uid`.
    An exception in `call` fails the calling test with its type and message."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                out = {"value": call()}
            except BaseException as e:  # report, never hang the parent
                out = {"raised": f"{type(e).__name__}: {e}"}
            os.write(write_fd, json.dumps(out, default=str).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, f"child as uid {uid} failed"
    out = json.loads(data)
    assert "raised" not in out, out["raised"]
    return out["value"]
