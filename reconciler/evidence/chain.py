"""Evidence chain verification: signatures, sequence, prev_digest, pruned gaps.

`verify_chain` checks a set of envelope files on their own (what an auditor
holding exported bundles can do); `verify_store` checks the whole local chain
against the SQLite index as well. Problems (each makes the report fail):

    BadSignature / UnknownKey / Malformed / WrongPayloadType   envelope not trusted
    SubjectMismatch     subject digest/name does not match the predicate
    DuplicateSequence   two different bundles claim one sequence
    PrevDigestMismatch  prev_digest is not the digest of the bundle before
    Gap                 a sequence is missing and nothing explains it
    Missing             the index has a live row but the file is gone
    IndexMismatch       the file differs from what the index recorded

    UnsignedPrune       the index marks a bundle pruned but no signed prune bundle lists it

A missing sequence is *explained* (a note, not a problem) only when a signed
`evidence_prune` bundle lists it, or a signed `evidence_chain_break` bundle
declares it lost (the chain could not be continued at start:
reconciler.evidence.recovery; the bundle after a lost one cannot be
linked): an index tombstone alone proves nothing, anyone with write access
to the database can write one. The Merkle tree and
its signed checkpoints (reconciler.evidence.logverify) cover the tail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler.store.database import Store
from reconciler.store.evidence_index import IndexRow, all_rows, sequence_ranges
from reconciler.trust.dsse import TrustedKeys, TrustError, loads_strict, verify_envelope
from specs.evidence import (
    CHAIN_BREAK_CHECK,
    EVIDENCE_PAYLOAD_TYPE,
    PREDICATE_TYPE,
    PRUNE_CHECK,
    STATEMENT_TYPE,
    EvidenceStatement,
)
from specs.resource import canonical_json


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    sequence: int | None = None
    source: str = ""  # file name

    def __str__(self) -> str:
        where = f"seq {self.sequence}" if self.sequence is not None else "seq ?"
        src = f" ({self.source})" if self.source else ""
        return f"{self.reason}: {where}{src}: {self.message}"


@dataclass
class ChainReport:
    checked: int = 0
    first: int | None = None
    last: int | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # sequence -> envelope digest, from present bundles and signed prune records:
    # the leaf data the Merkle tree checks need (not part of the JSON report).
    digests: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first": self.first,
            "last": self.last,
            "problems": [str(p) for p in self.problems],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class _Entry:
    source: str
    digest: str
    statement: EvidenceStatement


def _check_one(source: str, data: bytes, keys: TrustedKeys, report: ChainReport) -> _Entry | None:
    try:
        payload = verify_envelope(data, EVIDENCE_PAYLOAD_TYPE, keys)
        st = EvidenceStatement.model_validate(loads_strict(payload, "statement"))
    except TrustError as e:
        report.problems.append(Problem(e.reason, e.message, None, source))
        return None
    except ValidationError as e:
        report.problems.append(
            Problem("Malformed", f"not an evidence statement: {e}", None, source)
        )
        return None
    if st.type_ != STATEMENT_TYPE or st.predicateType != PREDICATE_TYPE:
        report.problems.append(
            Problem("Malformed", "not an in-toto v1 compliance-agent statement", None, source)
        )
        return None
    p = st.predicate
    want = hashlib.sha256(canonical_json(p.post_state)).hexdigest()
    subj = st.subject[0]
    if subj.digest.get("sha256") != want or subj.name != f"{p.site_id}/{p.host_id}/{p.check}":
        report.problems.append(
            Problem("SubjectMismatch", "subject does not match the predicate", p.sequence, source)
        )
    return _Entry(source, hashlib.sha256(data).hexdigest(), st)


def verify_chain(
    bundles: Iterable[tuple[str, bytes]],
    trusted_public_keys: Sequence[str] | TrustedKeys,
    index: Mapping[int, IndexRow] | None = None,
    expect_from: int | None = None,
    expect_to: int | None = None,
) -> ChainReport:
    """Verify (name, envelope bytes) pairs in any order, as one chain.

    `expect_from`: the first sequence that must be present or pruned (default:
    1 with an index, else the lowest sequence given); `expect_to` the last
    (default: the highest known). Bundles outside the range are checked on
    their own (signature, statement) but not for gaps or links.

    With `index` (sequence -> IndexRow, tombstones included) the index is
    cross-checked and sequences from 1 to the index head are expected; a
    tombstone needs a signed prune record like any gap. Without it only
    sequences between the lowest and highest bundle given are expected.
    """
    keys = (
        trusted_public_keys
        if isinstance(trusted_public_keys, TrustedKeys)
        else TrustedKeys(trusted_public_keys)
    )
    report = ChainReport()
    by_seq: dict[int, _Entry] = {}
    for source, data in bundles:
        report.checked += 1
        e = _check_one(source, data, keys, report)
        if e is None:
            continue
        seq = e.statement.predicate.sequence
        if seq in by_seq:
            if by_seq[seq].digest != e.digest:
                report.problems.append(
                    Problem(
                        "DuplicateSequence", f"also claimed by {by_seq[seq].source}", seq, source
                    )
                )
            continue
        by_seq[seq] = e

    # Digests of bundles whose file is gone, from signed prune bundles only.
    pruned: dict[int, tuple[str, str]] = {}  # seq -> (digest, explained by)
    lost: set[int] = set()
    for seq, e in sorted(by_seq.items()):
        check = e.statement.predicate.check
        if check not in (PRUNE_CHECK, CHAIN_BREAK_CHECK):
            continue
        post = e.statement.predicate.post_state
        key, why = (("pruned", f"prune bundle seq {seq}") if check == PRUNE_CHECK else
                    ("lost", f"chain break bundle seq {seq}"))
        if check == CHAIN_BREAK_CHECK and isinstance(post, dict):
            report.notes.append(f"chain break at seq {seq}: {post.get('reason')}; the verified "
                                f"chain ended at seq {post.get('last_verified_sequence')}")
        for item in post.get(key, []) if isinstance(post, dict) else []:
            if isinstance(item, dict) and isinstance(item.get("sequence"), int):
                pruned[item["sequence"]] = (str(item.get("digest")), why)
                if key == "lost":
                    lost.add(item["sequence"])
    report.digests = {s: d for s, (d, _) in pruned.items()}
    report.digests.update({s: e.digest for s, e in by_seq.items()})

    seqs = set(by_seq) | (set(index) if index else set())
    if not seqs:
        return report
    lo = expect_from if expect_from is not None else (1 if index else min(seqs))
    hi = expect_to if expect_to is not None else max(seqs)
    report.first, report.last = lo, hi
    pruned_here: list[int] = []
    for seq in range(lo, hi + 1):
        row = index.get(seq) if index else None
        e = by_seq.get(seq)
        if e is None:
            if seq in pruned:
                pruned_here.append(seq)
                if row is not None and row.digest != pruned[seq][0]:
                    report.problems.append(
                        Problem("IndexMismatch", "the prune record lists another digest "
                                "than the index", seq, row.file_name)
                    )
            elif row is not None and row.pruned:
                report.problems.append(
                    Problem(
                        "UnsignedPrune",
                        f"the index marks it pruned (by {row.pruned_by}) but no signed prune "
                        "bundle lists it: the file was deleted",
                        seq,
                        row.file_name,
                    )
                )
            elif row is not None:
                report.problems.append(
                    Problem(
                        "Missing",
                        "indexed bundle file is missing or failed verification",
                        seq,
                        row.file_name,
                    )
                )
            else:
                report.problems.append(Problem("Gap", "no bundle with this sequence", seq))
            continue
        if row is not None:
            if row.digest != e.digest or row.bundle_id != e.statement.predicate.bundle_id:
                report.problems.append(
                    Problem("IndexMismatch", "file differs from the indexed bundle", seq, e.source)
                )
            elif e.source != row.file_name:
                report.problems.append(
                    Problem(
                        "IndexMismatch",
                        f"bundle is stored as {e.source}, the index says {row.file_name}",
                        seq,
                        e.source,
                    )
                )
        prev_claim = e.statement.predicate.prev_digest
        if seq == 1:
            if prev_claim is not None:
                report.problems.append(
                    Problem(
                        "PrevDigestMismatch",
                        "first bundle must have prev_digest null",
                        seq,
                        e.source,
                    )
                )
            continue
        if seq - 1 in lost:
            expected: str | None = None  # its digest is unknown: declared lost
        elif seq - 1 in by_seq:
            expected = by_seq[seq - 1].digest
        elif seq - 1 in pruned:
            expected = pruned[seq - 1][0]
        elif row is not None and index and seq - 1 in index:
            expected = index[seq - 1].digest
        else:
            expected = None  # the previous one is unknown; its gap is reported already
        if expected is not None and prev_claim != expected:
            report.problems.append(
                Problem(
                    "PrevDigestMismatch",
                    "prev_digest does not match the previous bundle",
                    seq,
                    e.source,
                )
            )
    if pruned_here:

        for a, b in sequence_ranges(pruned_here):
            what = "lost" if a in lost else "pruned"
            report.notes.append(f"seq {a}-{b} {what}, explained by {pruned[a][1]}")
    return report


def verify_store(
    store: Store,
    evidence_dir: Path,
    trusted_public_keys: Sequence[str] | TrustedKeys,
    paths: Sequence[Path] | None = None,
) -> ChainReport:
    """Verify the local chain: every indexed live file, or only `paths`, against the index."""
    with store.begin() as conn:
        rows = all_rows(conn)
    index = {r.sequence: r for r in rows}
    if paths is None:
        items: list[tuple[str, bytes]] = []
        missing_ok = {r.file_name for r in rows if not r.pruned}
        for name in sorted(missing_ok):
            try:
                items.append((name, (evidence_dir / name).read_bytes()))
            except FileNotFoundError:
                continue  # reported as Missing by verify_chain
        report = verify_chain(items, trusted_public_keys, index)
        indexed = {r.file_name for r in rows}
        if evidence_dir.is_dir():
            extra = [
                n
                for n in sorted(p.name for p in evidence_dir.iterdir())
                if n.endswith(".json") and n not in indexed
            ]
            if extra:
                report.notes.append(f"{len(extra)} file(s) not in the index (orphans): {extra[:5]}")
        return report
    items = [(str(p), Path(p).read_bytes()) for p in paths]
    report = verify_chain(items, trusted_public_keys)
    # Cross-check only the given files against the index: no range expectation.
    known = {r.digest for r in rows}
    for source, data in items:
        if hashlib.sha256(data).hexdigest() not in known:
            report.notes.append(f"{source}: not in the local index")
    return report
