"""Shell completion for hubctl, generated from its own argument parser so it
never drifts from the commands. Connector and session ids complete from the
running daemon when it answers (`hubctl --json status`)."""

from __future__ import annotations

import argparse


def _commands(parser: argparse.ArgumentParser) -> dict[str, dict]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, p in sub.choices.items():
        opts, positionals = [], []
        for a in p._actions:
            if a.option_strings:
                opts += [o for o in a.option_strings if o.startswith("--")]
            elif a.dest != "help":
                positionals.append(list(a.choices) if a.choices else a.dest)
        out[name] = {"options": opts, "positionals": positionals}
    return out


def _globals(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--")]


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    cmds = _commands(parser)
    if shell == "bash":
        return _bash(parser, cmds)
    return _zsh(parser, cmds)


def _bash(parser, cmds) -> str:
    cases = []
    for name, c in sorted(cmds.items()):
        first = c["positionals"][0] if c["positionals"] else None
        words = " ".join(first) if isinstance(first, list) else ""
        cases.append(f'        {name}) opts="{" ".join(c["options"])}"; first="{words}" ;;')
    return f"""# bash completion for hubctl — eval "$(hubctl completion bash)"
_hubctl_ids() {{
    hubctl --json status 2>/dev/null | python3 -c 'import json,sys
d=json.load(sys.stdin)
print(" ".join([c["connector"] for c in d.get("connectors",[])] + [c["session"] for c in d.get("connectors",[]) if c.get("session")]))' 2>/dev/null
}}
_hubctl() {{
    local cur cmd i opts first
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    cmd=""
    for ((i=1; i<COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --socket) ((i++)) ;;
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [ -z "$cmd" ]; then
        COMPREPLY=( $(compgen -W "{' '.join(sorted(cmds))} {' '.join(_globals(parser))}" -- "$cur") )
        return
    fi
    case "$cmd" in
{chr(10).join(cases)}
        *) opts=""; first="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    elif [ $((COMP_CWORD - i)) -eq 1 ] && [ -n "$first" ]; then
        COMPREPLY=( $(compgen -W "$first" -- "$cur") )
    else
        COMPREPLY=( $(compgen -W "$(_hubctl_ids)" -- "$cur") )
    fi
}}
complete -F _hubctl hubctl
"""


def _zsh(parser, cmds) -> str:
    lines = []
    for name, c in sorted(cmds.items()):
        first = c["positionals"][0] if c["positionals"] else None
        words = " ".join(first) if isinstance(first, list) else ""
        lines.append(f'    {name}) compadd -- {" ".join(c["options"])} {words} ;;')
    return f"""#compdef hubctl
# zsh completion for hubctl — eval "$(hubctl completion zsh)"
_hubctl() {{
  local -a commands
  commands=({' '.join(sorted(cmds))})
  if (( CURRENT == 2 )); then
    compadd -- $commands {' '.join(_globals(parser))}
    return
  fi
  case $words[2] in
{chr(10).join(lines)}
  esac
  compadd -- $(hubctl --json status 2>/dev/null | python3 -c 'import json,sys
d=json.load(sys.stdin)
print(" ".join([c["connector"] for c in d.get("connectors",[])]))' 2>/dev/null)
}}
compdef _hubctl hubctl
"""
