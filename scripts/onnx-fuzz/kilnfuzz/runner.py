"""A client of `kiln-onnx-runner` (interface A): one long-lived process per
worker, one JSON request line in, one JSON answer line out.

The answer is awaited with a per-request timeout (`select` on the pipe). A
runner that exits or closes its stdout mid-request is recorded as a `crash`,
one that does not answer in time as a `hang` (it is killed); either way the
next request starts a fresh process.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import time


class Runner:
    """A restartable `kiln-onnx-runner` process."""

    def __init__(self, binary: str, stderr_path: str, timeout_s: float = 60.0):
        self.binary = binary
        self.stderr_path = stderr_path
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._buf = b""

    def _start(self) -> None:
        # stderr goes to a file (a pipe nobody reads could fill and stall it).
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [self.binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, bufsize=0)
        self._buf = b""

    def _kill(self) -> str:
        """Kills the process (if alive) and returns the tail of its stderr."""
        p, self.proc = self.proc, None
        if p is None:
            return ""
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (p.stdin, p.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.restarts += 1
        try:
            with open(self.stderr_path, "rb") as f:
                err = f.read()[-4000:]
        except OSError:
            err = b""
        tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
        code = p.returncode
        return f"exit status {code}" + (": " + " | ".join(tail) if tail else "")

    def close(self) -> None:
        """Ends the process: closes its stdin and waits for it."""
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            p.stdin.close()
            p.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            p.kill()
            p.wait()

    def request(self, req: dict) -> dict:
        """Sends `req`, returns the runner's answer; on death or timeout a
        synthetic answer with status `crash` or `hang` and the process restarts
        on the next call."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._kill()
            self._start()
        line = (json.dumps(req) + "\n").encode()
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"id": req.get("id"), "status": "crash", "error": self._kill()}
        deadline = time.monotonic() + self.timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                why = self._kill()
                return {"id": req.get("id"), "status": "hang",
                        "error": f"no answer in {self.timeout_s:g} s ({why})"}
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return {"id": req.get("id"), "status": "crash", "error": self._kill()}
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\n", 1)
        try:
            ans = json.loads(raw)
        except json.JSONDecodeError:
            return {"id": req.get("id"), "status": "crash",
                    "error": f"unreadable answer {raw[:200]!r}"}
        if ans.get("id") != req.get("id"):
            return {"id": req.get("id"), "status": "crash",
                    "error": f"answer for id {ans.get('id')!r}, expected {req.get('id')!r}"}
        return ans
