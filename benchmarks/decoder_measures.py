"""Which frozen measurement of a plan predicts what the plan trains to, on SmolLM2?

The default search judges plans on the frozen model with their blocks removed (docs/method.md). On an untuned
decoder several readings of that model are possible; this script takes every plan lavin_table1 has trained
(its memo: the same task, budget and training reviews) and measures each on the 400 training reviews, as the
default search does, by:

- the target's loss (`search.verify_metric: task`, the default), the options' cross-entropy (`choice_loss`),
  the same after a cross-fitted temperature and option biases (`choice_refit_loss`, search/choice_refit.py);
- a linear probe: a logistic regression on the final hidden state at the answer's first token (five-fold,
  cross-fitted; scikit-learn), which reads how much of the answer the pruned model still carries, wherever it is.

It then ranks them against the plans' trained accuracy (lavin_table1's 400 test reviews, mean over the seeds
trained; held_out.py's 2,000 held-out reviews where those exist), per number of skipped blocks: Spearman's
rank correlation (higher is better: a measurement's lower loss should go with a higher accuracy). Each plan's
measurement is remembered (benchmarks/results/memo/decoder_measures.json); a killed run resumes.

    python benchmarks/decoder_measures.py --task imdb                 # ~2-4 min per plan on one core
    python benchmarks/decoder_measures.py --task polarity --min-seeds 2
    python benchmarks/decoder_measures.py --task polarity --min-seeds 2 --memo-only   # the tables of what is measured
    python benchmarks/decoder_measures.py --quick                    # CI smoke run
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import numpy as np
import torch
from common import Memo, Report, right_share
from lavin_table1 import HELD_OUT, Bench

from archskip.search.verify import PlanMeter, removed_as_identity

MEASURES = {"loss": "target's loss (default)", "choice_loss": "options' cross-entropy",
            "choice_refit_loss": "options' cross-entropy, re-fitted", "probe_loss": "linear probe's loss"}
PROBE_C = 0.01  # inverse L2 strength of the probe (standardised features): the best of 0.003-1 on IMDB's no-skip model


def trained(bench: Bench) -> dict[str, dict[str, list[float]]]:
    """plan ("" = no skip, "14,17") -> {"test": [accuracy per seed], "held_out": [...]}: plain adapter training under
    `bench`'s budget (any seed), as lavin_table1 and held_out.py remembered them."""
    task, rest = bench.name, bench.budget.split("|", 2)[2]  # (the budget after "<task>|seed=<s>|")

    def plan_of(key: str, middle: str) -> str | None:  # the plan of a key "<task>|seed=<s>|<rest>|<middle><plan>|adapters"
        head, _, tail = key.partition(f"|{rest}|{middle}")
        if not (tail and head.startswith(f"{task}|seed=") and head.count("|") == 1 and tail.endswith("|adapters")):
            return None
        return tail.removesuffix("|adapters")

    out: dict = defaultdict(lambda: {"test": [], "held_out": []})
    for key, m in Memo("lavin_table1", False).values.items():
        if (plan := plan_of(key, "metrics|skip=")) is not None:
            out[plan]["test"].append(m["accuracy"])
    for key, m in Memo("held_out", False).values.items():
        if (plan := plan_of(key, f"held-out={HELD_OUT}|skip=")) is not None:
            out[plan]["held_out"].append(right_share(m["held_out"]))
    return out


def probe(features: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """(log-loss, accuracy) of a logistic regression on `features`, five-fold cross-fitted, two shuffles."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    losses, right = [], []
    folds = max(2, min(5, *np.bincount(gold)))  # (a smoke run's 16 reviews may hold fewer than 5 of an answer)
    for shuffle in range(2):
        for fit, held in StratifiedKFold(folds, shuffle=True, random_state=shuffle).split(features, gold):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=3000)).fit(features[fit], gold[fit])
            p = clf.predict_proba(features[held]).clip(1e-6, 1.0)
            losses.append(-np.log(p[np.arange(len(held)), gold[held]]))
            right.append(p.argmax(1) == gold[held])
    return float(np.concatenate(losses).mean()), float(np.concatenate(right).mean())


def measure(bench: Bench, plan: list[int]) -> dict:
    """The frozen model with `plan`'s blocks removed, on the training reviews: every measurement of MEASURES."""
    model, task = bench.fresh()
    meter = PlanMeter(model, task, bench.train, 16, device="cpu", metric="choice_refit_loss")
    rows: list[torch.Tensor] = []
    batch = iter(meter.batches)

    def read(head, args):  # the final hidden state, (B, T, D), at each row's answer position
        b = next(batch)
        rows.append(args[0][torch.arange(len(b["input_ids"])), b["choice_pos"]].detach().float())

    hook = model.base.get_output_embeddings().register_forward_pre_hook(read)
    try:
        with removed_as_identity(model):
            m = dict(meter(tuple(plan)))
    finally:
        hook.remove()
    gold = torch.cat([b["choice_gold"] for b in meter.batches]).numpy()
    m["probe_loss"], m["probe_accuracy"] = probe(torch.cat(rows).numpy(), gold)
    return {k: m[k] for k in (*MEASURES, "probe_accuracy", "text_loss", "n")}


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["polarity", "imdb"], default="imdb")
    ap.add_argument("--min-seeds", type=int, default=1, help="measure plans trained on at least this many seeds")
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 2, 4, 6])
    ap.add_argument("--memo-only", action="store_true", help="report the plans already measured, measure nothing")
    ap.add_argument("--quick", action="store_true", help="CI smoke run: 16 training reviews, 3 plans")
    args = ap.parse_args()
    bench = Bench(args.task, False, 0, 400, 400, 3.0)  # (the full budget: the trained accuracies are the full runs')
    truth = trained(bench)
    plans = sorted((p for p, t in truth.items() if len(t["test"]) >= args.min_seeds
                    and (len(p.split(",")) if p else 0) in args.ks), key=lambda p: (len(p.split(",")) if p else 0, p))
    plans = [p for p in plans if p][:3] if args.quick else plans  # (skipping plans of one k: a correlation to compute)
    if args.quick:  # measured on the smoke run's 16 reviews
        bench.train = bench.train[:16]
    memo = Memo("decoder_measures", args.quick)
    report = Report(f"decoder_measures-{args.task}", f"Frozen measurements against trained accuracy, SmolLM2 {args.task}",
                    [0], args.quick)
    rows, by_k = [], defaultdict(list)
    for p in plans:
        skip = [int(i) for i in p.split(",")] if p else []
        if args.memo_only and not memo.has(f"{args.task}|train={len(bench.train)}|skip={p}"):
            continue
        m = memo.get(f"{args.task}|train={len(bench.train)}|skip={p}", lambda: measure(bench, skip))
        t = truth[p]
        row = {"k": len(skip), "plan": p or "none", "trained %": round(100 * statistics.mean(t["test"]), 2),
               "seeds": len(t["test"]),
               "held-out %": round(100 * statistics.mean(t["held_out"]), 2) if t["held_out"] else "–",
               **{name: round(m[key], 4) for key, name in MEASURES.items()}, "probe acc %": round(100 * m["probe_accuracy"], 1)}
        rows.append(row)
        by_k[len(skip)].append((row, m, t))
        print(row, flush=True)
    report.table("Plans", rows, ["k", "plan", "trained %", "seeds", "held-out %", *MEASURES.values(), "probe acc %"],
                 "Trained %: lavin_table1's 400 test reviews, mean over the seeds trained; held-out %: held_out.py's "
                 "2,000 reviews, mean over its seeds. The measurements: the frozen model, the plan's blocks removed, "
                 f"on the {len(bench.train)} training reviews.")
    corr = []
    for k, group in sorted(by_k.items()):
        for truth_name, pick in (("400 test reviews", "test"), ("2,000 held-out reviews", "held_out")):
            have = [(m, t) for _, m, t in group if t[pick]]
            if len(have) < 3:
                continue
            acc = [statistics.mean(t[pick]) for _, t in have]
            corr.append({"k": k, "against": truth_name, "plans": len(have),
                         **{name: round(spearman([-m[key] for m, _ in have], acc), 2) for key, name in MEASURES.items()}})
    report.table("Rank correlation with the trained accuracy", corr, ["k", "against", "plans", *MEASURES.values()],
                 "Spearman's rho between minus each measurement and the trained accuracy of the same plans, per k.")
    report.write()


if __name__ == "__main__":
    main()
