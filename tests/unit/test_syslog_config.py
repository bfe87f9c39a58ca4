"""syslogTarget schemes and syslogCaFile (syslog over TLS, RFC 5425)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from reconciler.delivery.syslog import SyslogSender, octet_counted, tls_context
from specs.config import ConfigError, parse_config
from tests.unit.test_config import REQUIRED


def problems(**over: Any) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(dict(REQUIRED, **over))
    return " | ".join(e.value.problems)


def test_tls_target_with_ca_is_accepted() -> None:
    cfg = parse_config(dict(REQUIRED, syslogTarget="tls://siem.example.net:6514",
                            syslogCaFile="/run/secrets/syslog-ca.pem"))
    assert cfg.syslog_target == "tls://siem.example.net:6514"
    assert cfg.syslog_ca_file == Path("/run/secrets/syslog-ca.pem")


def test_tls_target_needs_the_ca() -> None:
    assert "needs syslogCaFile" in problems(syslogTarget="tls://siem.example.net:6514")


def test_ca_without_tls_target_is_refused() -> None:
    assert "only used with a tls://" in problems(
        syslogTarget="tcp://siem.example.net:514", syslogCaFile="/etc/ca.pem")
    assert "only used with a tls://" in problems(syslogCaFile="/etc/ca.pem")


@pytest.mark.parametrize("target", [
    "tls://siem.example.net", "tls://:6514", "ssl://siem:6514", "tls://u:p@siem:6514",
    "tls://siem:6514/path", "tcp://siem:99999", "siem.example.net:6514",
])
def test_malformed_targets_name_the_key(target: str) -> None:
    out = problems(syslogTarget=target, syslogCaFile="/etc/ca.pem")
    assert "syslogTarget:" in out and "tls://host:6514" in out
    assert "u:p@" not in out  # a password in the URL is never echoed


def test_plain_targets_unchanged() -> None:
    for target in ("tcp://siem.example.net:514", "udp://10.0.0.5:514"):
        assert parse_config(dict(REQUIRED, syslogTarget=target)).syslog_target == target
        assert SyslogSender(target).proto == target[:3]


def test_tls_context_pins_the_ca_and_demands_tls12(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    ctx = tls_context(path)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(ctx.get_ca_certs()) == 1  # only the pinned CA, no system store


def test_octet_counting_counts_bytes_not_characters() -> None:
    assert octet_counted("é".encode()) == b"2 \xc3\xa9"
