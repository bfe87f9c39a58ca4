"""The unit watch: systemd's manager on the system bus (jeepney, pure Python).

After `Subscribe`, systemd broadcasts `PropertiesChanged` of every unit object
and the manager's `JobRemoved`, `UnitNew`, `UnitRemoved`, `UnitFilesChanged`
and `Reloading`. Two match rules select those signals from systemd only; the
units the specs name are picked out here, and their kinds are hinted:

* `PropertiesChanged` of `org.freedesktop.systemd1.Unit` touching ActiveState,
  SubState, LoadState or UnitFileState, on the unit's object path;
* `JobRemoved` (a start/stop/restart job finished), by unit name;
* `UnitFilesChanged` (enable/disable) and the end of `Reloading`: the
  enablement of any unit may have changed, so every kind with units.

`UnitNew`/`UnitRemoved` are not hints: they say a unit was loaded into or
dropped from the manager's memory, not that its state changed, and every
reconcile's own `systemctl show` loads a unit that is not installed (or an
inactive one systemd has unloaded) and so sends them; as hints, the agent's
reads woke it again after each reconcile, forever. A start or stop of such a
unit still sends `JobRemoved` and `PropertiesChanged`.

A spec may name a unit by an alias (`sshd.service` for `ssh.service`, an
`Alias=` link): systemd sends every signal under the unit's own name and object
path, never the alias's. So each name is resolved through the manager
(`GetUnit`, else `LoadUnit`: the real unit's object path) on this watch's
thread, the first time a signal is looked at with that name among the
targets; the resolutions are dropped when the unit files change or systemd
reloads (an alias may have been added or removed), and made again lazily.

jeepney was chosen over dbus-fast and sdbus: pure Python with no dependency,
~33 ms and ~3 MiB to import against ~75 ms/15 MiB (dbus-fast) and ~53 ms/12 MiB
(sdbus, a binding of libsystemd's sd-bus); docs/watches.md has the numbers.
Its blocking connection is read by this watch's own thread; stopping shuts
the socket down. A closed bus (dbus restarted, the connection dropped) is a
lost session: down, retried with backoff, everything hinted once on recovery.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from reconciler.runtime.watch import Emit, SupervisedWatch, WatchLost
from specs.watch import WatchTargets

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"
WATCHED_PROPERTIES = frozenset({"ActiveState", "SubState", "LoadState", "UnitFileState"})
CALL_TIMEOUT = 5.0
# Signals that arrive while a call waits for its reply are kept for after it; more
# than this (a storm during one call) is falling behind: every covered kind once.
BACKLOG_LIMIT = 10_000

log = logging.getLogger("compliance_agent.watch")


class BusCallFailed(WatchLost):
    """A call to the bus or to systemd returned an error."""


def unit_object_path(unit: str) -> str:
    """systemd's bus_label_escape: [A-Za-z] and non-leading digits kept, the rest _xx."""
    out = []
    for i, ch in enumerate(unit.encode()):
        c = chr(ch)
        if ("a" <= c <= "z") or ("A" <= c <= "Z") or (i > 0 and "0" <= c <= "9"):
            out.append(c)
        else:
            out.append(f"_{ch:02x}")
    return UNIT_PATH_PREFIX + ("".join(out) or "_")


class UnitWatch(SupervisedWatch):
    def __init__(self, emit: Emit, *, address: str = "SYSTEM", name: str = "units") -> None:
        super().__init__(name, emit)
        self._address = address
        self._conn_lock = threading.Lock()
        self._sock: socket.socket | None = None
        # session thread only: unit name as the specs say it -> object paths of its signals
        self._resolved: dict[str, frozenset[str]] = {}
        self._backlog: deque[Any] = deque()  # signals received while a call waited

    def covers(self, targets: WatchTargets) -> bool:
        return bool(targets.units)

    def interrupt(self) -> None:
        # only stop needs a wake-up: new targets are read per signal, no new session
        if not self.stopping():
            return
        with self._conn_lock:
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def set_targets(self, targets: Mapping[str, WatchTargets]) -> None:
        with self._lock:
            self._targets = dict(targets)

    def drop_connection(self) -> None:
        """Cut the bus connection (as a bus restart would); the watch recovers by itself."""
        with self._conn_lock:
            sock = self._sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)

    # -- the session ------------------------------------------------------------
    def session(self) -> None:
        from jeepney import DBusAddress, MatchRule, MessageType, new_method_call
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        conn = open_dbus_connection(bus=self._address)
        with self._conn_lock:
            self._sock = conn.sock
        self._resolved = {}
        self._backlog = deque()
        # jeepney drops what arrives while a call waits for its reply, unless a filter
        # keeps it: signals then are the changes this watch is for.
        keep = conn.filter(MatchRule(type="signal"), queue=self._backlog)
        try:
            for rule in (
                MatchRule(type="signal", sender=SYSTEMD, interface=MANAGER_IFACE,
                          path=MANAGER_PATH),
                MatchRule(type="signal", sender=SYSTEMD,
                          interface="org.freedesktop.DBus.Properties",
                          member="PropertiesChanged", path_namespace=UNIT_PATH_PREFIX[:-1]),
            ):
                self._check(conn.send_and_get_reply(message_bus.AddMatch(rule),
                                                    timeout=CALL_TIMEOUT), MessageType)
            manager = DBusAddress(MANAGER_PATH, bus_name=SYSTEMD, interface=MANAGER_IFACE)
            self._check(conn.send_and_get_reply(new_method_call(manager, "Subscribe"),
                                                timeout=CALL_TIMEOUT), MessageType)
            self.live(f"subscribed to systemd on {self._address}")
            while not self.stopping():
                if len(self._backlog) > BACKLOG_LIMIT:
                    self._backlog.clear()
                    self.fell_behind(f"more than {BACKLOG_LIMIT} signals during one call")
                msg = self._backlog.popleft() if self._backlog else conn.receive()
                if msg.header.message_type is MessageType.signal:
                    self._on_signal(conn, msg)
        except (ConnectionError, OSError) as e:
            if self.stopping():
                return
            raise WatchLost(f"bus connection lost: {e}") from None
        finally:
            keep.close()
            with self._conn_lock:
                self._sock = None
            conn.close()

    @staticmethod
    def _check(reply: Any, message_type: Any) -> None:
        if reply.header.message_type is message_type.error:
            raise BusCallFailed(f"{reply.body!r}"[:200])

    def _on_signal(self, conn: Any, msg: Any) -> None:
        from jeepney import HeaderFields

        fields = msg.header.fields
        member = fields.get(HeaderFields.member)
        path = fields.get(HeaderFields.path, "")
        body = msg.body
        keys: set[str] = set()
        targets = self.targets()
        if member == "UnitFilesChanged" or (member == "Reloading" and not body[0]):
            self._resolved = {}  # an alias may have come or gone: resolve again when needed
            keys = {k for k, t in targets.items() if t.units}
        else:
            # The unit a signal is about, by its object path: systemd names the unit by
            # its own id in every signal, and its path is that id escaped.
            about = None
            if member == "PropertiesChanged":
                iface, changed = body[0], body[1]
                if iface == UNIT_IFACE and WATCHED_PROPERTIES & set(changed):
                    about = path
            elif member == "JobRemoved":
                about = unit_object_path(str(body[2]))
            if about is not None:
                self._resolve_new(conn, {u for t in targets.values() for u in t.units})
                keys = {k for k, t in targets.items()
                        if any(about in self._resolved[u] for u in t.units)}
        for key in sorted(keys):
            self.hint(key)

    def _resolve_new(self, conn: Any, units: set[str]) -> None:
        """Object paths of the names not resolved yet (the name's own path, and the
        real unit's when the name is an alias)."""
        for unit in sorted(units - self._resolved.keys()):
            paths = {unit_object_path(unit)}
            real = self._real_path(conn, unit)
            if real is not None:
                paths.add(real)
            self._resolved[unit] = frozenset(paths)

    def _real_path(self, conn: Any, unit: str) -> str | None:
        from jeepney import DBusAddress, MessageType, new_method_call

        manager = DBusAddress(MANAGER_PATH, bus_name=SYSTEMD, interface=MANAGER_IFACE)
        # GetUnit answers for a loaded unit (an enabled alias is one of its names);
        # LoadUnit reads the unit files, following an alias link, for one not loaded.
        for method in ("GetUnit", "LoadUnit"):
            reply = conn.send_and_get_reply(new_method_call(manager, method, "s", (unit,)),
                                            timeout=CALL_TIMEOUT)
            if reply.header.message_type is MessageType.method_return:
                return str(reply.body[0])
        log.debug("unit not resolved", extra={"detail": f"{self._name}: {unit}: "
                                                        f"{reply.body!r}"[:300]})
        return None
