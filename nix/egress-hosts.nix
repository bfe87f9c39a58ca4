# Destinations this NixOS configuration itself needs to reach, for the egress
# allowlist of nix/module.nix: the binary caches (nix.settings.substituters),
# the RMM webhook, the syslog collector and NATS, and, from the local baseline when
# it is a Nix path (readable at evaluation), the backup repositories and the
# origin of a flake patching target, plus flakeInputHosts.
#
# Returns { destinations = [ { host; port; proto; why; } ]; unknown = [ text ]; }
# where `unknown` lists what needs the network but names no host we can derive
# (the module warns about each).
{ lib, config, cfg }:

let
  b = builtins;
  dest = proto: port: why: host: { inherit host proto why; port = lib.toInt (toString port); };
  https = dest "tcp" 443;

  # scheme://[user@]host[:port][/...]  (bracketed IPv6 hosts too)
  urlParts = url: b.match "([a-z0-9+.-]+)://([^/@]*@)?([[][0-9A-Fa-f:.]*[]]|[^/:?#]+)(:([0-9]+))?([/?#].*)?" url;
  stripBrackets = h: lib.removePrefix "[" (lib.removeSuffix "]" h);
  defaultPorts = { https = 443; http = 80; ssh = 22; sftp = 22; "git+https" = 443; "git+http" = 80; "git+ssh" = 22; };
  fromUrl = why: url:
    let m = urlParts url; in
    if m == null then null
    else
      let
        scheme = b.elemAt m 0;
        port = if b.elemAt m 4 != null then b.elemAt m 4 else defaultPorts.${scheme} or null;
      in
      if port == null then null else dest "tcp" port why (stripBrackets (b.elemAt m 2));

  substituters = config.nix.settings.substituters or [ ];
  substituterDests = map (u:
    let d = fromUrl "binary cache ${u}" u; in
    if d != null then { ok = d; } else if lib.hasPrefix "file://" u || lib.hasPrefix "/" u || lib.hasPrefix "daemon" u || lib.hasPrefix "local" u
    then { } else { unknown = "binary cache ${u} (nix.settings.substituters)"; }) substituters;

  webhookDests = lib.optional (cfg.rmmWebhookUrl != null)
    (let d = fromUrl "RMM webhook" cfg.rmmWebhookUrl; in
     if d != null then { ok = d; } else { unknown = "RMM webhook ${cfg.rmmWebhookUrl}"; });

  # tcp://, udp://, and tls:// (syslog over TLS, RFC 5425: TCP) targets
  syslog = if cfg.syslogTarget == null then null
    else b.match "(tcp|udp|tls)://([^/:]+):([0-9]+)" cfg.syslogTarget;
  syslogDests = lib.optional (syslog != null) {
    ok = dest (if b.elemAt syslog 0 == "udp" then "udp" else "tcp") (b.elemAt syslog 2)
      "syslog collector" (b.elemAt syslog 1);
  };

  # natsUrl tls://host[:port] (order wake-ups): TCP, 4222 unless written
  nats = if (cfg.natsUrl or null) == null then null
    else b.match "tls://([^/:@]+)(:([0-9]+))?/?" cfg.natsUrl;
  natsDests = lib.optional (nats != null) {
    ok = dest "tcp" (if b.elemAt nats 2 == null then 4222 else b.elemAt nats 2)
      "NATS order wake-ups" (b.elemAt nats 0);
  };

  # The local baseline, when it is a Nix path (a string path is outside the
  # store and pure evaluation may not read it).
  baseline =
    if cfg.baselinePath != null && b.isPath cfg.baselinePath
    then b.fromJSON (b.readFile cfg.baselinePath) else { };

  # restic: sftp:[user@]host:/path, sftp://[user@]host[:port]/path,
  # rest:http(s)://host[:port]/, s3:https://host/bucket, s3:host/bucket;
  # borg: ssh://[user@]host[:port]/path, [user@]host:path; local paths need nothing.
  repoDest = why: repo:
    let
      sftpShort = b.match "sftp:([^/@:]*@)?([^/:]+):.*" repo;
      scpLike = b.match "([^/@:]+@)?([^/:]+):([^/].*|/.*)" repo;
      s3Short = b.match "s3:([^/:]+)/.*" repo;
    in
    if lib.hasPrefix "/" repo then { }
    else if lib.hasPrefix "sftp://" repo || lib.hasPrefix "ssh://" repo then
      (let d = fromUrl why repo; in if d != null then { ok = d; } else { unknown = "${why} (${repo})"; })
    else if sftpShort != null then { ok = dest "tcp" 22 why (b.elemAt sftpShort 1); }
    else if lib.hasPrefix "rest:" repo || lib.hasPrefix "s3:http" repo then
      (let d = fromUrl why (lib.removePrefix "s3:" (lib.removePrefix "rest:" repo)); in
       if d != null then { ok = d; } else { unknown = "${why} (${repo})"; })
    else if s3Short != null then { ok = https why (b.elemAt s3Short 0); }
    # cloud backends of restic: their endpoints are the provider's, not derived
    else if b.match "(b2|azure|gs|swift|rclone):.*" repo != null
    then { unknown = "${why} (${repo}: its service's hosts are not derived here)"; }
    else if scpLike != null then { ok = dest "tcp" 22 why (b.elemAt scpLike 1); }
    else { unknown = "${why} (${repo})"; };
  backupDests = map (job: repoDest "backup repository of job ${job.name or "?"}" (job.repository or ""))
    ((baseline.backup or { }).jobs or [ ]);

  # A flake patching target is built on this host: its origin must be reachable
  # (its inputs too: flakeInputHosts).
  target = (baseline.patching or { }).target or null;
  forges = {
    github = [ "github.com" "api.github.com" "codeload.github.com" ];
    gitlab = [ "gitlab.com" ];
    sourcehut = [ "git.sr.ht" ];
  };
  forge = if target == null then null else b.match "(github|gitlab|sourcehut):.*" target;
  flakeDests =
    if target == null || lib.hasPrefix "/" target || lib.hasPrefix "path:" target then [ ]
    else if forge != null then map (h: { ok = https "flake patching target ${target}" h; }) forges.${b.head forge}
    else
      let d = fromUrl "flake patching target ${target}" (lib.removePrefix "tarball+" target); in
      [ (if d != null then { ok = d; } else { unknown = "flake patching target ${target}"; }) ];
  inputDests = map (h: { ok = https "flakeInputHosts" h; }) cfg.flakeInputHosts;

  all = substituterDests ++ webhookDests ++ syslogDests ++ natsDests ++ backupDests ++ flakeDests
    ++ inputDests;
in
{
  destinations = map (e: e.ok) (b.filter (e: e ? ok) all);
  unknown = map (e: e.unknown) (b.filter (e: e ? unknown) all);
  flakeTarget = flakeDests != [ ];
}
