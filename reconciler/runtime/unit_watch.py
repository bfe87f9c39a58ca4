"""The unit watch: systemd's manager on the system bus (jeepney, pure Python).

After `Subscribe`, systemd broadcasts `PropertiesChanged` of every unit object
and the manager's `JobRemoved`, `UnitNew`, `UnitRemoved`, `UnitFilesChanged`
and `Reloading`. Two match rules select those signals from systemd only; the
units the specs name are picked out here, and their kinds are hinted:

* `PropertiesChanged` of `org.freedesktop.systemd1.Unit` touching ActiveState,
  SubState, LoadState or UnitFileState, on the unit's object path;
* `JobRemoved` (a start/stop/restart job finished), `UnitNew`/`UnitRemoved`, by
  unit name;
* `UnitFilesChanged` (enable/disable) and the end of `Reloading`: the
  enablement of any unit may have changed, so every kind with units.

jeepney was chosen over dbus-fast and sdbus: pure Python with no dependency,
~33 ms and ~3 MiB to import against ~75 ms/15 MiB (dbus-fast) and ~53 ms/12 MiB
(sdbus, a binding of libsystemd's sd-bus); docs/watches.md has the numbers.
Its blocking connection is read by this watch's own thread; stopping shuts
the socket down. A closed bus (dbus restarted, the connection dropped) is a
lost session: down, retried with backoff, everything hinted once on recovery.
"""

from __future__ import annotations

import contextlib
import socket
import threading
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
                msg = conn.receive()
                if msg.header.message_type is MessageType.signal:
                    self._on_signal(msg)
        except (ConnectionError, OSError) as e:
            if self.stopping():
                return
            raise WatchLost(f"bus connection lost: {e}") from None
        finally:
            with self._conn_lock:
                self._sock = None
            conn.close()

    @staticmethod
    def _check(reply: Any, message_type: Any) -> None:
        if reply.header.message_type is message_type.error:
            raise BusCallFailed(f"{reply.body!r}"[:200])

    def _on_signal(self, msg: Any) -> None:
        from jeepney import HeaderFields

        fields = msg.header.fields
        member = fields.get(HeaderFields.member)
        path = fields.get(HeaderFields.path, "")
        body = msg.body
        keys: set[str] = set()
        targets = self.targets()
        if member == "PropertiesChanged":
            iface, changed = body[0], body[1]
            if iface == UNIT_IFACE and WATCHED_PROPERTIES & set(changed):
                keys = {k for k, t in targets.items()
                        if any(unit_object_path(u) == path for u in t.units)}
        elif member == "JobRemoved":
            keys = _keys_naming(targets, str(body[2]))
        elif member in ("UnitNew", "UnitRemoved"):
            keys = _keys_naming(targets, str(body[0]))
        elif member == "UnitFilesChanged" or (member == "Reloading" and not body[0]):
            keys = {k for k, t in targets.items() if t.units}
        for key in sorted(keys):
            self.hint(key)


def _keys_naming(targets: dict[str, WatchTargets], unit: str) -> set[str]:
    return {k for k, t in targets.items() if unit in t.units}
