"""The `quiver` command as a person meets it: --help shows what a user types, with examples that
work, within 80 columns; `quiver optimize`'s table is whole when piped to a log and in an
80-column terminal (a real pseudo-terminal), its numbers those the manifest records.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from quiver.cli import build_parser
from quiver.serving import build_example, read_version

# An enum shown as Python prints it (`Metric.TOP1`) where a user would type its value (`top1`).
ENUM_REPR = re.compile(r"\b[A-Z][a-z]+\.[A-Z][A-Z0-9_]+\b")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HEADERS = ("variant", "precision", "pool", "KiB", "cosine", "p5", "min", "drop", "p50 ms", "p99 ms", "rows/s", "published")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001 - argparse has no public way
    return {"quiver": parser, **{f"quiver {name}": command for name, command in sub.choices.items()}}


def _examples(help_text: str) -> list[str]:
    """The example commands of a --help, continuation lines joined and comments dropped."""
    commands: list[str] = []
    continued = False
    for line in help_text.split("\nexamples:\n", 1)[1].splitlines():
        text = line.split("#", 1)[0].strip()
        if continued:
            commands[-1] += " " + text.removesuffix("\\").strip()
        elif text:
            commands.append(text.removesuffix("\\").strip())
        continued = text.endswith("\\")
    return commands


@pytest.mark.parametrize("name", list(_commands()))
def test_every_choice_is_what_a_user_types(name: str) -> None:
    command = _commands()[name]
    help_text = command.format_help()
    assert not ENUM_REPR.findall(help_text)
    for action in command._actions:  # noqa: SLF001
        if action.choices is None or isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            continue
        for choice in action.choices:
            typed = str(choice)
            assert typed in help_text
            value = action.type(typed) if callable(action.type) else typed
            assert value in action.choices, f"{action.option_strings}: typing {typed!r} is refused"


@pytest.mark.parametrize("name", list(_commands()))
def test_every_command_has_examples_that_parse(name: str) -> None:
    examples = _examples(_commands()[name].format_help())
    assert examples, f"{name} --help shows no example"
    for example in examples:
        argv = shlex.split(example)
        assert argv[0] == "quiver"
        if name != "quiver":
            assert argv[1] == name.split()[1], example
        args = build_parser().parse_args(argv[1:])  # exits (status 2) on anything the parser refuses
        assert args.command == argv[1]


@pytest.mark.parametrize("name", list(_commands()))
def test_help_fits_80_columns(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    too_wide = [line for line in _commands()[name].format_help().splitlines() if len(line) > 80]
    assert too_wide == []


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("optimize")
    rng = np.random.default_rng(5)
    np.savez(tmp / "eval.npz", input=rng.standard_normal((200, 64)).astype(np.float32))
    model = build_example(tmp / "example.onnx")
    # The tightest limit refuses int8: its row's "published" cell carries the reason.
    args = ["--name", "example", "--store", str(tmp / "store"), "--eval", str(tmp / "eval.npz"), "--metric", "cosine",
            "--variants", "fp32,fp16,int8-dynamic", "--max-accuracy-drop", "0.000001", "--bench-seconds", "0.05"]
    return tmp, [sys.executable, "-m", "quiver", "optimize", str(model), *args]


def _table_rows(text: str) -> dict[str, list[str]]:
    """{variant: cells} of the table's rows (of both tables, when split), whatever box characters separate the cells."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] in ("fp32", "fp16", "int8-dynamic"):
            rows.setdefault(cells[0], []).extend(cells[1:])
    return rows


def _check_numbers(text: str, store: Path, version: str) -> None:
    manifest = read_version(store / "example" / version).manifest
    measured = {v.name: v.metrics for v in manifest.variants}
    rows = _table_rows(text)
    for variant in ("fp32", "fp16"):
        assert f"{measured[variant].accuracy:.4f}" in rows[variant], rows[variant]
    assert "int8-dynamic" not in measured
    assert "…" not in text


def test_optimize_table_is_whole_when_piped(model: tuple[Path, list[str]]) -> None:
    tmp, command = model
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run([*command, "--version", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "variant" in line)
    assert [c.strip() for c in re.split(r"[│┃]", header) if c.strip()] == list(HEADERS)
    _check_numbers(done.stdout, tmp / "store", "1")
    assert "no: mean drop" in done.stdout  # the reason, in full, on int8's one line
    assert "published ['fp32', 'fp16'] to" in done.stdout


def test_optimize_table_fits_an_80_column_terminal(model: tuple[Path, list[str]]) -> None:
    tmp, command = model
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen([*command, "--version", "2"], stdout=terminal, stderr=subprocess.DEVNULL, env=env)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(300) == 0
    text = ANSI.sub("", output.decode()).replace("\r", "")
    # The table's lines (the last line, a path, may be as long as the path is).
    assert max(len(line) for line in text.splitlines() if not line.startswith("published [")) <= 80
    for header in HEADERS:
        assert re.search(rf"(^|[│┃ ]){re.escape(header)}([│┃ ]|$)", text, re.M), header
    _check_numbers(text, tmp / "store", "2")
