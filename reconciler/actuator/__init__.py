"""Everything that changes the host, and the privileged reads.

Owns the `Host` implementation (subprocess, no shell), the in-process actuator,
the NixOS rebuild transaction, the nft sandbox, and the root actuator's wire
protocol, server and client. The root actuator's import closure is this wing,
`trust` (signature checks), `store` (read-only) and `specs`: no network
client, no evidence writer.
"""
