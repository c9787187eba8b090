"""The CLI: help lists every command without importing torch; generate prints a completion or a one-line error."""

import subprocess
import sys

from corral.cli.main import COMMANDS, main


def corral(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corral.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_command_without_importing_torch_or_a_web_framework():
    code = "import sys; from corral.cli.main import main; main(['--help'])"
    result = subprocess.run([sys.executable, "-c", code + "\n"], capture_output=True, text=True, timeout=60)
    for name in COMMANDS:
        assert name in result.stdout
    # Every command's parser is built at start: `corral plan` and `corral --help` pay for what they import.
    probe = ("import sys; import corral.cli.main as m; m.build_parser(); "
             "print(sorted({'torch', 'starlette', 'fastapi', 'uvicorn'} & {n.split('.')[0] for n in sys.modules}))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"


def test_generate_prints_greedy_completion():
    result = corral("generate", "The capital of France is", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_generate_bad_input_is_a_one_line_error(capsys):
    # In this process: the error path is main()'s, and a subprocess per case would cost a torch import each.
    assert main(["generate", "hi", "--model", "/nonexistent/model.gguf"]) == 1
    stderr = capsys.readouterr().err
    assert stderr.strip().count("\n") == 0 and "error" in stderr
    assert main(["generate", "hi", "--temperature", "-2"]) == 1
    assert "temperature" in capsys.readouterr().err
