"""Everything that changes the host, and the privileged reads.

Owns the `Host` implementation (subprocess, no shell), the in-process actuator,
the NixOS rebuild transaction, the nft sandbox, and the root actuator: its wire
protocol, its policy (decided from root-owned inputs only: `baselines` keeps
the signed baseline it verified itself, `devices` resolves the block devices
it may read), server and client. Imports: trust (signature checks), specs.
Never the store, the network client, the evidence writer or the loop: the
root actuator's import closure stays small, and it never reads the agent's
database.
"""
