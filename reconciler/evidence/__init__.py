"""Signed, hash-chained evidence: the writer (DSSE over in-toto statements),
chain verification, retention, and the recorder that turns reconcile results
into bundles. Imports: runtime (result types), trust, store, specs.
"""
