"""ZipIt matching time vs space size: the constants of ``raymerge.zipit.budget`` (reported).

For K = 2 models of n features each (U = 2n units), times what one matcher task does
(``raymerge.execution.zipit_stage._match_space``): correlation from the float64 statistics, cast
to float32, then the greedy zipit matcher (``alpha`` 0.5, ``beta`` 1) or permute (Hungarian on
the n x n cross block), on one CPU thread. The two models' features are noisy permuted copies of
each other (correlation ~0.8 between partners), rows = 2048 samples. Fits ``seconds = a U^p`` for
each matcher by least squares on log-log, and ``seconds = b C^2`` for the correlation, and prints
them; ``ZIPIT_TIME`` / ``PERMUTE_TIME`` / ``CORRELATION_TIME`` in ``raymerge/zipit/budget.py``
are the fit of a run on the shared 2-core machine these notes were written on.

Usage::

    python benchmarks/zipit_match_time.py [--units 2048,4096,8192,16384]

The last line printed is one JSON object with every timing and both fits.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from raymerge.zipit.matching import match_permute, match_zipit
from raymerge.zipit.stats import FeatureStats


def stats_of(n: int, rows: int = 2048, seed: int = 0) -> FeatureStats:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g)
    y = x[:, torch.randperm(n, generator=g)] + 0.75 * torch.randn(rows, n, generator=g)
    s = FeatureStats.empty((n, n))
    s.update(torch.cat([x, y], dim=1))
    return s


def timed(kind: str, s: FeatureStats) -> tuple[float, float]:
    """(correlation seconds, matcher seconds)."""
    t0 = time.perf_counter()
    corr = s.correlation().to(torch.float32)
    t1 = time.perf_counter()
    n = s.sizes[0]
    if kind == "zipit":
        match_zipit(corr, (n, n), alpha=0.5, beta=1.0, dtype=torch.float32)
    else:
        match_permute(corr, (n, n))
    return t1 - t0, time.perf_counter() - t1


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(a, p) of seconds = a * U**p, least squares on logs."""
    xs = [math.log(u) for u, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    p = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - p * mx), p


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", default="2048,4096,8192,16384")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res: dict = {"zipit": [], "permute": [], "correlation": []}
    for u in (int(v) for v in args.units.split(",")):
        s = stats_of(u // 2)
        for kind in ("zipit", "permute"):
            tc, tm = timed(kind, s)
            res[kind].append((u, tm))
            res["correlation"].append((u, tc))
            print(f"  U={u:6d} correlation {tc:7.2f} s, {kind:8s} {tm:8.2f} s", flush=True)
        del s
    out = {}
    for kind in ("zipit", "permute"):
        a, p = fit(res[kind])
        out[kind] = {"a": a, "p": p, "points": res[kind]}
        print(f"{kind}: seconds = {a:.3g} * U^{p:.3f}")
    per = [t / u**2 for u, t in res["correlation"]]
    out["correlation"] = {"b": max(per), "points": res["correlation"]}
    print(f"correlation: seconds = {max(per):.3g} * C^2 (the largest of the measured ratios)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
