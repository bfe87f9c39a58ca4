"""DEV ONLY control-plane stub for compliance-agent.

Serves the control-plane HTTP API (docs/delivery.md) over mutual TLS so
the agent can be demonstrated and tested end to end. It is not a product: no
authentication beyond the client certificate, no multi-tenancy, a single
SQLite file. Never expose it beyond a lab.
"""

BANNER = (
    "*** DEV ONLY: compliance-agent demo control plane. Not for production use; "
    "it exists for demos and tests. ***"
)
