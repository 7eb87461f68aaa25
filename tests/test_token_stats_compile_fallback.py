"""Where inductor cannot compile (no C++ compiler), `auto` warns once and runs the eager chunks.

The failure is real: a subprocess with `CXX` naming no compiler and an empty inductor cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

FALLBACK = textwrap.dedent(
    """
    import json, warnings
    import torch
    from entropy_dynamics.token_stats import token_stats
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 3, 50, generator=gen), torch.randint(0, 50, (2, 3), generator=gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = token_stats(logits, labels), token_stats(logits, labels)
    eager = token_stats(logits, labels, backend="torch")
    try:
        token_stats(logits, labels, backend="inductor")
        refused = ""
    except ValueError as err:
        refused = str(err)
    print(json.dumps({
        "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
        "equal": all(torch.equal(a, b) and torch.equal(b, c) for a, b, c in zip(first, second, eager)),
        "refused": refused,
    }))
    """
)


def test_without_a_cxx_compiler_auto_warns_once_and_runs_eager(tmp_path):
    """A real failure: CXX names no compiler and the inductor cache is empty, in a subprocess."""
    env = dict(os.environ)
    env.update(
        CXX=str(tmp_path / "no-such-compiler"),
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor-cache"),
        ENTROPY_DYNAMICS_COMPILE="1",  # compile even this small pass
    )
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["warnings"]) == 1, result
    assert "cannot build the fused CPU kernels" in result["warnings"][0]
    assert result["equal"]
    assert "backend='inductor' needs torch.compile" in result["refused"]
    assert "C++ compiler" in result["refused"]
