"""Seconds from starting a ``vae`` command at a terminal to its first line of output.

Each command runs under a pseudo-terminal (so it sees a terminal, as a user's shell does) and the
time of the first complete line on stdout or stderr is taken, then the command is left to finish.
A baseline checkout can be measured the same way with ``--pythonpath OLD_CHECKOUT``.

    .venv/bin/python benchmarks/first_line.py
    .venv/bin/python benchmarks/first_line.py --pythonpath /tmp/base --vae .venv/bin/vae
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (
    "--help",
    "--version",
    "train --data NO/SUCH/PATH",
    "score --model models:/vae-digits@champion --input NO/SUCH/PATH --output OUT",
    "score --model models:/no-such-model/1 --input digits --output OUT",
    "generate --model models:/no-such-model/1 --method prior --output OUT",
    "report --scores NO/SUCH/scores",
    "models list",
    "monitor NO/SUCH/OUT",
)


def first_line(argv: list[str], env: dict[str, str], limit: float = 120.0) -> tuple[float, str]:
    """(seconds to the first line, that line) of ``argv`` run at a pseudo-terminal."""
    main, child = pty.openpty()
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    seen = b""
    try:
        while time.perf_counter() - start < limit:
            ready, _, _ = select.select([main], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
                if b"\n" in seen:
                    return time.perf_counter() - start, seen.split(b"\n")[0].decode(errors="replace").strip()
            elif process.poll() is not None:
                break
        return time.perf_counter() - start, seen.decode(errors="replace").strip()
    finally:
        if process.poll() is None:  # the first line came (or never will): the rest is not measured
            process.terminate()
        process.wait(timeout=10)
        os.close(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default=str(Path(sys.executable).with_name("vae")))
    parser.add_argument("--pythonpath", default=None, help="a checkout to measure instead of the installed one")
    parser.add_argument("--repeat", type=int, default=2, help="runs per command; the fastest is shown")
    args = parser.parse_args()
    env = dict(os.environ)
    env["VAE_WORK_DIR"] = tempfile.mkdtemp(prefix="vae-first-line-")
    env.pop("MLFLOW_TRACKING_URI", None)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    for command in COMMANDS:
        runs = [first_line([args.vae, *command.split()], env) for _ in range(args.repeat)]
        seconds, line = min(runs)
        print(f"{seconds:5.2f} s  vae {command}\n         {line[:100]}")


if __name__ == "__main__":
    main()
