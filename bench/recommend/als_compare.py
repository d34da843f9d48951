#!/usr/bin/env python3
"""Evaluate ALS (the `implicit` package) on Convene's offline recommendation split.

The split and the metrics are the ones `convene recommend eval` implements:

1. Per user, rows sorted by (ts, event_id) ascending (stable). With n rows, a user with
   n < 2 has no test rows; otherwise the last max(1, round_half_away_from_zero(0.2 * n))
   rows are held out and the rest are training rows.
2. Training weight of (user, event) = sum of kind weights over its training rows; pairs
   whose sum is <= 0 are dropped; the value is ln(1 + sum).
3. Relevant items = distinct held-out event_ids not among the user's training pairs.
   Users without relevant items are not evaluated.
4. Catalogue = every event_id in the interactions (and events) file. Top 10 per user,
   never an item of the user's training pairs.
5. precision@10, recall@10, NDCG@10 (binary gains), averaged over evaluated users;
   coverage = distinct recommended items / catalogue size.

With --convene it also runs the Rust evaluation on the same files and prints one table;
the exit status is 1 when the hybrid recommender's NDCG@10 is below ALS's.
"""

import os

# implicit warns (and runs much slower) when OpenBLAS uses its own thread pool.
# This has to be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import scipy.sparse as sp

K = 10

KIND_WEIGHTS = {
    "view": 1.0,
    "click": 2.0,
    "like": 3.0,
    "share": 3.0,
    "waitlist": 4.0,
    "register": 5.0,
    "cancel": -5.0,
}

METRIC_KEYS = ("precision_at_10", "recall_at_10", "ndcg_at_10", "coverage")


def die(msg):
    """Errors exit with 2, so that 1 keeps meaning "the hybrid lost to ALS"."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------
# Data and split


class Split:
    """The offline split: training pairs, relevant items and the catalogue, all indexed."""

    def __init__(self, interactions_path, events_path=None):
        rows_by_user = defaultdict(list)
        catalogue = set()
        n_rows = 0
        with open(interactions_path, newline="", encoding="utf-8") as f:
            for line, rec in enumerate(csv.DictReader(f), start=2):
                kind = rec["kind"].strip()
                if kind not in KIND_WEIGHTS:
                    die(f"{interactions_path}:{line}: unknown kind {kind!r}")
                user, event = rec["user_id"], rec["event_id"]
                rows_by_user[user].append((int(rec["ts"]), event, kind))
                catalogue.add(event)
                n_rows += 1
        if events_path:
            with open(events_path, newline="", encoding="utf-8") as f:
                for rec in csv.DictReader(f):
                    catalogue.add(rec["event_id"])

        # Stable indices: items and users in sorted id order.
        self.items = sorted(catalogue)
        self.item_index = {e: i for i, e in enumerate(self.items)}
        self.users = sorted(rows_by_user)
        self.n_rows = n_rows

        # train[u] = {item: ln(1 + weight)}; relevant[u] = set of items (evaluated users only).
        self.train = []
        self.relevant = {}
        for u, user in enumerate(self.users):
            # Python's sort is stable; event ids compare as strings.
            rows = sorted(rows_by_user[user], key=lambda r: (r[0], r[1]))
            n = len(rows)
            # floor(0.2 n + 0.5) == (2n + 5) // 10 exactly, for integer n.
            n_test = 0 if n < 2 else max(1, (2 * n + 5) // 10)
            train_rows, test_rows = rows[: n - n_test], rows[n - n_test :]

            sums = defaultdict(float)
            for _, event, kind in train_rows:
                sums[event] += KIND_WEIGHTS[kind]
            pairs = {self.item_index[e]: math.log1p(s) for e, s in sums.items() if s > 0}
            self.train.append(pairs)

            relevant = {self.item_index[e] for _, e, _ in test_rows} - pairs.keys()
            if relevant:
                self.relevant[u] = relevant

        self.evaluated = sorted(self.relevant)

    def values_matrix(self):
        """users x items CSR of ln(1 + weight) over the training pairs."""
        indptr, indices, data = [0], [], []
        for pairs in self.train:
            for i in sorted(pairs):
                indices.append(i)
                data.append(pairs[i])
            indptr.append(len(indices))
        return sp.csr_matrix(
            (np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int32), indptr),
            shape=(len(self.users), len(self.items)),
        )

    def summary(self):
        n_pairs = sum(len(p) for p in self.train)
        cold = sum(1 for u in self.evaluated if not self.train[u])
        return (
            f"{self.n_rows} interactions, {len(self.users)} users, {len(self.items)} items, "
            f"{n_pairs} training pairs, {len(self.evaluated)} users evaluated "
            f"({cold} without training pairs)"
        )


# ---------------------------------------------------------------------------
# Metrics


def evaluate(split, recs):
    """recs: {user index: list of item indices, best first}. Returns the metric dict."""
    ideal = [0.0] * (K + 1)
    for r in range(1, K + 1):
        ideal[r] = ideal[r - 1] + 1.0 / math.log2(r + 1)

    p_sum = r_sum = n_sum = 0.0
    recommended = set()
    for u in split.evaluated:
        relevant = split.relevant[u]
        top = recs.get(u, [])[:K]
        recommended.update(top)
        hits = 0
        dcg = 0.0
        for rank, item in enumerate(top, start=1):
            if item in relevant:
                hits += 1
                dcg += 1.0 / math.log2(rank + 1)
        p_sum += hits / K
        r_sum += hits / len(relevant)
        n_sum += dcg / ideal[min(len(relevant), K)]

    n = len(split.evaluated)
    return {
        "precision_at_10": p_sum / n if n else 0.0,
        "recall_at_10": r_sum / n if n else 0.0,
        "ndcg_at_10": n_sum / n if n else 0.0,
        "coverage": len(recommended) / len(split.items) if split.items else 0.0,
    }


# ---------------------------------------------------------------------------
# Recommenders


def popularity_ranking(split):
    """Items by number of distinct training users, descending; ties by event_id."""
    counts = np.zeros(len(split.items), dtype=np.int64)
    for pairs in split.train:
        for i in pairs:
            counts[i] += 1
    # Item indices follow sorted event ids, so a stable sort breaks ties by event_id.
    return list(np.argsort(-counts, kind="stable"))


def top_unseen(ranking, seen, k=K):
    out = []
    for i in ranking:
        if i not in seen:
            out.append(int(i))
            if len(out) == k:
                break
    return out


def popularity_recs(split, ranking):
    return {u: top_unseen(ranking, split.train[u]) for u in split.evaluated}


def als_recs(split, values, params, ranking, num_threads, batch=2048):
    """Fits ALS and recommends for every evaluated user. Returns (recs, fit_s, rec_s)."""
    from implicit.als import AlternatingLeastSquares

    # Confidence = 1 + alpha * value on observed pairs. implicit reads the matrix values
    # as confidences directly (missing entries count as confidence 1, preference 0), so
    # its own alpha (a plain multiplier) stays at 1.
    conf = values.copy()
    conf.data = (1.0 + params["alpha"] * conf.data).astype(np.float32)

    model = AlternatingLeastSquares(
        factors=params["factors"],
        regularization=params["regularization"],
        alpha=1.0,
        iterations=params["iterations"],
        random_state=params["seed"],
        num_threads=num_threads,
        use_gpu=False,
    )
    t0 = time.perf_counter()
    model.fit(conf, show_progress=False)
    fit_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    recs = {}
    # Users with no training pairs have no ALS factors worth the name: they get the
    # popularity list instead, as any production recommender would do.
    warm = np.asarray([u for u in split.evaluated if split.train[u]], dtype=np.int32)
    for u in split.evaluated:
        if not split.train[u]:
            recs[u] = top_unseen(ranking, split.train[u])
    for start in range(0, len(warm), batch):
        ids = warm[start : start + batch]
        items, scores = model.recommend(ids, conf[ids], N=K, filter_already_liked_items=True)
        for u, row, srow in zip(ids, items, scores):
            seen = split.train[u]
            # Padding (fewer than K candidates) comes back as -1 or -inf scores.
            recs[int(u)] = [
                int(i) for i, s in zip(row, srow) if i >= 0 and np.isfinite(s) and i not in seen
            ]
    rec_s = time.perf_counter() - t0
    return recs, fit_s, rec_s


TUNE_GRID = [
    {"factors": f, "regularization": r, "alpha": a}
    for f in (32, 128)
    for r in (0.01, 0.1)
    for a in (5.0, 40.0)
]


# ---------------------------------------------------------------------------
# The Rust side


def run(cmd):
    print("$ " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        die(f"command failed with status {proc.returncode}: {' '.join(cmd)}")
    return proc.stdout


def synthesize(args, out_dir):
    cmd = [args.convene, "recommend", "synth", "--seed", str(args.synthetic), "--out", out_dir]
    for flag, value in (
        ("--users", args.users),
        ("--events", args.n_events),
        ("--interactions", args.n_interactions),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    run(cmd)
    return os.path.join(out_dir, "interactions.csv"), os.path.join(out_dir, "events.csv")


def rust_eval(args, interactions, events):
    cmd = [args.convene, "recommend", "eval", "--interactions", interactions]
    if events:
        cmd += ["--events", events]
    cmd.append("--json")
    out = run(cmd)
    try:
        doc = json.loads(out)
    except json.JSONDecodeError as e:
        die(f"convene recommend eval printed no JSON: {e}\n{out[:500]}")
    if not isinstance(doc, dict):
        die("convene recommend eval printed JSON that is not an object")
    # Every entry carrying the four metrics is a row; anything else is metadata.
    rows = {
        name: value
        for name, value in doc.items()
        if isinstance(value, dict) and all(k in value for k in METRIC_KEYS)
    }
    if "hybrid" not in rows:
        die("convene recommend eval: no 'hybrid' entry with the four metrics")
    return rows


# ---------------------------------------------------------------------------
# Output


def print_table(rows):
    width = max(22, max(len(n) for n in rows) + 2)
    print(f"{'model':<{width}}{'P@10':>9}{'R@10':>9}{'NDCG@10':>10}{'coverage':>10}")
    for name, m in rows.items():
        print(
            f"{name:<{width}}{m['precision_at_10']:>9.4f}{m['recall_at_10']:>9.4f}"
            f"{m['ndcg_at_10']:>10.4f}{m['coverage']:>10.4f}"
        )


def parse_args():
    p = argparse.ArgumentParser(
        description="Compare ALS (implicit) with `convene recommend eval` on the same split."
    )
    data = p.add_argument_group(
        "data", "either --interactions FILE [--events FILE], or --synthetic SEED with --convene"
    )
    data.add_argument(
        "--interactions", metavar="FILE|N", help="CSV user_id,event_id,kind,ts (a count for synth)"
    )
    data.add_argument("--events", metavar="FILE|N", help="CSV of events (a count for synth)")
    data.add_argument(
        "--synthetic", type=int, metavar="SEED", help="generate data with `convene recommend synth`"
    )
    data.add_argument("--users", type=int, metavar="N", help="user count for synth")
    p.add_argument("--convene", metavar="PATH", help="the convene binary, to compare with")

    als = p.add_argument_group("ALS")
    als.add_argument("--factors", type=int, default=64)
    als.add_argument("--regularization", type=float, default=0.05)
    als.add_argument("--iterations", type=int, default=20)
    als.add_argument("--alpha", type=float, default=20.0, help="confidence = 1 + alpha * value")
    als.add_argument("--seed", type=int, default=42, help="ALS random_state")
    als.add_argument("--threads", type=int, default=0, help="implicit threads (0 = all cores)")
    als.add_argument(
        "--tune",
        action="store_true",
        help="also try a small grid and report the best (tuned on the test split itself)",
    )
    p.add_argument("--json-out", metavar="PATH", help="write all result rows as JSON")
    args = p.parse_args()

    # With --synthetic, --interactions and --events are counts passed through to synth.
    args.n_interactions = args.n_events = None
    if args.synthetic is not None:
        if not args.convene:
            p.error("--synthetic needs --convene")
        for name in ("interactions", "events"):
            value = getattr(args, name)
            if value is not None:
                try:
                    setattr(args, "n_" + name, int(value))
                except ValueError:
                    p.error(f"with --synthetic, --{name} takes a count, not {value!r}")
    else:
        if not args.interactions:
            p.error("give --interactions FILE or --synthetic SEED")
        if args.users is not None:
            p.error("--users is for --synthetic")
    return args


def main():
    args = parse_args()

    with tempfile.TemporaryDirectory(prefix="convene-synth-") as tmp:
        if args.synthetic is not None:
            interactions, events = synthesize(args, tmp)
            if not os.path.exists(events):
                events = None
        else:
            interactions, events = args.interactions, args.events

        t0 = time.perf_counter()
        split = Split(interactions, events)
        print(f"data: {split.summary()} (read in {time.perf_counter() - t0:.2f}s)")
        if not split.evaluated:
            die("no user has held-out items to evaluate")

        rust_rows = rust_eval(args, interactions, events) if args.convene else {}

    values = split.values_matrix()
    ranking = popularity_ranking(split)

    params = {
        "factors": args.factors,
        "regularization": args.regularization,
        "alpha": args.alpha,
        "iterations": args.iterations,
        "seed": args.seed,
    }
    recs, fit_s, rec_s = als_recs(split, values, params, ranking, args.threads)
    als = evaluate(split, recs)
    print(
        f"als: factors={args.factors} regularization={args.regularization} alpha={args.alpha} "
        f"iterations={args.iterations}: trained in {fit_s:.2f}s, recommended in {rec_s:.2f}s"
    )

    rows = dict(rust_rows)
    rows["als (implicit)"] = als
    rows["popularity (python)"] = evaluate(split, popularity_recs(split, ranking))

    if args.tune:
        best = None
        for setting in TUNE_GRID:
            trial = dict(params, **setting)
            t_recs, t_fit, _ = als_recs(split, values, trial, ranking, args.threads)
            m = evaluate(split, t_recs)
            print(
                f"tune: factors={trial['factors']:<4} regularization={trial['regularization']:<5} "
                f"alpha={trial['alpha']:<5} NDCG@10={m['ndcg_at_10']:.4f} (trained in {t_fit:.2f}s)"
            )
            if best is None or m["ndcg_at_10"] > best[1]["ndcg_at_10"]:
                best = (trial, m)
        if best[1]["ndcg_at_10"] > als["ndcg_at_10"]:
            b = best[0]
            print(
                f"tune: best factors={b['factors']} regularization={b['regularization']} "
                f"alpha={b['alpha']} (chosen on the test split: optimistic)"
            )
            rows["als (tuned on test split)"] = best[1]
        else:
            print("tune: no setting beat the flags' ALS")

    print()
    print_table(rows)

    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)

    if not rust_rows:
        return 0

    if "popularity" in rust_rows:
        delta = abs(rust_rows["popularity"]["ndcg_at_10"] - rows["popularity (python)"]["ndcg_at_10"])
        if delta > 0.01:
            print(
                f"note: popularity NDCG@10 differs by {delta:.4f} between Rust and Python; "
                "check that both sides use the same split"
            )

    hybrid, als_ndcg = rust_rows["hybrid"]["ndcg_at_10"], als["ndcg_at_10"]
    ratio = hybrid / als_ndcg if als_ndcg > 0 else float("inf")
    print(f"hybrid / als NDCG@10 = {ratio:.2f}")
    return 1 if hybrid < als_ndcg else 0


if __name__ == "__main__":
    sys.exit(main())
