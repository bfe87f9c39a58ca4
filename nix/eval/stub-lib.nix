# A small stand-in for the parts of nixpkgs' `lib` that nix/module.nix and the
# examples use, plus a tiny module-system evaluator, so the module can be
# evaluated by a bare `nix-instantiate` with no nixpkgs checkout
# (tests/integration/test_nix_module.py). It is NOT nixpkgs. Semantics follow
# nixpkgs where the module depends on them:
#
# * definitions may be wrapped in mkIf / mkMerge / mkOverride (mkDefault,
#   mkForce) at any depth; on the way down they are pushed into attribute
#   sets WITHOUT evaluating conditions (so `config = mkIf cfg.enable {...}`
#   does not recurse into itself), and discharged only at a leaf;
# * at a leaf the highest priority (lowest number) wins; the option default
#   has priority 1500, mkDefault 1000, plain definitions 100, mkForce 50;
# * declared options are merged by their type and checked against it;
#   undeclared paths are merged freeform: attribute sets recursively, lists
#   concatenated, anything else must agree.
let
  b = builtins;

  isType = t: v: b.isAttrs v && (v._type or null) == t;
  isOption = isType "option";
  isDerivation = v: b.isAttrs v && (v.type or null) == "derivation";
  showPath = path: b.concatStringsSep "." path;

  # ---------------------------------------------------------------- types
  mkType = { name, description ? name, check, merge ? mergeEqual }:
    { _type = "option-type"; inherit name description check merge; };

  mergeEqual = path: values:
    let first = b.head values; in
    if b.all (v: v == first) values then first
    else throw "The option `${showPath path}' has conflicting definition values: ${b.toJSON values}";

  strMatches = re: v: b.isString v && b.match re v != null;

  types = rec {
    anything = mkType { name = "anything"; check = _: true; merge = path: mergeFreeform path; };
    raw = mkType { name = "raw"; check = _: true; };
    bool = mkType { name = "bool"; check = b.isBool; };
    str = mkType { name = "str"; check = b.isString; };
    nonEmptyStr = mkType {
      name = "nonEmptyStr";
      description = "non-empty string";
      check = v: b.isString v && b.match "[ \t\n]*" v == null;
    };
    lines = mkType {
      name = "lines";
      check = b.isString;
      merge = _: values: b.concatStringsSep "\n" values;
    };
    int = mkType { name = "int"; check = b.isInt; };
    ints = {
      positive = mkType { name = "positiveInt"; description = "positive integer"; check = v: b.isInt v && v > 0; };
      unsigned = mkType { name = "unsignedInt"; description = "unsigned integer"; check = v: b.isInt v && v >= 0; };
      between = lo: hi: mkType {
        name = "intBetween";
        description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
        check = v: b.isInt v && v >= lo && v <= hi;
      };
    };
    port = ints.between 0 65535;
    path = mkType {
      name = "path";
      check = v: b.isPath v || (b.isString v && b.substring 0 1 v == "/") || isDerivation v;
    };
    package = mkType { name = "package"; check = v: isDerivation v || b.isPath v; };
    enum = values: mkType {
      name = "enum";
      description = "one of ${b.concatStringsSep ", " (map b.toJSON values)}";
      check = v: b.elem v values;
    };
    strMatching = re: mkType {
      name = "strMatching";
      description = "string matching the pattern ${re}";
      check = strMatches re;
    };
    nullOr = t: mkType {
      name = "nullOr";
      description = "null or ${t.description}";
      check = v: v == null || t.check v;
      merge = path: values:
        let nonNull = b.filter (v: v != null) values; in
        if nonNull == [ ] then null
        else if b.length nonNull != b.length values
        then throw "The option `${showPath path}' is defined both null and not null."
        else t.merge path nonNull;
    };
    listOf = t: mkType {
      name = "listOf";
      description = "list of ${t.description}";
      check = v: b.isList v && b.all t.check v;
      merge = _: values: b.concatLists values;
    };
    # Merged per attribute with the element type (mkIf false drops an attribute).
    attrsOf = t: mkType {
      name = "attrsOf";
      description = "attribute set of ${t.description}";
      check = b.isAttrs;
      merge = path: values:
        let
          one = n:
            let ds = b.concatMap (discharge 100) (b.concatMap (childDefs n) values); in
            if ds == [ ] then null
            else { name = n; value = checkedMerge (path ++ [ n ]) t (highest ds); };
        in b.listToAttrs (b.filter (x: x != null) (map one (unique (b.concatMap defNames values))));
    };
    lazyAttrsOf = attrsOf;
    unspecified = mkType { name = "unspecified"; check = _: true; };
    singleLineStr = mkType {
      name = "singleLineStr";
      description = "(optionally newline-terminated) single-line string";
      check = v: b.isString v && b.match "[^\n]*\n?" v != null;
    };
    oneOf = ts: mkType {
      name = "oneOf";
      description = b.concatStringsSep " or " (map (t: t.description) ts);
      check = v: b.any (t: t.check v) ts;
    };
    addCheck = t: extra: t // { check = v: t.check v && extra v; };
    passwdEntry = t: t // {
      name = "passwdEntry ${t.name}";
      description = "${t.description}, not containing newlines or colons";
      check = v: t.check v && b.match ".*[:\n].*" (toString v) == null;
    };
    # NixOS's submodule: the definitions are evaluated as modules together with
    # `modules` (attribute sets or functions of { name, config, ... }), and a
    # definition of an undeclared option is an error, as in NixOS.
    submodule = modules: mkType {
      name = "submodule";
      description = "submodule";
      check = b.isAttrs;
      merge = path: values:
        (evalModulesWith {
          strict = true;
          prefix = path;
          modules = (if b.isList modules then modules else [ modules ])
            ++ map (v: { config = v; }) values;
          specialArgs = { name = b.elemAt path (b.length path - 1); };
        }).config;
    };
    either = t1: t2: mkType {
      name = "either";
      description = "${t1.description} or ${t2.description}";
      check = v: t1.check v || t2.check v;
    };
  };

  # ---------------------------------------------------------------- properties
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkDefault = mkOverride 1000;
  mkOptionDefault = mkOverride 1500;
  mkForce = mkOverride 50;
  # Ordering of list definitions (mkBefore 500, plain 1000, mkAfter 1500).
  mkOrder = priority: content: { _type = "order"; inherit priority content; };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;

  # The definitions of attribute `name` inside a (possibly wrapped) definition,
  # wrappers pushed inside; never evaluates a condition.
  childDefs = name: d:
    if isType "if" d then map (mkIf d.condition) (childDefs name d.content)
    else if isType "merge" d then b.concatMap (childDefs name) d.contents
    else if isType "override" d then map (mkOverride d.priority) (childDefs name d.content)
    else if isType "order" d then map (mkOrder d.priority) (childDefs name d.content)
    else if b.isAttrs d && !isDerivation d && d ? ${name} then [ d.${name} ]
    else [ ];

  # Attribute names a definition may define; never evaluates a condition.
  defNames = d:
    if isType "if" d then defNames d.content
    else if isType "merge" d then b.concatMap defNames d.contents
    else if isType "override" d then defNames d.content
    else if isType "order" d then defNames d.content
    else if b.isAttrs d && !isDerivation d then b.attrNames d
    else [ ];

  # Evaluate conditions: a list of { priority, order, value } with wrappers removed.
  dischargeOrdered = order: priority: d:
    if isType "if" d then (if d.condition then dischargeOrdered order priority d.content else [ ])
    else if isType "merge" d then b.concatMap (dischargeOrdered order priority) d.contents
    else if isType "override" d then dischargeOrdered order d.priority d.content
    else if isType "order" d then dischargeOrdered d.priority priority d.content
    else [ { inherit priority order; value = d; } ];
  discharge = dischargeOrdered 1000;

  # The winning definitions (highest priority), in mkBefore/mkAfter order
  # (builtins.sort is stable: equal orders keep module order).
  highest = defs:
    let best = b.foldl' (m: d: if d.priority < m then d.priority else m) 9999 defs; in
    map (d: d.value) (b.sort (x: y: x.order < y.order) (b.filter (d: d.priority == best) defs));

  unique = xs: b.foldl' (acc: x: if b.elem x acc then acc else acc ++ [ x ]) [ ] xs;

  isPlainAttrs = v: b.isAttrs v && !isDerivation v;

  # Undeclared paths: merge like nixpkgs' `anything`.
  mergeFreeform = path: defs:
    let
      discharged = b.concatMap (discharge 100) defs;
      values = map (d: d.value) discharged;
    in
    if discharged == [ ] then null
    else if b.all isPlainAttrs values then
      let
        names = unique (b.concatMap defNames defs);
        children = b.map (n: { name = n; value = mergeFreeform (path ++ [ n ]) (b.concatMap (childDefs n) defs); }) names;
      in b.listToAttrs (b.filter (c: c.value != null || b.any (v: v ? ${c.name} && v.${c.name} == null) values) children)
    else
      let winners = highest discharged; in
      if b.all b.isList winners then b.concatLists winners
      else mergeEqual path winners;

  # ---------------------------------------------------------------- options
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = what: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${what}.";
  };

  checkedValue = path: type: v:
    if type.check v then v
    else throw "A definition for option `${showPath path}' is not of type `${type.description}'. Definition value: ${b.toJSON v}";

  # As NixOS's mergeDefinitions: every definition is checked against the
  # type first, then they are merged (and the result checked again).
  checkedMerge = path: type: values:
    let bad = b.filter (v: !type.check v) values; in
    if bad != [ ] then checkedValue path type (b.head bad)
    else checkedValue path type (type.merge path values);

  evalOptionValue = path: opt: defs:
    let
      discharged = b.concatMap (discharge 100) defs
        ++ (if opt ? default then [ { priority = 1500; value = opt.default; } ] else [ ]);
      type = opt.type or types.anything;
    in
    if discharged == [ ] then throw "The option `${showPath path}' is used but not defined."
    else checkedMerge path type (highest discharged);

  # Walk declarations and definitions together. Undeclared paths are merged
  # freeform at the top level (options of NixOS this stub does not declare)
  # and are errors inside a submodule (`strict`). A declared option with no
  # default and no definition is left out (NixOS would throw on access).
  evalTreeWith = strict: path: decls: defs:
    if isOption decls then evalOptionValue path decls defs
    else
      let
        defined = unique (b.concatMap defNames defs);
        names = unique (b.filter (n: !(isOption decls.${n}) || decls.${n} ? default || b.elem n defined)
          (b.attrNames decls) ++ defined);
        valueOf = n:
          let sub = b.concatMap (childDefs n) defs; in
          if decls ? ${n} then evalTreeWith strict (path ++ [ n ]) decls.${n} sub
          else if strict && b.concatMap (discharge 100) sub != [ ]
          then throw "The option `${showPath (path ++ [ n ])}' does not exist. Definition values: ${b.toJSON (map (d: d.value) (b.concatMap (discharge 100) sub))}"
          else mergeFreeform (path ++ [ n ]) sub;
      in b.listToAttrs (map (n: { name = n; value = valueOf n; }) names);
  evalTree = evalTreeWith false;

  # Merge option declaration trees from several modules.
  mergeDecls = a: c:
    if isOption a || isOption c then
      (if isOption a && isOption c then throw "option declared twice" else if isOption a then a else c)
    else
      b.zipAttrsWith (n: vs: if b.length vs == 1 then b.head vs else b.foldl' mergeDecls { } vs) [ a c ];

  # Modules are attribute sets, functions of { config, options, lib, pkgs, ... },
  # or paths to either; `imports` are followed. A module without `options`,
  # `config` or `imports` is all config (the shorthand form).
  evalModules = { modules, specialArgs ? { } }:
    evalModulesWith { inherit modules specialArgs; strict = false; prefix = [ ]; };
  evalModulesWith = { modules, specialArgs ? { }, strict, prefix }:
    let
      args = { inherit lib; } // specialArgs // { inherit config options; };
      load = m:
        let
          m1 = if b.isPath m || b.isString m then import m else m;
          raw = if b.isFunction m1 then m1 args else m1;
          structured = raw ? config || raw ? options || raw ? imports;
        in
        [ {
          options = raw.options or { };
          config = if structured then raw.config or { } else removeAttrs raw [ "_file" "meta" ];
        } ] ++ b.concatMap load (raw.imports or [ ]);
      loaded = b.concatMap load modules;
      options = b.foldl' mergeDecls { } (map (m: m.options) loaded);
      config = evalTreeWith strict prefix options (map (m: m.config) loaded);
    in { inherit config options; };

  literalExpression = text: { _type = "literalExpression"; inherit text; };

  # ---------------------------------------------------------------- lib
  lib = {
    inherit types mkOption mkEnableOption mkIf mkMerge mkOverride mkDefault mkForce
      mkOptionDefault mkOrder mkBefore mkAfter evalModules literalExpression;
    toInt = s: let n = b.fromJSON s; in
      if b.match "[0-9]+" s != null && b.isInt n then n else throw "toInt: ${s} is not an integer";
    splitString = sep: s: b.filter b.isString (b.split (b.replaceStrings
      [ "\\" "." "[" "]" "(" ")" "*" "+" "?" "{" "}" "|" "^" "$" ]
      [ "\\\\" "\\." "\\[" "\\]" "\\(" "\\)" "\\*" "\\+" "\\?" "\\{" "\\}" "\\|" "\\^" "\\$" ]
      sep) s);
    removeSuffix = sfx: s:
      let ls = b.stringLength s; lx = b.stringLength sfx; in
      if lx <= ls && b.substring (ls - lx) lx s == sfx then b.substring 0 (ls - lx) s else s;
    literalMD = text: { _type = "literalMD"; inherit text; };
    mdDoc = x: x;
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalAttrs = c: as: if c then as else { };
    optionalString = c: s: if c then s else "";
    concatStringsSep = b.concatStringsSep;
    concatMapStringsSep = sep: f: xs: b.concatStringsSep sep (map f xs);
    concatMapStrings = f: xs: b.concatStringsSep "" (map f xs);
    concatMap = b.concatMap;
    concatLists = b.concatLists;
    filter = b.filter;
    elem = b.elem;
    all = b.all;
    any = b.any;
    attrNames = b.attrNames;
    attrValues = b.attrValues;
    mapAttrs = b.mapAttrs;
    mapAttrsToList = f: as: map (n: f n as.${n}) (b.attrNames as);
    genAttrs = names: f: b.listToAttrs (map (n: { name = n; value = f n; }) names);
    filterAttrs = pred: as: b.listToAttrs (b.concatMap (n: if pred n as.${n} then [ { name = n; value = as.${n}; } ] else [ ]) (b.attrNames as));
    hasPrefix = p: s: b.substring 0 (b.stringLength p) s == p;
    hasSuffix = p: s:
      let ls = b.stringLength s; lp = b.stringLength p; in
      ls >= lp && b.substring (ls - lp) lp s == p;
    hasInfix = infix: s: b.length (b.split (b.replaceStrings
      [ "\\" "." "[" "]" "(" ")" "*" "+" "?" "{" "}" "|" "^" "$" ]
      [ "\\\\" "\\." "\\[" "\\]" "\\(" "\\)" "\\*" "\\+" "\\?" "\\{" "\\}" "\\|" "\\^" "\\$" ]
      infix) s) > 1;
    removePrefix = p: s:
      if b.substring 0 (b.stringLength p) s == p
      then b.substring (b.stringLength p) (b.stringLength s) s else s;
    unique = unique;
    toUpper = b.replaceStrings
      (b.genList (i: b.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26)
      (b.genList (i: b.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26);
    escapeShellArg = s: "'" + b.replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";
    boolToString = v: if v then "true" else "false";
    getExe = pkg: "${pkg}/bin/${pkg.meta.mainProgram or pkg.pname or pkg.name}";
    recursiveUpdate = a: c: b.zipAttrsWith (n: vs:
      if b.length vs == 2 && b.all isPlainAttrs vs then lib.recursiveUpdate (b.head vs) (b.elemAt vs 1)
      else b.elemAt vs (b.length vs - 1)) [ a c ];
    versionAtLeast = v1: v2: b.compareVersions v1 v2 >= 0;
    fakeHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
  };
in
lib
