"""Evidence exports for auditors: write one, and verify one with the public key alone.

An export is a .tar.gz holding one directory `evidence-export/`:

    manifest.json      DSSE envelope (payload type EXPORT_PAYLOAD_TYPE) signed by
                       the agent's key: origin, public key, time window, sequence
                       range, tree size and the SHA-256 of every other file
    public_key.hex     the agent's Ed25519 public key (compare it out of band)
    bundles/*.json     the bundles of the window, plus every prune bundle that
                       lists a pruned sequence of the window
    checkpoints/*.note the signed checkpoints inside the window and the newest
                       one (countersigned copies too, when the agent has them)
    proofs.json        RFC 9162 inclusion proofs of every bundle of the window
                       (and of each pruned one, by its listed digest) in the newest
                       checkpoint, and consistency proofs between successive
                       checkpoints
    VERIFY.md          how to check it
    verify_export.py   an independent checker needing only securesystemslib

Because the manifest is signed and lists every file's digest, changing,
adding or removing any byte of the export is detected.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import tarfile
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from reconciler.evidence.chain import ChainReport, Problem, verify_chain
from reconciler.evidence.checkpoint import Checkpointer, origin_for
from reconciler.evidence.logverify import NoteSource, checked_checkpoints
from reconciler.evidence.merkle import (
    consistency_proof,
    evidence_leaf,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from reconciler.store.database import Store
from reconciler.store.evidence_index import all_rows, decode_statement
from reconciler.store.evidence_tree import all_checkpoints
from reconciler.trust.dsse import Signer, TrustedKeys, TrustError, envelope_bytes, verify_envelope
from specs.errors import ComplianceAgentError
from specs.orders import format_rfc3339

EXPORT_PAYLOAD_TYPE = "application/vnd.compliance-agent.evidence-export+json"
ROOT = "evidence-export"
MAX_MEMBER_BYTES = 64 * 1024 * 1024
SCRIPT = "verify_export.py"


class ExportError(ComplianceAgentError):
    """The export cannot be written, or is not an export at all."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _verify_md(origin: str, key_hex: str) -> str:
    return f"""# Evidence export of {origin}

This archive holds signed compliance evidence (DSSE envelopes, in-toto
statements), the signed checkpoints of the agent's append-only Merkle log
(C2SP tlog-checkpoint, RFC 9162 hashing), and the proofs that tie them together.

The agent's evidence public key is stated in `public_key.hex`:

    {key_hex}

**Compare it with the key you were given through another channel** (for
example the clinic's key registration). Everything below is only as strong as
that comparison.

## Check with the agent's CLI

    compliance-agent evidence verify --public-key {key_hex} EXPORT.tar.gz

## Check independently (Python 3.11+, only `securesystemslib`)

    tar xzf EXPORT.tar.gz        # gives evidence-export/, this file's directory
    python -m venv v && v/bin/pip install securesystemslib
    v/bin/python evidence-export/verify_export.py --public-key {key_hex} EXPORT.tar.gz

(`verify_export.py` also takes the unpacked `evidence-export/` directory.)

Exit status 0 means: the manifest is signed by that key and every file has
the digest it lists; every bundle is signed by that key and the sequence range
has no hole (a pruned bundle counts only when a signed prune bundle lists it);
each bundle links to the one before (prev_digest); every bundle, and every
pruned one by its listed digest, is included in the newest signed checkpoint
(RFC 9162 inclusion proofs); successive checkpoints are consistent (RFC 9162
consistency proofs), so the log only ever grew.

Keep the newest checkpoint (and its control-plane countersignature, in
`checkpoints/*.cosigned.note`): any later export or copy of the log must
contain it unchanged, so nothing it covers can be deleted or altered later.
"""


def write_export(
    store: Store,
    evidence_dir: Path,
    signer: Signer,
    out: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    origin: str | None = None,
    clock: Any = None,
) -> dict[str, Any]:
    """Write the export of bundles created in [since, until]; returns a summary."""
    now = (clock or (lambda: datetime.now(UTC)))()
    lo_t = format_rfc3339(since) if since else ""
    hi_t = format_rfc3339(until or now)
    with store.begin() as conn:
        rows = all_rows(conn)
    if not rows:
        raise ExportError("the evidence index holds no bundle")
    first_pred = decode_statement((evidence_dir / next(r.file_name for r in rows
                                                      if not r.pruned)).read_bytes())
    origin = origin or origin_for(first_pred["predicate"]["site_id"],
                                  first_pred["predicate"]["host_id"])
    # The export proves against a checkpoint: make sure one covers the window.
    cp_signer = Checkpointer(store, signer, evidence_dir, origin, clock=lambda: now)
    try:
        cp_signer.checkpoint()
    finally:
        cp_signer.close()
    with store.begin() as conn:
        rows = all_rows(conn)
        checkpoints = all_checkpoints(conn)
    window = [r for r in rows if lo_t <= r.created_at <= hi_t]
    if not window:
        raise ExportError(f"no evidence bundle created between {lo_t or 'the start'} and {hi_t}")
    first, last = window[0].sequence, window[-1].sequence
    latest = checkpoints[-1]
    leaves = [evidence_leaf(r.digest) for r in rows[: latest.tree_size]]
    in_range = rows[first - 1 : last]
    pruners = {r.pruned_by for r in in_range if r.pruned}
    extra = [r for r in rows if r.bundle_id in pruners and r.sequence > last]
    files: dict[str, bytes] = {}
    inclusion: dict[str, list[str]] = {}
    for r in [*in_range, *extra]:
        inclusion[str(r.sequence)] = [_b64(h) for h in inclusion_proof(leaves, r.sequence - 1)]
        if not r.pruned:
            files[f"bundles/{r.file_name}"] = (evidence_dir / r.file_name).read_bytes()
    chosen = [c for c in checkpoints if first <= c.tree_size <= last or c is latest]
    before = [c for c in checkpoints if c.tree_size < first]
    if before:
        chosen.insert(0, before[-1])
    consistency = []
    for a, b in itertools.pairwise(chosen):
        proof = consistency_proof(leaves, a.tree_size, b.tree_size)
        consistency.append({"old_size": a.tree_size, "new_size": b.tree_size,
                            "proof": [_b64(h) for h in proof]})
    for c in chosen:
        files[f"checkpoints/{c.tree_size:012d}.note"] = c.note.encode()
        if c.cosigned_note:
            files[f"checkpoints/{c.tree_size:012d}.cosigned.note"] = c.cosigned_note.encode()
    proofs = {"tree_size": latest.tree_size, "root_hash": _b64(latest.root_hash),
              "inclusion": inclusion, "consistency": consistency}
    files["proofs.json"] = json.dumps(proofs, indent=1, sort_keys=True).encode()
    files["public_key.hex"] = (signer.public_key_hex + "\n").encode()
    files["VERIFY.md"] = _verify_md(origin, signer.public_key_hex).encode()
    files[SCRIPT] = resources.files("reconciler.evidence").joinpath(SCRIPT).read_bytes()
    manifest = {
        "origin": origin, "public_key": signer.public_key_hex, "since": lo_t or None,
        "until": hi_t, "first_sequence": first, "last_sequence": last,
        "tree_size": latest.tree_size, "created_at": format_rfc3339(now),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    files["manifest.json"] = envelope_bytes(signer.sign_envelope(
        json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(), EXPORT_PAYLOAD_TYPE))
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{ROOT}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, int(now.timestamp())
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)
    return {"out": str(out), "first_sequence": first, "last_sequence": last,
            "bundles": sum(1 for n in files if n.startswith("bundles/")),
            "tree_size": latest.tree_size}


def read_export(path: Path) -> dict[str, bytes]:
    """name (relative to evidence-export/) -> bytes, from a .tar.gz or a directory."""
    out: dict[str, bytes] = {}
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                out[p.relative_to(path).as_posix()] = p.read_bytes()
        return out
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                name = m.name
                if not name.startswith(ROOT + "/") or ".." in name.split("/"):
                    raise ExportError(f"{path}: unexpected member {name!r}")
                if m.size > MAX_MEMBER_BYTES:
                    raise ExportError(f"{path}: member {name!r} is too large")
                f = tar.extractfile(m)
                out[name[len(ROOT) + 1 :]] = f.read() if f else b""
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a readable export archive: {e}") from None
    return out


def verify_export(
    path: Path, keys: Sequence[str], external: Sequence[NoteSource] = ()
) -> ChainReport:
    """Everything VERIFY.md promises, with this package's own implementations."""
    try:
        return _verify_export(path, TrustedKeys(keys), external)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, ValueError) and "trusted key" in str(e):
            raise
        raise ExportError(f"{path}: malformed export ({type(e).__name__}: {e})") from None


def _verify_export(
    path: Path, tkeys: TrustedKeys, external: Sequence[NoteSource]
) -> ChainReport:
    files = read_export(path)
    if "manifest.json" not in files:
        raise ExportError(f"{path}: no manifest.json: not an evidence export")
    try:
        manifest = json.loads(verify_envelope(files["manifest.json"], EXPORT_PAYLOAD_TYPE, tkeys))
    except TrustError as e:
        raise ExportError(f"manifest.json: {e.reason}: {e.message}") from None
    report = ChainReport()

    def bad(reason: str, msg: str, seq: int | None = None, src: str = "") -> None:
        report.problems.append(Problem(reason, msg, seq, src))

    listed: dict[str, str] = manifest["files"]
    for name in sorted(set(files) - {"manifest.json"} | set(listed)):
        data = files.get(name)
        if data is None:
            bad("ExportTampered", "listed in the manifest but missing", None, name)
        elif name not in listed:
            bad("ExportTampered", "not listed in the signed manifest", None, name)
        elif hashlib.sha256(data).hexdigest() != listed[name]:
            bad("ExportTampered", "differs from the digest in the signed manifest", None, name)
    first, last, size = manifest["first_sequence"], manifest["last_sequence"], manifest["tree_size"]
    bundles = [(n, d) for n, d in files.items() if n.startswith("bundles/")]
    chain = verify_chain(bundles, tkeys, expect_from=first, expect_to=last)
    report.problems += chain.problems
    report.notes += chain.notes
    report.checked, report.first, report.last = chain.checked, first, last
    notes = [NoteSource(n, d.decode(errors="replace")) for n, d in files.items()
             if n.startswith("checkpoints/")]
    cps = checked_checkpoints(notes, tkeys, manifest["origin"], report)
    by_size = {cp.size: cp for _, cp in cps}
    head = by_size.get(size)
    if head is None:
        bad("BadCheckpoint", f"no valid signed checkpoint of the manifest's tree size {size}")
        return report
    try:
        proofs = json.loads(files.get("proofs.json", b"{}"))
    except ValueError:
        bad("ExportTampered", "not JSON", None, "proofs.json")
        return report
    present = set()
    for _, data in bundles:
        try:
            present.add(int(decode_statement(data)["predicate"]["sequence"]))
        except (ValueError, KeyError, TypeError):
            continue  # reported by verify_chain
    wanted = {s for s in chain.digests if first <= s <= last} | (present & set(chain.digests))
    for seq in sorted(wanted):
        proof = [base64.b64decode(h) for h in proofs.get("inclusion", {}).get(str(seq), [])]
        if seq > size or not verify_inclusion(evidence_leaf(chain.digests[seq]), seq - 1,
                                               size, proof, head.root):
            bad("NotIncluded", f"not included in the checkpoint of size {size}", seq)
    sizes = sorted(by_size)
    given = {(c["old_size"], c["new_size"]): c["proof"] for c in proofs.get("consistency", [])}
    for a, b in itertools.pairwise(sizes):
        proof = [base64.b64decode(h) for h in given.get((a, b), [])]
        if not verify_consistency(a, b, by_size[a].root, by_size[b].root, proof):
            bad("Inconsistent", f"checkpoints {a} and {b} are not consistent (append-only)", b)
    for src, cp in checked_checkpoints(external, tkeys, manifest["origin"], report):
        known = by_size.get(cp.size)
        if known is not None and known.root != cp.root:
            bad("SplitView", f"{src} has another root for tree size {cp.size}", cp.size, src)
        elif cp.size > size:
            report.notes.append(f"{src}: a checkpoint of size {cp.size} is newer than this export")
    if report.ok:
        report.notes.append(f"{manifest['origin']}: seq {first}..{last} included in the signed "
                            f"checkpoint of size {size}; {len(sizes)} checkpoint(s) consistent")
    return report
