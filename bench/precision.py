"""How much of paper_large's space is in the regime where a float64 re-evaluation of the float32
network is another function (#22.1; workers.measures.precision).

For every (activation, depth, init_scale) of paper_large's space, at the widths given, a network
is built from each of ``--seeds`` seeds and compared in float32 and float64 on ``--points``
training points (``compare_precisions``: logits within 1e-3 relative), at initialization and
after ``--steps`` steps of SGD (lr 0.01, batch 128, the trial's training loop). A cell is
affected when any seed's network disagrees; a network whose float32 outputs are not finite
counts apart (a trial of it is ``diverged``). The share of paper_large is the share of the
trials its plan (``trials`` draws, cheap configurations drawn more often, as ``sweep plan``
draws them) whose cell is affected at the nearest measured width (widths above the largest
measured take its state).

    python bench/precision.py             # widths 1, 2, 4, ..., 64 and 256; 1 seed; 100 steps
    python bench/precision.py --widths 16 256 --seeds 2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sweep.config import compose  # noqa: E402
from sweep.plan import plan_trials  # noqa: E402
from workers.data import DataMissing, load_data  # noqa: E402
from workers.measures.norms import _double  # noqa: E402
from workers.measures.precision import compare_precisions  # noqa: E402
from workers.models import build_mlp  # noqa: E402
from workers.results.spec import TrainSpec  # noqa: E402
from workers.train import train_model  # noqa: E402


def state(model, x) -> str:
    """"agrees", "differs" or "non-finite" (the float32 outputs overflow)."""
    with torch.no_grad():
        if not bool(torch.isfinite(model(x)).all()):
            return "non-finite"
    return "agrees" if compare_precisions(model, _double(model), x)["agrees"] else "differs"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 256])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--points", type=int, default=500)
    p.add_argument("--trials", type=int, default=10000, help="paper_large's plan size")
    args = p.parse_args()
    if min(args.widths) < 1 or args.seeds < 1 or args.steps < 0 or args.points < 1:
        print("bench/precision.py: widths, seeds and points must be >= 1, steps >= 0",
              file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(1)
    cfg = compose(["experiment=paper_large", f"trials={args.trials}", "plan.infeasible=keep"])
    try:
        data = load_data("fashion_mnist", train_size=max(args.points, 1024), test_size=10)
        name = "fashion_mnist"
    except DataMissing:
        data = load_data("digits", train_size=min(args.points, 1347), test_size=10)
        name = "digits"
    x = data.x_train.flatten(1)[: args.points]
    sp = cfg.space
    cells = {}
    t0 = time.perf_counter()
    for width in args.widths:
        for act in sp.activation:
            for depth in sp.depth:
                for scale in sp.init_scale:
                    got = {"init": [], "trained": []}
                    for seed in range(args.seeds):
                        m = build_mlp(data.input_dim, width, depth, data.info.num_classes, act,
                                      scale, seed).eval()
                        got["init"].append(state(m, x))
                        if args.steps:
                            out = train_model(m.train(), data, "sgd", 0.01, 128,
                                              TrainSpec(steps=args.steps, early_stop=False),
                                              seed)
                            m.eval()
                            got["trained"].append("non-finite" if out.diverged else state(m, x))
                    cells[(width, act, depth, scale)] = {
                        k: ("non-finite" if "non-finite" in v else "differs" if "differs" in v
                            else "agrees") for k, v in got.items() if v}
    seconds = time.perf_counter() - t0
    plan = Counter((s.activation, s.depth, s.init_scale, s.width) for s in plan_trials(cfg))
    total = sum(plan.values())
    report = {"data": name, "points": len(x), "seeds": args.seeds, "steps": args.steps,
              "widths": args.widths, "plan_trials": total, "seconds": round(seconds, 1)}
    for phase in ("init", "trained"):
        if phase == "trained" and not args.steps:
            continue
        for w in args.widths:
            c = Counter(v[phase] for k, v in cells.items() if k[0] == w)
            report[f"{phase}_cells_width{w}"] = dict(c)
        share = Counter()
        for (act, depth, scale, width), n in plan.items():
            near = min(args.widths, key=lambda w: abs(w - width))  # (nearest measured width)
            share[cells[(near, act, depth, scale)][phase]] += n
        report[f"{phase}_plan_share"] = {k: round(v / total, 4) for k, v in share.items()}
        report[f"{phase}_differs"] = sorted(
            f"{k[1]} d{k[2]} s{k[3]:g} w{k[0]}" for k, v in cells.items() if v[phase] == "differs")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
