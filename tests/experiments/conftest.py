"""Fixtures for the dataset-layer tests: tiny IDX datasets and a local HTTP file server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from torchkron.experiments.data.idx import write_idx
from torchkron.experiments.data.mnist import FILES

N_TRAIN, N_TEST, ROWS, COLS = 20, 10, 4, 4

Arrays = dict[str, npt.NDArray[np.uint8]]


def tiny_arrays() -> Arrays:
    """A deterministic 20/10-sample dataset of 4x4 images with labels 0..9."""
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (N_TRAIN, ROWS, COLS), dtype=np.uint8),
        "train_labels": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, ROWS, COLS), dtype=np.uint8),
        "test_labels": (np.arange(N_TEST)[::-1] % 10).astype(np.uint8),
    }


MakeDataset = Callable[..., Path]


@pytest.fixture
def arrays() -> Arrays:
    """The arrays of the tiny dataset, by role."""
    return tiny_arrays()


@pytest.fixture
def make_dataset(tmp_path: Path) -> MakeDataset:
    """Factory: write the tiny dataset (or given replacements) into a folder.

    ``make_dataset(folder=None, *, gz=True, skip=(), **overrides)`` writes each role's
    array (``overrides`` replace the default ones) as ``name.gz`` or plain ``name`` and
    returns the folder.
    """

    def make(
        folder: Path | None = None,
        *,
        gz: bool = True,
        skip: tuple[str, ...] = (),
        **overrides: npt.NDArray[np.uint8],
    ) -> Path:
        folder = tmp_path / "data" if folder is None else folder
        folder.mkdir(parents=True, exist_ok=True)
        data = tiny_arrays() | overrides
        for role, name in FILES.items():
            if role not in skip:
                write_idx(folder / (f"{name}.gz" if gz else name), data[role])
        return folder

    return make


@pytest.fixture
def gz_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The tiny dataset's four ``.gz`` files as bytes, keyed by file name."""
    folder = tmp_path_factory.mktemp("served")
    data = tiny_arrays()
    out: dict[str, bytes] = {}
    for role, name in FILES.items():
        path = folder / f"{name}.gz"
        write_idx(path, data[role])
        out[path.name] = path.read_bytes()
    return out


@dataclass
class Route:
    """What the test server answers for one path."""

    body: bytes = b""
    status: int = 200
    # Content-Length to announce; a larger value than len(body) simulates a cut transfer.
    declared_length: int | None = None


@dataclass
class FileServer:
    """A local HTTP server; tests fill ``routes`` (path -> Route) before requesting."""

    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def mirror(self, prefix: str) -> str:
        """Base URL of a mirror served under ``/prefix/``."""
        return f"{self.base}/{prefix}/"

    def route(
        self, path: str, body: bytes, *, status: int = 200, declared_length: int | None = None
    ) -> None:
        """Answer GET ``path`` with ``body`` (and optionally a false Content-Length)."""
        self.routes[path] = Route(body, status, declared_length)

    def serve(self, prefix: str, files: Mapping[str, bytes]) -> str:
        """Serve ``files`` (name -> bytes) under ``/prefix/``; return the mirror URL."""
        for name, body in files.items():
            self.route(f"/{prefix}/{name}", body)
        return self.mirror(prefix)


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) serving ``FileServer.routes``."""
    # A proxy configured in the environment must not intercept requests to localhost.
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    state = FileServer(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            self.send_response(route.status)
            length = len(route.body) if route.declared_length is None else route.declared_length
            self.send_header("Content-Length", str(length))
            self.end_headers()
            # HTTP/1.0: the connection closes after this, so a short body ends the stream.
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
