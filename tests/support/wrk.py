"""Drive the service with wrk (a real load generator: the Python clients would be the bottleneck)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "wrk"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    non_2xx: int
    socket_errors: int
    duration_s: float

    @property
    def ok_per_second(self) -> float:
        return (self.requests - self.non_2xx) / self.duration_s


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def start_wrk(
    base_url: str, script: str, args: list[str], *, connections: int, seconds: float
) -> subprocess.Popen[str]:
    binary = wrk_binary()
    assert binary is not None
    return subprocess.Popen(
        [
            binary,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "60s",
            "-s",
            str(SCRIPTS / script),
            base_url,
            "--",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_wrk(process: subprocess.Popen[str]) -> WrkResult:
    output, errors = process.communicate(timeout=120)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {errors}")
    summary = json.loads(output.strip().splitlines()[-1])
    # The benchmark's scripts add latency percentiles: the tests need only the counts.
    return WrkResult(summary["requests"], summary["non_2xx"], summary["socket_errors"], summary["duration_s"])
