"""The compliance-agent runtime: loop, workqueue, guards, host and actuator,
trust, evidence, outbox, control-plane client, store, metrics, CLI."""
