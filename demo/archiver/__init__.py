"""DEV ONLY: the evidence archiver, a JetStream consumer of the control plane's
EVIDENCE stream that keeps an append-only archive per host (see archive.py)."""
