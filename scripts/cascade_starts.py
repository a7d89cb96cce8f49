"""Where the cascade's testing sequence starts, on simulated students whose true answered accuracy
is known in closed form: how often a threshold is found, the coverage it gives, and how often the
chosen threshold's true accuracy is below the target (the guarantee allows at most delta).

    .venv/bin/python scripts/cascade_starts.py [--draws 150] [--target 0.86] [--delta 0.05]
        [--student SUBSTRING] [--sizes 300,1000]
"""

from __future__ import annotations

import argparse

import numpy as np

from mentor.cascade import choose_threshold


def _beta_moment(b, j):  # E[B^j | B >= b] for B ~ Beta(5, 1)
    b = min(max(b, 0.0), 0.999999)
    return 5 / (5 + j) * (1 - b ** (5 + j)) / (1 - b ** 5)


# name -> (draw confidences, P(right | confidence), true answered accuracy at threshold t)
STUDENTS = {
    "uniform, calibrated": (lambda rng, n: rng.uniform(0.3, 1, n), lambda c: c,
                            lambda t: (max(t, 0.3) + 1) / 2),
    "beta(5,1), calibrated": (lambda rng, n: 0.1 + 0.9 * rng.beta(5, 1, n), lambda c: c,
                              lambda t: 0.1 + 0.9 * _beta_moment((t - 0.1) / 0.9, 1)),
    "beta(5,1), overconfident (c²)": (lambda rng, n: 0.1 + 0.9 * rng.beta(5, 1, n), lambda c: c ** 2,
                                      lambda t: 0.01 + 0.18 * _beta_moment((t - 0.1) / 0.9, 1)
                                      + 0.81 * _beta_moment((t - 0.1) / 0.9, 2)),
    "confidence-blind, 92% right": (lambda rng, n: rng.dirichlet(np.ones(3) * 0.3, n).max(1),
                                    lambda c: np.full_like(c, 0.92), lambda t: 0.92),
}
RULES = {"one sequence, minimal start": dict(start="min"), "one sequence, power start (default)": dict(),
         "four sequences (Bonferroni)": dict(max_sequences=4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=150)
    ap.add_argument("--target", type=float, default=0.86)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--student", default="", help="only the simulated students whose name contains this")
    ap.add_argument("--sizes", default="300,1000", help="sizes of V, comma-separated")
    args = ap.parse_args()
    print(f"target {args.target}, delta {args.delta}, {args.draws} draws of V per cell\n")
    print("| student | V | rule | threshold found | mean coverage | true accuracy below target |")
    print("|---|---|---|---|---|---|")
    for name, (draw, p_right, truth) in STUDENTS.items():
        if args.student not in name:
            continue
        for n_val in (int(v) for v in args.sizes.split(",")):
            for rule, kw in RULES.items():
                rng = np.random.default_rng(0)
                met, cov, bad = 0, [], 0
                for _ in range(args.draws):
                    conf = draw(rng, n_val)
                    right = rng.uniform(size=n_val) < p_right(conf)
                    c = choose_threshold(conf, right, args.target, delta=args.delta, **kw)
                    cov.append(c.coverage)
                    if c.met:
                        met += 1
                        bad += truth(c.threshold) < args.target
                print(f"| {name} | {n_val} | {rule} | {met / args.draws:.2f} | {np.mean(cov):.3f} | "
                      f"{bad / args.draws:.3f} |")


if __name__ == "__main__":
    main()
