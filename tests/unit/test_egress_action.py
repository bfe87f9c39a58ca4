"""UpdateEgressSet rendering: one nft invocation, flush + add, single-address elements."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from specs.actions import ActionEnvelope, UpdateEgressSet


def test_empty_v4_set_is_only_flushed() -> None:
    a = UpdateEgressSet(table="compliance_egress", set_name="allowed_v4", elements=[])
    assert a.commands() == [["nft", "flush set inet compliance_egress allowed_v4"]]
    assert not a.disruptive


def test_empty_v6_set_is_only_flushed() -> None:
    a = UpdateEgressSet(table="compliance_egress", set_name="allowed_v6", elements=[])
    assert a.commands() == [["nft", "flush set inet compliance_egress allowed_v6"]]


def test_v4_elements_in_the_same_transaction() -> None:
    a = UpdateEgressSet(table="compliance_egress", set_name="allowed_v4",
                        elements=["192.0.2.10", "198.51.100.7"])
    assert a.commands() == [[
        "nft",
        "flush set inet compliance_egress allowed_v4; "
        "add element inet compliance_egress allowed_v4 "
        "{ 192.0.2.10, 198.51.100.7 }",
    ]]


def test_v6_elements_in_the_same_transaction() -> None:
    a = UpdateEgressSet(
        table="t", set_name="allowed_v6", elements=["2001:db8::10", "2001:db8:1::5"]
    )
    assert a.commands() == [[
        "nft",
        "flush set inet t allowed_v6; "
        "add element inet t allowed_v6 { 2001:db8::10, 2001:db8:1::5 }",
    ]]
    assert a.key == "egress:t:allowed_v6"


@pytest.mark.parametrize(
    "element",
    [
        "192.0.2.1 }; flush ruleset; add element inet t s {",  # script injection
        "mcp.example.test",  # nft would resolve it through DNS at load time
        "192.0.2.0/23x", "192.0.2.1/24",  # garbage, host bits set
        "", "192.0.2.1-", "-192.0.2.1",
        # only single host addresses: a prefix or range opens more than a name resolves to
        "0.0.0.0/0", "::/0", "198.51.100.0/24", "203.0.113.5-203.0.113.9", "192.0.2.1/32",
        "fe80::1%x }; flush ruleset; add table inet pwned {",  # a scope id is free text
        "2001:DB8::1", "2001:db8:0::1",  # not canonical: the set would not match the plan
    ],
)
def test_elements_must_be_single_addresses(element: str) -> None:
    with pytest.raises(ValidationError):
        UpdateEgressSet(table="t", set_name="s", elements=[element])


@pytest.mark.parametrize("name", ["bad name", "x;flush ruleset", "-t", "1abc"])
def test_table_and_set_names_are_nft_identifiers(name: str) -> None:
    with pytest.raises(ValidationError):
        UpdateEgressSet(table=name, set_name="s", elements=[])
    with pytest.raises(ValidationError):
        UpdateEgressSet(table="t", set_name=name, elements=[])


def test_round_trips_through_the_actuator_envelope() -> None:
    a = UpdateEgressSet(table="t", set_name="s", elements=["192.0.2.1"])
    back = ActionEnvelope.model_validate_json(ActionEnvelope(action=a).model_dump_json()).action
    assert back == a
