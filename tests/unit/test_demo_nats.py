"""DEV ONLY demo parts of the NATS stack, against the agent's side: the
control plane names the same wake-up subject as the agent, and the archiver
judges a host's chain whatever the arrival order. Not part of the package's
check phase (the demo is not shipped)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from demo.archiver.archive import Archive
from demo.control_plane.fanout import order_subject
from reconciler.delivery.wakeup import wakeup_subject


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_agent_and_control_plane_name_the_same_subject(site: str, host: str) -> None:
    subject = wakeup_subject(site, host)
    assert subject == order_subject(site, host)  # written twice, independently
    tokens = subject.split(".")
    assert len(tokens) == 3 and all(tokens)
    assert not any(c in subject for c in " \t\r\n*>")


def test_archive_judges_the_chain_whatever_the_arrival_order(tmp_path: Any) -> None:
    from nacl.signing import SigningKey

    from tests.support.agent import ChainedBundles

    bundles = ChainedBundles(SigningKey.generate())
    envs = [bundles.next()[1] for _ in range(6)]
    archive = Archive(tmp_path)
    for stream_seq, i in enumerate([0, 2, 1, 3, 5, 4], start=1):
        assert archive.append(envs[i], stream_seq)
    assert not archive.append(envs[3], 99)  # a redelivery: skipped
    tally = Archive(tmp_path).tally()  # reloaded from disk
    assert tally["archived"] == 6 and tally["chain_intact"] is True
    other = ChainedBundles(SigningKey.generate(), host_id="host-b")
    archive.append(other.next()[1], 100)
    other.prev = "f" * 64  # the next bundle names a predecessor that is not the archived one
    archive.append(other.next()[1], 101)
    report = Archive(tmp_path).tally()["hosts"]
    assert report["clinic-1/host-b"]["breaks"] == [2]
    assert report["clinic-1/host-a"]["chain_intact"] is True
