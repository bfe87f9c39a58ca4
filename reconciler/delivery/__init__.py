"""Everything that talks to the network: the mutual-TLS control-plane client,
the control-plane loop (orders, signed baselines, delivery of the evidence
queued in the store's outbox), and the reseller integrations (webhook, syslog).
Imports: evidence, runtime, ops, trust, store, specs.
"""
