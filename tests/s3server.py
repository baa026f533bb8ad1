"""A real S3-compatible HTTP server on 127.0.0.1 for the tests: moto in server mode, started
as a separate process (the mount daemon talks to it over HTTP like to any bucket)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env  # extra environment, e.g. INITIAL_NO_AUTH_ACTION_COUNT=0: check keys
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> S3Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answered (with authentication on, a 403)
            except OSError:
                time.sleep(0.05)  # polling for readiness, with a deadline
        self.stop()  # never leave a server behind
        raise RuntimeError("moto server did not answer within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def use_test_credentials() -> None:
    """moto accepts any credentials; make sure the AWS chain finds some (and no real ones)."""
    os.environ["AWS_ACCESS_KEY_ID"] = "test"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "test"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ.pop("AWS_PROFILE", None)
