"""Shell completion for hubctl (issue 7 item 8): generated from the parser."""

import shutil
import subprocess
import sys

import pytest

from edge.hubctl import build_parser
from edge.hubctl_completion import script


def test_bash_script_is_valid_and_completes_commands_and_choices(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    path = tmp_path / "hubctl.bash"
    path.write_text(script(build_parser(), "bash"))
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0

    def complete(*words: str) -> list[str]:
        words_list = " ".join(f"'{w}'" for w in ("hubctl", *words))
        cmd = (f"source {path}; COMP_WORDS=({words_list}); COMP_CWORD={len(words)}; _hubctl; "
               'printf "%s\\n" "${COMPREPLY[@]}"')
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=20)
        return out.stdout.split()

    assert {"status", "sessions", "connector", "watch", "outbox"} <= set(complete(""))
    assert complete("conn") == ["connector"]
    assert set(complete("connector", "")) == {"available", "unavailable", "unlock"}
    assert "--reason" in complete("connector", "unlock", "C1", "--r")
    assert "--since" in complete("sessions", "--s")


def test_zsh_script_names_every_command():
    text = script(build_parser(), "zsh")
    assert text.startswith("#compdef hubctl")
    for name in ("status", "sessions", "connector", "session", "outbox", "resync", "config", "watch"):
        assert name in text


def test_every_command_has_help_text():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for choice in sub._choices_actions:
        assert choice.help and len(choice.help) > 10, choice.dest
    out = subprocess.run([sys.executable, "-m", "edge.hubctl", "--help"], capture_output=True, text=True)
    assert "Exit status" in out.stdout
    for name, sp in sub.choices.items():
        text = sp.format_help()
        assert sp.description and "exit status:" in text, name
    for name in ("status", "sessions", "connector", "session", "resync", "config", "terminal"):
        assert "examples:\n  hubctl" in sub.choices[name].format_help(), name
    # a part's own epilog (its examples and exit codes) is kept, not replaced
    assert "3 refused by the terminal" in sub.choices["terminal"].format_help()
