"""Benchmark: the segments engine (automatic k over 2..10) against the naive scikit-learn approach.

Data: a simulated mixture of ``--clusters`` (6) groups of students in ``--features`` (20) dimensions with unequal
sizes (30%, 25%, 20%, 12%, 8%, 5%); every fourth feature is a right-skewed count-like rate (``expm1`` of a normal),
declared as a log feature, the others are normal. The truth is known, so the adjusted Rand index of each method's
segments against it is reported.

Ours: ``SegmentModel(log_features=...)`` with its defaults (candidates k = 2..10 on a 100,000-row fit sample,
silhouette on a 10,000-row score sample, a final Lloyd pass and the assignment on all rows). Timed end to end
(scaling, candidates, refinement, assignment), in its own process (``common.phase``) so the peak RSS is its own
(it includes the simulated data).

Naive (the reference library used the obvious way): a uniform random sample of ``--naive-sample`` (20,000)
students, scaled with ``RobustScaler`` (log features first, as ours), then for every k ``KMeans(n_clusters=k)``
(scikit-learn's defaults) and the *full* ``silhouette_score`` of that sample. The sample's time is measured; its cost
at the full size is extrapolated, stated as such, from the complexity of each part: k-means is linear in the rows
(``O(n k p)`` per iteration, the iteration count taken as unchanged), so its time is scaled by ``N / n``; the full
silhouette needs every pairwise distance (``O(n^2 p)``), so its time is scaled by ``(N / n)^2``. Measured small-sample
times include fixed overheads, so the linear part's extrapolation is if anything pessimistic; the quadratic part
dominates anyway.

    .venv/bin/python bench/segments.py [--students 1000000] [--features 20] [--clusters 6] [--naive-sample 20000]
                                       [--skip-naive] [--threads N]

On a machine shared with other busy processes, OpenMP's default busy-waiting makes scikit-learn's multi-threaded
k-means several times slower than one thread; run with ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``) there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import phase, row
from learnpulse.engines.segments import SegmentModel

SEED = 20240707
SHARES = (0.30, 0.25, 0.20, 0.12, 0.08, 0.05)
CENTER_SD = 1.5  # spread of the group centres (within-group SD is 1): clearly separated on average, some pairs close


def simulate(
    students: int, features: int, clusters: int, seed: int = SEED
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The mixture: group ``g`` with probability ``share_g``; value ``mu_g + N(0, 1)`` per feature; every fourth
    feature then becomes ``expm1`` of that value (a skewed rate, > -1) and is listed as a log feature."""
    rng = np.random.default_rng(seed)
    shares = np.array(SHARES[:clusters] if clusters <= len(SHARES) else [1.0] * clusters, dtype=float)
    shares /= shares.sum()
    centers = rng.normal(0.0, CENTER_SD, (clusters, features))
    truth = rng.choice(clusters, size=students, p=shares)
    x = centers[truth] + rng.standard_normal((students, features))
    names = [f"f{j + 1:02d}" for j in range(features)]
    logged = [names[j] for j in range(features) if j % 4 == 3]
    for j in range(features):
        if j % 4 == 3:
            x[:, j] = np.expm1(0.5 * x[:, j])  # log1p gives back a normal with SD 0.5
    return pd.DataFrame(x, columns=names), truth, logged


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _threads(threads: int | None) -> Any:
    """A context limiting the native thread pools (OpenMP, BLAS) to ``threads`` (None: the libraries' default)."""
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    return nullcontext() if threads is None else threadpool_limits(threads)


def run_ours(students: int, features: int, clusters: int, threads: int | None) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    frame, truth, logged = simulate(students, features, clusters)
    data_mib = _rss_mib()
    with _threads(threads):
        start = time.perf_counter()
        model = SegmentModel(log_features=logged).fit(frame)
        seconds = time.perf_counter() - start
        assert model.labels_ is not None
        start = time.perf_counter()
        predicted = model.predict(frame)
        predict_seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "timings": model.timings_,
        "predict_seconds": predict_seconds,
        "data_mib": data_mib,
        "k": model.k_,
        "selection": model.selection_,
        "ari": float(adjusted_rand_score(truth, model.labels_)),
        "agrees": bool((np.asarray(model.segment_ids_)[model.labels_] == predicted["segment_id"].to_numpy()).all()),
        "n_fit": model.n_fit_,
        "n_score": model.n_score_,
    }


def run_naive(students: int, features: int, clusters: int, sample: int, threads: int | None) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score
    from sklearn.preprocessing import RobustScaler

    frame, truth, logged = simulate(students, features, clusters)
    rng = np.random.default_rng(SEED + 1)
    rows = np.sort(rng.choice(students, min(sample, students), replace=False))
    part = frame.iloc[rows].copy()
    part[logged] = np.log1p(part[logged])
    data_mib = _rss_mib()
    per_k: list[dict[str, float]] = []
    with _threads(threads):
        start = time.perf_counter()
        z = RobustScaler().fit_transform(part.to_numpy())
        scale_seconds = time.perf_counter() - start
        for k in range(2, 11):
            t0 = time.perf_counter()
            labels = KMeans(n_clusters=k, random_state=SEED).fit_predict(z)
            t1 = time.perf_counter()
            score = float(silhouette_score(z, labels))
            t2 = time.perf_counter()
            per_k.append({"k": k, "silhouette": score, "fit_seconds": t1 - t0, "silhouette_seconds": t2 - t1})
        best = max(per_k, key=lambda s: s["silhouette"])
        labels = KMeans(n_clusters=int(best["k"]), random_state=SEED).fit_predict(z)
    return {
        "data_mib": data_mib,
        "sample": len(rows),
        "scale_seconds": scale_seconds,
        "per_k": per_k,
        "k": int(best["k"]),
        "ari_sample": float(adjusted_rand_score(truth[rows], labels)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--students", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--clusters", type=int, default=6, help="true groups in the simulated mixture")
    parser.add_argument("--naive-sample", type=int, default=20_000)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="limit OpenMP/BLAS threads (default: the libraries' choice)"
    )
    args = parser.parse_args(argv)
    n, p, g = args.students, args.features, args.clusters
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    threads = "default" if args.threads is None else str(args.threads)
    print(
        f"## Segments: {n:,} students x {p} features, {g} true groups, automatic k over 2..10 "
        f"({cores} cores, threads: {threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})\n"
    )
    ours, _wall, ours_peak = phase(run_ours, n, p, g, args.threads)
    lines = [
        row("method", "students", "k chosen", "ARI vs truth", "seconds", "peak RSS MiB (after data)", "note"),
        row(*["---"] * 7),
        row(
            "learnpulse SegmentModel (kmeans)",
            f"{n:,}",
            ours["k"],
            f"{ours['ari']:.3f}",
            f"{ours['seconds']:.1f}",
            f"{ours_peak:,.0f} ({ours['data_mib']:,.0f})",
            f"fit sample {ours['n_fit']:,}, score sample {ours['n_score']:,}; predict {ours['predict_seconds']:.1f} s"
            + ("" if ours["agrees"] else "; PREDICT DISAGREES WITH FIT"),
        ),
    ]
    target = "met" if ours["seconds"] <= 60 else "missed"
    silhouettes = ", ".join(f"{s['k']}: {s['silhouette']:.3f}" for s in ours["selection"])
    stages = ", ".join(f"{stage} {sec:.1f} s" for stage, sec in (ours["timings"] or {}).items())
    notes = [f"ours: target <= 60 s {target}; stages: {stages}", f"ours: silhouette by k (score sample): {silhouettes}"]

    if not args.skip_naive:
        naive, _wall, naive_peak = phase(run_naive, n, p, g, args.naive_sample, args.threads)
        m = naive["sample"]
        fit_s = sum(s["fit_seconds"] for s in naive["per_k"])
        sil_s = sum(s["silhouette_seconds"] for s in naive["per_k"])
        measured = naive["scale_seconds"] + fit_s + sil_s
        ratio = n / m
        extrapolated = naive["scale_seconds"] * ratio + fit_s * ratio + sil_s * ratio**2
        lines.append(
            row(
                "naive: KMeans + full silhouette_score per k",
                f"{m:,} (sample)",
                naive["k"],
                f"{naive['ari_sample']:.3f} (sample)",
                f"{measured:.1f}",
                f"{naive_peak:,.0f} ({naive['data_mib']:,.0f})",
                f"KMeans {fit_s:.1f} s + silhouette {sil_s:.1f} s",
            )
        )
        lines.append(
            row(
                "naive extrapolated to all students",
                f"{n:,}",
                "",
                "",
                f"~{extrapolated:,.0f} (~{extrapolated / 3600:,.1f} h)",
                "",
                f"KMeans x{ratio:,.0f} (linear) = {fit_s * ratio:,.0f} s, silhouette x{ratio**2:,.0f} (quadratic) = "
                f"{sil_s * ratio**2:,.0f} s",
            )
        )
        notes.append(
            "naive silhouette by k (its sample): "
            + ", ".join(f"{s['k']}: {s['silhouette']:.3f}" for s in naive["per_k"])
        )
        notes.append(
            f"speed: ours on all {n:,} students vs the naive method extrapolated to them: "
            f"{extrapolated / ours['seconds']:,.0f}x; vs the naive method on its {m:,}-student sample only: "
            f"{measured / ours['seconds']:.2f}x"
        )
    print("\n".join(lines))
    print()
    for note in notes:
        print(f"- {note}")
    print(
        "- seconds: SegmentModel.fit (scaling, candidates, silhouettes, final pass, assignment); peak RSS: the "
        "process, with the simulated data (RSS after simulating it in parentheses). Extrapolation: KMeans time x N/n, "
        "full silhouette time x (N/n)^2 (pairwise distances), scaling x N/n."
    )


if __name__ == "__main__":
    main()
