"""Signatures and who is trusted: DSSE envelopes (Ed25519), key files, and
admission of signed orders (signature, site/host binding, TTL, nonce).
Imports: store, specs.
"""
