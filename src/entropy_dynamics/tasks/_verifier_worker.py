"""Entry point of a verifier worker process: `python .../tasks/_verifier_worker.py [MODULE...]`.

Started by `IsolatedWorker`; imports the named modules, then serves (fn, args) requests on stdin.
Run by path, not with -m: `-m` would first run `entropy_dynamics/__init__.py`, which imports
torch (seconds per worker start, paid again after every timeout) although no verifier needs
it. A bare package module pointing at the same directory stands in for it, so
`entropy_dynamics.tasks...` imports resolve to the same files without that cost.
"""

import sys
import types
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        del sys.path[0]  # keep tasks/base.py, tasks/gym.py ... from shadowing top-level modules
    package = types.ModuleType("entropy_dynamics")
    package.__path__ = [str(here.parent)]
    sys.modules.setdefault("entropy_dynamics", package)

    from entropy_dynamics.tasks.isolated import _serve

    _serve(sys.argv[1:])
