"""Verify the evidence log: chain, Merkle tree, signed checkpoints, index, files.

`verify_local` checks the agent's own state (index + evidence directory);
`verify_directory` checks a copy of an evidence directory with the public key
alone (auditor mode). Both add to `reconciler.evidence.chain`'s problems:

    Empty               the index holds no bundle (a wiped index)
    Orphan              a bundle file the index does not know
    TreeMismatch        the stored tree (size, frontier) differs from the index
    BadCheckpoint       a checkpoint that is malformed, for another log, or badly signed
    BadCosignature      a countersignature that does not verify with the control plane's key
    SplitView           two validly signed checkpoints of one size with different roots
    Truncated           a checkpoint covers more bundles than exist: the tail was deleted
    Misplaced           (directory mode) a file holds another sequence's bundle
    CheckpointMismatch  a checkpoint's root is not the root of the bundles it covers
                        (a bundle was replaced, reordered or deleted)

Every checkpoint (stored, as a file, or given with --checkpoint) is checked
against the root recomputed from the one leaf list at its size. Since all
roots come from prefixes of a single list, successive checkpoints are
consistent exactly when each matches (what an RFC 9162 consistency proof
shows to someone without the leaves; exports carry those proofs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.evidence.chain import ChainReport, Problem, verify_chain
from reconciler.evidence.checkpoint import CHECKPOINT_DIR, ORIGIN_PREFIX
from reconciler.evidence.merkle import Frontier, evidence_leaf
from reconciler.evidence.note import (
    Checkpoint,
    NoteError,
    SignedNote,
    verify_cosignature,
    verify_note,
)
from reconciler.evidence.tree import TreeTampered, load_frontier
from reconciler.store.database import Store
from reconciler.store.evidence_index import (
    FILE_RE,
    IndexRow,
    all_rows,
    decode_statement,
    file_name_for,
    last_recovery,
)
from reconciler.store.evidence_tree import all_checkpoints
from reconciler.trust.dsse import TrustedKeys


@dataclass(frozen=True)
class NoteSource:
    source: str  # where it came from, for messages
    text: str
    countersigned: bool = False  # the control plane's copy: must carry its cosignature


def _problem(report: ChainReport, reason: str, message: str, seq: int | None = None,
             source: str = "") -> None:
    report.problems.append(Problem(reason, message, seq, source))


def checked_checkpoints(
    notes: Iterable[NoteSource],
    keys: TrustedKeys,
    origin: str | None,
    report: ChainReport,
    cosigner_keys: Sequence[str] = (),
) -> list[tuple[str, Checkpoint]]:
    """Checkpoints whose note verifies with a trusted key under their origin.

    With `cosigner_keys` (the control plane's, hex), every signature line by
    another name than the origin must be a valid tlog-cosignature/v1 by one of
    them, and notes marked `countersigned` must carry one.
    """
    out: list[tuple[str, Checkpoint]] = []
    pubs = [bytes(k) for k in keys.by_keyid.values()]
    cosigners = [bytes.fromhex(k) for k in cosigner_keys]
    cosigned = 0
    for n in notes:
        try:
            note = SignedNote.parse(n.text)
            cp = Checkpoint.parse(note.text)
            if not cp.origin.startswith(ORIGIN_PREFIX + "/"):
                raise NoteError(f"origin {cp.origin!r} is not an evidence log")
            if origin is not None and cp.origin != origin:
                raise NoteError(f"checkpoint is for {cp.origin}, this log is {origin}")
            errors = []
            for pub in pubs:
                try:
                    verify_note(note, cp.origin, pub)
                    break
                except NoteError as e:
                    errors.append(str(e))
            else:
                raise NoteError("; ".join(errors) or "no trusted key")
        except NoteError as e:
            _problem(report, "BadCheckpoint", str(e), None, n.source)
            continue
        if cosigners:
            problem = _cosignature_problem(note, cp.origin, cosigners, n.countersigned)
            if problem is None and len(note.signatures) > 1:
                cosigned += 1
            elif problem is not None:
                _problem(report, "BadCosignature", problem, cp.size, n.source)
        out.append((n.source, cp))
    if cosigned:
        report.notes.append(f"{cosigned} countersigned checkpoint(s) verified with the "
                            "control plane's key")
    return out


def _cosignature_problem(note: SignedNote, origin: str, cosigners: list[bytes],
                         required: bool) -> str | None:
    found = False
    for sig in note.signatures:
        if sig.name == origin:
            continue
        for pub in cosigners:
            try:
                verify_cosignature(SignedNote(note.text, (sig,)), sig.name, pub)
                found = True
                break
            except NoteError:
                continue
        else:
            return f"the signature by {sig.name} is not a valid cosignature by a known key"
    if required and not found:
        return "no cosignature by the control plane"
    return None


def check_tree(
    report: ChainReport,
    leaves_digests: Sequence[str],
    checkpoints: list[tuple[str, Checkpoint]],
) -> None:
    """Checkpoints against the leaf list (digest of sequence i+1 at position i)."""
    n = len(leaves_digests)
    by_size: dict[int, tuple[str, Checkpoint]] = {}
    for src, cp in checkpoints:
        seen = by_size.get(cp.size)
        if seen is not None and seen[1].root != cp.root:
            _problem(report, "SplitView", f"two signed checkpoints of size {cp.size} with "
                     f"different roots ({seen[0]} and {src})", cp.size, src)
        by_size.setdefault(cp.size, (src, cp))
    sizes = sorted(by_size)
    for size in sizes:
        if size > n:
            src = by_size[size][0]
            _problem(report, "Truncated", f"checkpoint {src} covers {size} bundle(s) but only "
                     f"{n} exist: bundles {n + 1}..{size} were deleted", size, src)
    frontier = Frontier()
    for size in [s for s in sizes if s <= n]:
        frontier.extend(evidence_leaf(d) for d in leaves_digests[frontier.size:size])
        src, cp = by_size[size]
        if frontier.root() != cp.root:
            _problem(report, "CheckpointMismatch", f"checkpoint {src} (size {size}) does not "
                     "match the bundles it covers: one was replaced, reordered or deleted",
                     size, src)
    if not sizes:
        if n:
            report.notes.append("no signed checkpoint: deleting the newest bundles would go "
                                "unnoticed (run 'compliance-agent evidence checkpoint')")
    elif sizes[-1] < n:
        report.notes.append(f"seq {sizes[-1] + 1}-{n} not covered by a checkpoint yet")
    else:
        report.notes.append(f"tree of {n} bundle(s) matches {len(sizes)} signed checkpoint(s)")


def _notes_in(directory: Path) -> list[NoteSource]:
    if not directory.is_dir():
        return []
    return [NoteSource(str(p), p.read_text(errors="replace"), p.name.endswith(".cosigned.note"))
            for p in sorted(directory.iterdir()) if p.name.endswith(".note")]


def verify_local(
    store: Store,
    evidence_dir: Path,
    keys: Sequence[str] | TrustedKeys,
    origin: str,
    external: Sequence[NoteSource] = (),
    cosigner_keys: Sequence[str] = (),
) -> ChainReport:
    """The whole local log against its index, stored tree and every checkpoint
    (countersignatures checked with `cosigner_keys`, the control plane's)."""
    tkeys = keys if isinstance(keys, TrustedKeys) else TrustedKeys(keys)
    with store.begin() as conn:
        rows = all_rows(conn)
        stored = all_checkpoints(conn)
        recovered = last_recovery(conn)
        try:
            frontier: Frontier | None = load_frontier(conn)
            tree_error = None
        except TreeTampered as e:
            frontier, tree_error = None, str(e)
    index: dict[int, IndexRow] = {r.sequence: r for r in rows}
    items: list[tuple[str, bytes]] = []
    for r in rows:
        if r.pruned:
            continue
        try:
            items.append((r.file_name, (evidence_dir / r.file_name).read_bytes()))
        except FileNotFoundError:
            continue  # reported as Missing by verify_chain
    report = verify_chain(items, tkeys, index)
    report.checked = len(items)
    if recovered is not None:
        report.notes.append(recovered)
    if not rows:
        _problem(report, "Empty", "the evidence index holds no bundle")
    names = {r.file_name for r in rows}
    if evidence_dir.is_dir():
        for name in sorted(p.name for p in evidence_dir.iterdir()):
            if FILE_RE.match(name) and name not in names:
                _problem(report, "Orphan", "bundle file not in the index", None, name)
    digests = [r.digest for r in rows]
    if [r.sequence for r in rows] != list(range(1, len(rows) + 1)):
        _problem(report, "TreeMismatch", "index sequences are not 1..n without holes")
    if tree_error is not None:
        _problem(report, "TreeMismatch", tree_error)
    elif frontier is not None and frontier.size:
        if frontier.size != len(rows):
            _problem(report, "TreeMismatch", f"the stored tree has {frontier.size} leaves, the "
                     f"index {len(rows)} rows")
        else:
            check = Frontier()
            check.extend(evidence_leaf(d) for d in digests)
            if check.root() != frontier.root():
                _problem(report, "TreeMismatch", "the stored tree root differs from the index")
    notes = [NoteSource(f"stored checkpoint {c.tree_size}", c.note) for c in stored]
    notes += [NoteSource(f"cosigned checkpoint {c.tree_size}", c.cosigned_note, True)
              for c in stored if c.cosigned_note]
    notes += _notes_in(evidence_dir / CHECKPOINT_DIR)
    notes += list(external)
    check_tree(report, digests,
               checked_checkpoints(notes, tkeys, origin, report, cosigner_keys))
    return report


def verify_directory(
    evidence_dir: Path,
    keys: Sequence[str] | TrustedKeys,
    external: Sequence[NoteSource] = (),
    cosigner_keys: Sequence[str] = (),
) -> ChainReport:
    """A copy of an evidence directory, with the public key alone (no index)."""
    tkeys = keys if isinstance(keys, TrustedKeys) else TrustedKeys(keys)
    items = [(p.name, p.read_bytes()) for p in sorted(evidence_dir.iterdir())
             if FILE_RE.match(p.name)]
    report = verify_chain(items, tkeys, expect_from=1)
    for name, data in items:
        try:
            pred = decode_statement(data)["predicate"]
            expected = file_name_for(int(pred["sequence"]), str(pred["bundle_id"]))
        except (ValueError, KeyError, TypeError):
            continue  # reported by verify_chain
        if name != expected:
            _problem(report, "Misplaced", f"holds the bundle that belongs in {expected}", None,
                     name)
    if not items:
        _problem(report, "Empty", f"no evidence bundle in {evidence_dir}")
        return report
    origin = _origin_of(items[0][1])
    last = max(report.digests) if report.digests else 0
    digests: list[str] = []
    for seq in range(1, last + 1):
        d = report.digests.get(seq)
        if d is None:
            break  # the gap is a problem already; the tree can only be checked up to it
        digests.append(d)
    notes = _notes_in(evidence_dir / CHECKPOINT_DIR) + list(external)
    check_tree(report, digests,
               checked_checkpoints(notes, tkeys, origin, report, cosigner_keys))
    return report


def _origin_of(envelope: bytes) -> str | None:
    """The log origin named by a bundle's predicate (its signature is checked elsewhere)."""
    try:
        pred = decode_statement(envelope)["predicate"]
        return f"{ORIGIN_PREFIX}/{pred['site_id']}/{pred['host_id']}"
    except (ValueError, KeyError, TypeError):
        return None
