"""Entry point of a verifier worker process: `python -m entropy_dynamics.tasks._verifier_worker [MODULE...]`.

Started by `IsolatedWorker`; imports the named modules, then serves (fn, args) requests on stdin.
"""

import sys

from entropy_dynamics.tasks.isolated import _serve

if __name__ == "__main__":
    _serve(sys.argv[1:])
