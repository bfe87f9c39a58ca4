"""The compliance-agent runtime, in wings (subpackages) of one concern each.

Wings import only downward, in this order (enforced by import-linter in
`make lint`; see docs/architecture.md):

    cli -> service -> delivery -> evidence -> runtime -> ops -> actuator -> trust -> store

`service` is the one composition root: it reads `AgentConfig` and builds every
collaborator; everything below it receives what it needs at construction.
"""
