"""The reconcile loop: observe -> diff -> plan -> guards -> act -> conditions.

Owns the controller registry, the guards, status conditions, the client-go
style workqueue, one pass over all resources (`agent`) and the long-running
daemon. Imports: ops, actuator, trust, store, controllers, specs. Never the
network client or the evidence writer: those listen to reconcile results.
"""
