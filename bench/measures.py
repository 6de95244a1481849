"""Seconds per registered measure against a trial's training time, measured in the same run.

For each network: train it as a trial does (``workers.train.train_model``), timed; then evaluate
every registered measure once through the registry (``evaluate_outcomes``, in registry order,
so quantities shared between measures, such as the margins, are paid by the first that needs
them), each timed. Networks: ``--demo K`` trials of the demo plan (digits), and with
``--large`` a width-1024, depth-5 ReLU network on 10,000 Fashion-MNIST training points
(``--large-steps`` SGD steps). Prints per network the training time, the measures' total and
their ratio, and the slowest measures; last line JSON.

    python bench/measures.py --demo 90
    python bench/measures.py --demo 90 --registered-defaults
    python bench/measures.py --demo 0 --large --large-steps 2000 --registered-defaults
    python bench/measures.py --demo 90 measure_settings.sharpness.points=500 metrics.transitions_points=50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.trained import trained  # noqa: E402
from sweep.config import ConfigError, compose  # noqa: E402
from sweep.plan import plan_trials  # noqa: E402
from workers.measures import REGISTRY, evaluate_outcomes  # noqa: E402
from workers.results.spec import DataSpec, TrainSpec, TrialSpec  # noqa: E402
from workers.trial import initial_model, measure_inputs  # noqa: E402


def one(spec: TrialSpec, data_root=None) -> dict:
    torch.set_num_threads(1)
    model, data, train_s = trained(spec, data_root)
    spec = replace(spec, metrics=replace(spec.metrics, measures=tuple(REGISTRY)))
    t = time.perf_counter()
    out = evaluate_outcomes(measure_inputs(model, data, spec, initial_model(spec, data, "cpu")),
                            spec.metrics.active_measures(), spec.metrics.measure_settings())
    total = time.perf_counter() - t
    return {"trial": f"{spec.activation}/{spec.optimizer} lr {spec.lr:g} w{spec.width} d{spec.depth}",
            "train_s": train_s, "measures_s": total,
            "per_measure": {k: o.seconds for k, o in out.items()},
            "errors": sorted(k for k, o in out.items() if o.error and not o.error.startswith("undefined"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=int, default=10,
                   help="the first K demo trials to time (0: none; the demo has 90)")
    p.add_argument("--large", action="store_true",
                   help="also a width-1024, depth-5 ReLU network on 10,000 Fashion-MNIST "
                        "training points (the Debian package dataset-fashion-mnist)")
    p.add_argument("--large-steps", type=int, default=2000,
                   help="SGD steps (batch 128) of the --large network")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="configuration overrides of the measurement settings, as for sweep "
                        "launch: measure_settings.<measure>.<setting>=VALUE (measure_settings."
                        "pacbayes.* sets the six PAC-Bayes measures), metrics.*=VALUE")
    p.add_argument("--registered-defaults", action="store_true",
                   help="the measures' registered defaults (the papers' settings) instead of "
                        "the demo experiment's cheaper settings (conf/experiment/demo.yaml)")
    args = p.parse_args()
    if args.registered_defaults:  # conf/config.yaml's metrics, the demo's measure_settings null
        demo = asdict(compose(["experiment=demo"]).measure_settings)
        args.overrides = ([f"measure_settings.{m}.{k}=null" for m, st in demo.items()
                           for k, v in st.items() if v is not None]
                          + ["metrics.transitions_points=100", "metrics.jacobian_points=null",
                             *args.overrides])
    bad = [o for o in args.overrides
           if not o.split("=")[0].startswith(("measure_settings.", "metrics."))]
    if bad:
        p.error(f"{bad[0]}: only measure_settings.* and metrics.* may be overridden here")
    if args.demo < 0 or args.large_steps < 1:
        p.error("--demo: allowed 0 or more; --large-steps: allowed 1 or more")
    try:
        cfg = compose(["experiment=demo", *args.overrides])
    except ConfigError as e:
        p.error(str(e))
    ms = cfg.metric_spec()
    print(f"measure settings other than the defaults (the paper's measures' too): "
          f"{ms.measure_overrides}", flush=True)
    rows = []
    for s in plan_trials(cfg)[: args.demo]:
        rows.append(one(s))
    if args.large:
        s = TrialSpec(DataSpec("fashion_mnist", train_size=10_000, test_size=2000), 1024, 5,
                      "relu", "sgd", 0.01, 128, 1.0, 1,
                      train=TrainSpec(steps=args.large_steps, early_stop=False),
                      metrics=cfg.metric_spec())
        rows.append({**one(s), "large": True})
    for r in rows:
        slow = sorted(r["per_measure"].items(), key=lambda kv: -kv[1])[:4]
        print(f"{r['trial']}: train {r['train_s']:.2f} s, all {len(r['per_measure'])} measures "
              f"{r['measures_s']:.2f} s ({100 * r['measures_s'] / r['train_s']:.1f}% of training); "
              "slowest: " + ", ".join(f"{k} {v:.3f} s" for k, v in slow)
              + (f"; errors: {r['errors']}" if r["errors"] else ""))
    demo = [r for r in rows if not r.get("large")]
    if demo:
        share = sum(r["measures_s"] for r in demo) / sum(r["train_s"] for r in demo)
        print(f"demo: measures / training = {100 * share:.1f}% over {len(demo)} trials")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
