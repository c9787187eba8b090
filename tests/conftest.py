"""The suite's policy on skips (``--require-kernels``, ``--allowed-skips``; make test sets both) and the shared
fixtures: the default model (found through its installed package) and engines over it, a tiny
random Llama with the default model's tokenizer, saved as an HF directory (something to quantize), and
`corral serve` as a subprocess on a free port."""

from __future__ import annotations

import fnmatch
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

from corral.loader import save_hf_dir
from corral.loader.default_model import default_model_path
from corral.loader.names import expected_shapes
from corral.models.spec import ModelConfig
from corral.text.tokenizer import Tokenizer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-kernels", action="store_true",
                     help="fail at start-up if the C++ kernels are missing or stale (their tests would skip)")
    parser.addoption("--allowed-skips", metavar="FILE",
                     help="fail the run if a test skips without a matching entry in this file")


def pytest_configure(config: pytest.Config) -> None:
    # A calibration this host's user made (`corral plan calibrate`) would change every `corral plan` figure the
    # tests check, in this process and in the commands they run: they read none, and write none to $HOME.
    os.environ["CORRAL_CALIBRATION"] = str(Path(config.rootpath) / ".pytest_cache" / "no-calibration.json")
    if config.getoption("--require-kernels"):
        from corral.kernels import cpu_extension

        problem = cpu_extension.build_problem()
        if problem is not None:
            raise pytest.UsageError(f"--require-kernels: {problem}; run `make install` (or `python -m corral.kernels.build`)")
    allowed = config.getoption("--allowed-skips")
    if allowed:
        config.pluginmanager.register(SkipPolicy(Path(allowed)), "corral-skip-policy")


class SkipPolicy:
    """Collects every skip of the run and fails it when one matches no line of the allow-list: lines of
    ``PATTERN -- WHY``, an fnmatch pattern over node ids and the reason that skip is acceptable (required);
    lines starting with ``#`` are comments."""

    def __init__(self, path: Path):
        self.patterns: list[str] = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pattern, _, why = (part.strip() for part in line.partition(" -- "))
            if not pattern or not why:
                raise pytest.UsageError(f"{path}:{number}: expected `PATTERN -- WHY`, got {line!r}")
            self.patterns.append(pattern)
        self.unexpected: list[str] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            if not any(fnmatch.fnmatchcase(report.nodeid, pattern) for pattern in self.patterns):
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
                self.unexpected.append(f"{report.nodeid}: {reason}")

    pytest_runtest_logreport = _record
    pytest_collectreport = _record

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.unexpected:
            terminalreporter.section("skips not in the allow-list (--allowed-skips)", red=True)
            for line in self.unexpected:
                terminalreporter.line(line)


@pytest.fixture(scope="session")
def default_model() -> str:
    return default_model_path()


@pytest.fixture(scope="session")
def default_llm():
    """One exact fp32 engine over the default model (no int8), shared by tests that do not change its
    settings; the parity tests compare it with HF transformers."""
    from corral import LLM

    return LLM(dtype="float32", quantization="none", max_model_len=1024, kv_cache_memory=128 * 1024**2)


@pytest.fixture(scope="session")
def hf_default_model(default_model):
    """HF transformers' model of the default GGUF (dequantized by transformers), fp32, in eval mode: the reference
    of the parity tests. Loaded once per session: it takes about 20 s, and three test modules read it."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(default_model), gguf_file=os.path.basename(default_model), dtype=torch.float32
    )
    return model.eval()


TINY = ModelConfig(
    architecture="llama",
    vocab_size=49152,  # the default model's tokenizer, so calibration text tokenizes as it would
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_ids=(2,),
)


def tiny_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gaussian weights with a few loud input channels per linear, as trained models have (what AWQ exploits)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        if "norm" in name:
            weights[name] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            weights[name] = torch.randn(shape, generator=generator) * shape[-1] ** -0.5
    for i in range(config.num_hidden_layers):
        weights[f"model.layers.{i}.input_layernorm.weight"][:4] *= 8
        weights[f"model.layers.{i}.post_attention_layernorm.weight"][:4] *= 8
    return weights


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-float")
    save_hf_dir(path, TINY, tiny_weights(TINY))
    Tokenizer.from_gguf(default_model_path()).save_pretrained(str(path))
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcesses:
    """``start(*args)`` runs ``corral serve *args`` on a free 127.0.0.1 port and returns its base URL once
    /health answers (failing with the server's stderr if it exits first); ``stop_all`` ends them."""

    def __init__(self) -> None:
        self.servers: list[subprocess.Popen] = []

    def start(self, *args: str) -> str:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "serve", *args, "--port", str(port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.servers.append(server)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                time.sleep(0.2)
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        raise AssertionError(f"corral serve {' '.join(args)} did not become healthy")

    def stop_all(self) -> None:
        for server in self.servers:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def corral_serve() -> Iterator[Callable[..., str]]:
    """``corral_serve(*args)``: ServeProcesses.start, stopped after the test."""
    processes = ServeProcesses()
    yield processes.start
    processes.stop_all()


@pytest.fixture(scope="module")
def corral_serve_module() -> Iterator[Callable[..., str]]:
    """The same, shared by a module's tests and stopped after the last of them."""
    processes = ServeProcesses()
    yield processes.start
    processes.stop_all()
