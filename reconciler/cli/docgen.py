"""Shell completion (bash, zsh, fish) and the man page, generated from the
argparse tree of `compliance-agent` (reconciler.cli.main.build_parser), so
they cannot drift from the parser. No dependency beyond the standard library:
the Nix package runs this at build time.

    python -m reconciler.cli.docgen completion bash|zsh|fish   > FILE
    python -m reconciler.cli.docgen man                        > compliance-agent.1
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

PROG = "compliance-agent"
FN = "_compliance_agent"
# Values completed as file names (the rest get no completion but their choices).
FILE_METAVARS = {"FILE", "PATH", "FILE.tar.gz"}
FILE_DESTS = {"config", "out", "file", "paths", "socket", "state_directory", "checkpoint"}


@dataclass
class Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str]
    is_file: bool


@dataclass
class Node:
    path: tuple[str, ...]
    help: str
    usage: str
    description: str
    options: list[Option] = field(default_factory=list)
    positionals: list[Option] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)


def _option(a: argparse.Action) -> Option:
    metavar = a.metavar if isinstance(a.metavar, str) else ""
    is_file = a.choices is None and (metavar in FILE_METAVARS or a.dest in FILE_DESTS)
    return Option(list(a.option_strings), " ".join((a.help or "").split()),
                  a.nargs != 0, [str(c) for c in a.choices or []], is_file)


def tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = "") -> Node:
    node = Node(path, help, parser.format_usage().strip().removeprefix("usage: "),
                " ".join((parser.description or "").split()))
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in a._choices_actions}
            for name, child in a.choices.items():
                node.children[name] = tree(child, (*path, name), helps.get(name, ""))
        elif a.option_strings:
            node.options.append(_option(a))
        else:
            node.positionals.append(_option(a))
    return node


def nodes(node: Node) -> list[Node]:
    return [node, *(n for c in node.children.values() for n in nodes(c))]


def _key(path: tuple[str, ...]) -> str:
    return " ".join(path)


# -- bash ------------------------------------------------------------------------------
def bash(root: Node) -> str:
    steps = [f'            "{_key(n.path)}|{name}") path="{_key(c.path)}" ;;'
             for n in nodes(root) for name, c in n.children.items()]
    cases = []
    for n in nodes(root):
        words = [f for o in n.options for f in o.flags] + list(n.children)
        values = []
        for o in n.options:
            if not o.takes_value:
                continue
            flags = "|".join(o.flags)
            if o.choices:
                values.append(f'                {flags}) COMPREPLY=($(compgen -W "'
                              f'{" ".join(o.choices)}" -- "$cur")); return ;;')
            elif o.is_file:
                values.append(f'                {flags}) COMPREPLY=($(compgen -f -- "$cur")); '
                              'return ;;')
            else:
                values.append(f"                {flags}) return ;;")
        files = any(p.is_file for p in n.positionals)
        cases.append(f'        "{_key(n.path)}")\n            case "$prev" in\n'
                     + "\n".join(values) + ("\n" if values else "")
                     + "            esac\n"
                     + f'            words="{" ".join(words)}"; files={int(files)} ;;')
    return f"""# bash completion for {PROG} (generated from its parser; do not edit)
{FN}() {{
    local cur prev path="" words="" files=0 i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "$path|${{COMP_WORDS[i]}}" in
{chr(10).join(steps)}
        esac
    done
    case "$path" in
{chr(10).join(cases)}
    esac
    if [[ "$cur" != -* && "$files" == 1 ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
}}
complete -o default -F {FN} {PROG}
"""


# -- zsh -------------------------------------------------------------------------------
def _zq(text: str) -> str:
    """Text inside a single-quoted _arguments spec."""
    text = text.replace("\\", "\\\\").replace("'", "'\\''")
    for ch in "[]:":
        text = text.replace(ch, "\\" + ch)
    return text


def _zdesc(text: str) -> str:
    """A description inside `((name\\:"description" ...))`, itself in a single-quoted spec."""
    for ch in "'\"\\$`":
        text = text.replace(ch, "")
    return '"' + text.replace(":", "\\:") + '"'


def _zspec(o: Option) -> str:
    action = ""
    if o.takes_value:
        action = (f":value:({' '.join(o.choices)})" if o.choices else
                  ":file:_files" if o.is_file else ":value: ")
    flags = o.flags
    exclusive = f"({' '.join(flags)})" if len(flags) > 1 else ""
    names = "{" + ",".join(flags) + "}" if len(flags) > 1 else flags[0]
    return f"'{exclusive}'{names}'[{_zq(o.help)}]{action}'"


def zsh(root: Node) -> str:
    steps = [f'      "{_key(n.path)}|{name}") path="{_key(c.path)}"; start=$i ;;'
             for n in nodes(root) for name, c in n.children.items()]
    cases = []
    for n in nodes(root):
        specs = [_zspec(o) for o in n.options]
        if n.children:
            subs = " ".join(f"{name}\\:{_zdesc(c.help)}" for name, c in n.children.items())
            specs.append(f"'1:command:(({subs}))'")
        elif any(p.is_file for p in n.positionals):
            specs.append("'*:file:_files'")
        elif n.positionals:
            specs.append("'*: :'")
        cases.append(f'    "{_key(n.path)}") _arguments -s \\\n      '
                     + " \\\n      ".join(specs) + " ;;")
    return f"""#compdef {PROG}
# zsh completion for {PROG} (generated from its parser; do not edit)
{FN}() {{
  local path="" start=1 i
  for ((i = 2; i < CURRENT; i++)); do
    case "$path|${{words[i]}}" in
{chr(10).join(steps)}
    esac
  done
  # complete as if the innermost subcommand were the command itself
  words=("${{(@)words[start,-1]}}")
  (( CURRENT -= start - 1 ))
  case "$path" in
{chr(10).join(cases)}
  esac
}}
{FN} "$@"
"""


# -- fish ------------------------------------------------------------------------------
def _fq(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(root: Node) -> str:
    steps = [f"            case {_fq(_key(n.path) + '|' + name)}\n"
             f"                set path {_fq(_key(c.path))}"
             for n in nodes(root) for name, c in n.children.items()]
    lines = [f"# fish completion for {PROG} (generated from its parser; do not edit)",
             f"function __{FN}_path",
             "    set -l path ''",
             "    for word in (commandline -opc)[2..-1]",
             '        switch "$path|$word"', *steps, "        end", "    end",
             "    echo $path", "end",
             f"function __{FN}_is", f'    test (__{FN}_path) = "$argv[1]"', "end",
             f"complete -c {PROG} -f"]
    for n in nodes(root):
        cond = f"-n {_fq(f'__{FN}_is {_fq(_key(n.path))}')}"
        for name, c in n.children.items():
            lines.append(f"complete -c {PROG} {cond} -a {name} -d {_fq(c.help)}")
        for o in n.options:
            flags = " ".join(f"-s {f[1:]}" if len(f) == 2 else f"-l {f[2:]}" for f in o.flags)
            value = ""
            if o.takes_value:
                value = (f" -xa {_fq(' '.join(o.choices))}" if o.choices else
                         " -rF" if o.is_file else " -x")
            lines.append(f"complete -c {PROG} {cond} {flags}{value} -d {_fq(o.help)}")
        if any(p.is_file for p in n.positionals):
            lines.append(f"complete -c {PROG} {cond} -F")
    return "\n".join(lines) + "\n"


# -- man page ----------------------------------------------------------------------------
def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def man(root: Node, version: str, date: str) -> str:
    out = [f'.TH COMPLIANCE\\-AGENT 1 "{date}" "{PROG} {version}" "User Commands"',
           ".SH NAME", f"{PROG} \\- {_roff(root.description)}",
           ".SH SYNOPSIS", f".B {PROG}",
           "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
           ".SH DESCRIPTION",
           _roff("Every command reads the agent config from --config FILE, else "
                 "$COMPLIANCE_AGENT_CONFIG, else /etc/compliance-agent/config.json (the NixOS "
                 "module writes it). Commands that print take -o text|json (status and "
                 "describe also -o wide: every column, nothing wrapped); text is for people "
                 "and may change, json is for scripts. Colour is used only on a terminal and "
                 "never when NO_COLOR is set."),
           ".SH COMMANDS"]
    for n in nodes(root)[1:]:
        out += [f".SS {_roff(_key((PROG, *n.path)))}", _roff(n.help or n.description)]
        out += [".PP", ".nf", _roff(n.usage), ".fi"]
        for o in [*n.positionals, *n.options]:
            if not o.help:
                continue
            name = ", ".join(f"\\fB{_roff(f)}\\fR" for f in o.flags) or "\\fIargument\\fR"
            if o.choices:
                name += " {" + ",".join(_roff(c) for c in o.choices) + "}"
            out += [".TP", name, _roff(o.help)]
    out += [".SH ENVIRONMENT",
            ".TP", "\\fBCOMPLIANCE_AGENT_CONFIG\\fR",
            "The config file when \\-\\-config is not given.",
            ".TP", "\\fBNO_COLOR\\fR", "When set (to anything), no colour in any output.",
            ".SH FILES", ".TP", "\\fI/etc/compliance\\-agent/config.json\\fR",
            "The agent config, written by the NixOS module.",
            ".SH EXIT STATUS",
            "0 ok; 1 drift remains, an action was deferred, or evidence has problems; "
            "2 error (bad config, unreadable state); 3 order not admitted (order verify).",
            ".SH SEE ALSO", "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from reconciler.cli.common import package_version
    from reconciler.cli.main import build_parser

    ap = argparse.ArgumentParser(prog="python -m reconciler.cli.docgen",
                                 description="completion scripts and the man page")
    sub = ap.add_subparsers(dest="what", required=True)
    comp = sub.add_parser("completion", help="a shell completion script on stdout")
    comp.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell")
    sub.add_parser("man", help="the man page (roff) on stdout")
    args = ap.parse_args(argv)
    root = tree(build_parser())
    if args.what == "man":
        # Reproducible builds (Nix sets SOURCE_DATE_EPOCH): the date is the source's.
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
        sys.stdout.write(man(root, package_version(), when.strftime("%Y-%m-%d")))
    else:
        sys.stdout.write({"bash": bash, "zsh": zsh, "fish": fish}[args.shell](root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
