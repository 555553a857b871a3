"""One logger, configured by the CLI only (issue 22.5): the library logs to `xlsr_edge.*` and installs no handler;
the CLI shows the messages as they are on stderr, `--quiet` keeps warnings, `--verbose` adds debug lines."""

from __future__ import annotations

import json
import logging
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from xlsr_edge.cli import cli_logging, main
from xlsr_edge.lm.build import ENV_KENLM_BIN
from xlsr_edge.outputs import MARKER

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def corpus(tmp_path, monkeypatch) -> Path:
    """A corpus and fake KenLM tools (lmplz writes a one-line 'ARPA file')."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name, body in (("lmplz", "cat >/dev/null; printf '\\\\data\\\\\\n'"), ("build_binary", "exit 0")):
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755 | stat.S_IXUSR)
    monkeypatch.setenv(ENV_KENLM_BIN, str(tools))
    path = tmp_path / "corpus.txt"
    path.write_text("bu kitap güzel\no kitap\n", encoding="utf-8")
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftover(target: Path) -> Path:
    """A temp folder of a killed run on `target` (what the next run removes, with a line)."""
    pid = dead_pid()
    folder = target.with_name(f".{target.name}.xlsr-tmp-{pid}")
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "tool": "xlsr-edge"}))
    return folder


def test_progress_lines_by_default_none_with_quiet_warnings_always(corpus, tmp_path, capfd):
    assert main(["lm", "build", str(corpus), "-o", str(tmp_path / "a.arpa")]) == 0
    err = capfd.readouterr().err.splitlines()
    assert err and all(line.startswith("lm build [") for line in err), err
    assert "2 lines, 5 words (4 distinct)" in "\n".join(err)

    for i, argv in enumerate((["-q", "lm", "build"], ["lm", "build", "--quiet"])):  # before or after
        target = tmp_path / f"quiet{i}.arpa"
        left = leftover(target)
        assert main([*argv, str(corpus), "-o", str(target)]) == 0
        err = capfd.readouterr().err.splitlines()
        assert err == [
            f"removed {left}: left behind by an interrupted run (process {left.name.rsplit('-', 1)[1]})"
        ]

    assert main(["lm", "build", str(corpus), "-o", str(tmp_path / "v.arpa"), "--verbose"]) == 0
    assert any(line.startswith("lm build [") for line in capfd.readouterr().err.splitlines())
    with pytest.raises(SystemExit):
        main(["-q", "-v", "lm", "build", str(corpus), "-o", str(tmp_path / "x.arpa")])


def test_the_cli_handler_is_only_there_while_a_command_runs(corpus, tmp_path, capsys):
    logger = logging.getLogger("xlsr_edge")
    before = (list(logger.handlers), logger.level, logger.propagate)
    assert main(["lm", "build", str(corpus), "-o", str(tmp_path / "a.arpa")]) == 0
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    capsys.readouterr()
    with cli_logging(logging.WARNING) as handler:
        assert logger.handlers[-1] is handler and logger.level == logging.WARNING
        logging.getLogger("xlsr_edge.x").info("hidden")
        logging.getLogger("xlsr_edge.x").warning("warning: shown")
    assert capsys.readouterr().err == "warning: shown\n"  # the message alone, on the stderr of the moment


def test_the_library_configures_no_logging(corpus, tmp_path):
    """Used as a library: no handler of ours; INFO progress is silent, warnings reach Python's last resort."""
    code = (
        "import logging, sys\n"
        "from xlsr_edge.lm import build_lm\n"
        "import xlsr_edge.runtime, xlsr_edge.decoders, xlsr_edge.cli\n"
        "assert not logging.getLogger('xlsr_edge').handlers and not logging.getLogger().handlers\n"
        f"build_lm({str(corpus)!r}, {str(tmp_path / 'lib.arpa')!r})\n"
        "logging.getLogger('xlsr_edge.test').warning('warning: a warning')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "warning: a warning\n"
    assert (tmp_path / "lib.arpa").is_file()
