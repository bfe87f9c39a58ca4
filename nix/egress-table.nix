# A table of networking.nftables.tables as one `nft -f` file (what NixOS
# loads for it, without its delete/recreate preamble): the shipped
# examples/egress-table.nft and the netns tests load this.
{ lib }:
name: content:
"table inet ${name} {\n"
+ lib.concatMapStrings (l: if l == "" then "\n" else "\t" + l + "\n")
    (lib.splitString "\n" (lib.removeSuffix "\n" content))
+ "}\n"
