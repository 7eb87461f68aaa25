"""Run every benchmark script in this folder (`bench_*.py`) one after another; `make bench`.

    .venv/bin/python benchmarks/run_all.py [--quick] [any option the scripts share]

Options are passed through to each script (see benchmarks/_util.py: --quick, --repeats,
--threads, --timeout); a script that rejects an option, or fails, is reported and skipped;
one that exits with code 77 cannot run on this machine (bench_gpu.py without CUDA).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SKIPPED = 77  # a script that cannot run here (the automake convention)


def main() -> int:
    here = Path(__file__).parent
    failed = []
    for script in sorted(here.glob("bench_*.py")):
        print(f"\n## {script.name}\n", flush=True)
        done = subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=False)
        if done.returncode == SKIPPED:  # e.g. bench_gpu.py without CUDA (it says why)
            print(f"skipped: {script.name}")
        elif done.returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
