"""A throwaway Redis server for tests and benches: Debian's `redis-server` on 127.0.0.1, nothing saved to disk.

`stop()` and `start()` again on the same port simulate Redis going away and coming back (empty: no persistence).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis


class RedisServer:
    def __init__(self, binary: str, port: int) -> None:
        self.binary, self.port = binary, port
        self.dir = Path(tempfile.mkdtemp(prefix="pearl-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find() -> str | None:
        return shutil.which("redis-server")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def start(self, timeout: float = 20.0) -> RedisServer:
        # --save '' --appendonly no: nothing on disk, a restart comes back empty.
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        with (self.dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen([*args, "--dir", str(self.dir)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer in {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def log_tail(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
