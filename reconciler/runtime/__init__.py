"""The reconcile loop: observe -> diff -> plan -> guards -> act -> conditions.

Owns the controller registry, desired state, the guards and their clock-health
input, status conditions, the client-go style workqueue, one pass over all
resources (`agent`) and the long-running daemon. Typed against the controller
contract (`controllers.base`) and kind-agnostic: only the registry names kinds.
Everything is wired at construction from small policy objects; the config is
read only by the composition root (`reconciler.service`) and the CLI.
Imports: ops, actuator, trust, store, controllers, specs. Never the network
client or the evidence writer: those listen to reconcile results.
"""
