"""Paired rounds: phases timed in turn, round after round (``peers.py``, ``compare3.py``), so
that the drifts of a shared machine cancel within a round; the processes that own one phase
each, and the statistics of the rounds."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

#: lines of the lockstep protocol on a phase process's stdout (anything else there is a log)
TAG = "@peers@ "


def orders(repeat: int, rounds: int, phases: list[str]) -> list[list[str]]:
    """The phase order of each round: it rotates from round to round and from repeat to
    repeat, so no phase always runs first (cold caches) or after the same neighbour."""
    out = []
    for k in range(rounds):
        j = (repeat + k) % len(phases)
        out.append(phases[j:] + phases[:j])
    return out


def thread_env(cfg: dict) -> dict:
    """The environment of a child process: ``cfg["threads"]`` for OpenMP and MKL."""
    return dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))


class PhaseProcess:
    """A fresh process that owns one phase (``script --_serve CFG``, e.g. ``peers.serve``),
    driven one command at a time: each command a line on its stdin, each reply a
    :data:`TAG`-ged JSON line on its stdout."""

    def __init__(self, script: Path, cfg: dict, phase: str) -> None:
        self.phase = phase
        self.log = tempfile.TemporaryFile("w+")
        cmd = [sys.executable, str(script), "--_serve", json.dumps({**cfg, "phase": phase})]
        self.proc = subprocess.Popen(cmd, env=thread_env(cfg), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)

    def reply(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.proc.wait()
        self.log.seek(0)
        raise RuntimeError(f"the {self.phase} process stopped: {self.log.read()[-2000:]}")

    def ask(self, cmd: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


def median_interval(ratios: list[float], resamples: int = 4000, seed: int = 0) -> list[float]:
    """A 95 % bootstrap interval of the median of paired ratios (percentile method, fixed
    seed): how far the median could move on a rerun of the same machine, i.e. whether a
    ratio above or below a target is more than the noise of a shared machine."""
    rng = random.Random(seed)
    k = len(ratios)
    meds = sorted(statistics.median(rng.choices(ratios, k=k)) for _ in range(resamples))
    return [meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]]


def wall(rd: dict, phase: str) -> float:
    """A phase's wall time in one round."""
    return rd[phase]["wall_s"]


def completed(runs: list[dict]) -> tuple[list[dict], list[dict], dict | None]:
    """``(the process sets that ran, all their rounds, None)``, or an error record when none did."""
    ok = [r for r in runs if "error" not in r]
    error = None if ok else {"error": runs[0]["error"] if runs else "no runs"}
    return ok, [rd for r in ok for rd in r["rounds"]], error
