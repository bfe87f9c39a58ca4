"""`ActionRecord.result` is a closed set that still compares as the plain strings
that evidence, status and the CLI have always shown."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from specs.evidence import EvidencePredicate
from specs.status import ActionRecord, StepResult


def record(result: object) -> ActionRecord:
    return ActionRecord(step=1, action="RestartUnit", command=["systemctl", "restart", "x"],
                        exit_code=0, duration_sec=0.1, result=result)


def test_every_value_the_agent_records_is_accepted_and_reads_as_before() -> None:
    produced = ["ok", "failed", "timeout", "dry_run", "deferred", "skipped", "rejected", "refused"]
    assert sorted(StepResult) == sorted(produced)
    for value in produced:
        rec = record(value)
        assert rec.result is StepResult(value) and rec.result == value
        assert rec.model_dump(mode="json")["result"] == value
        assert json.loads(rec.model_dump_json())["result"] == value


def test_an_unknown_result_is_refused() -> None:
    with pytest.raises(ValidationError, match="result"):
        record("succeeded")


def test_published_predicate_schema_lists_the_closed_set() -> None:
    schema = EvidencePredicate.model_json_schema()
    assert schema["$defs"]["StepResult"]["enum"] == [r.value for r in StepResult]
