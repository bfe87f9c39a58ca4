"""Everything that talks to the network: the mutual-TLS control-plane client,
the control-plane loop (orders, signed baselines, evidence delivery), the
durable outbox, and the reseller integrations (webhook, syslog).
Imports: evidence, runtime, ops, trust, store, specs.
"""
