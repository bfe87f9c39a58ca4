"""Everything that changes the host, and the privileged reads.

Owns the `Host` implementation (subprocess, no shell), the in-process actuator,
the NixOS rebuild transaction, the nft sandbox, and the root actuator's wire
protocol, server and client. Imports: trust (signature checks), store
(read-only), specs. Never the network client, the evidence writer or the loop:
the root actuator's import closure stays small.
"""
