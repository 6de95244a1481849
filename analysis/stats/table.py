"""``statistics_table``: every statistic of every measure against the target, in long form,
with bootstrap intervals, run in parts in spawned processes for a large table; ``ranking_table``
and ``write_table`` (CSV + Parquet)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import args as argcheck
from analysis.stats.bootstrap import _bootstrap_indices, _percentiles, check_n_boot
from analysis.stats.cmi import check_k
from analysis.stats.configs import (
    _check_columns, _configs, _numeric, _Prepared, _prepare, check_hyperparameters,
    hyperparameter_columns, measure_columns, measure_sign,
)
from analysis.stats.evaluate import _all_statistics, _JobRows
from analysis.stats.registry import (
    LARGER_IS_BETTER, RANK_BY, REGISTRY, STATISTICS, check_statistic,
)
from analysis.stats.sign_errors import check_noise_filter
from workers.cores import usable_cores, usable_memory

# statistics_table: (trials + FIXED_COST_TRIALS) x measures x (replicates + 1) from which it runs
# in processes; an evaluation costs about as much as this many trials even on a tiny table
# (the conditioning sets' small histograms, scipy's calls)
PARALLEL_ABOVE = 500_000
FIXED_COST_TRIALS = 200
TABLE_COLUMNS = ["group", "measure", "sign", "target", "statistic", "value", "ci_low", "ci_high",
                 "ci_method", "n_trials", "n_configs", "n_used", "rank", "better", "n_seeds",
                 "few_seeds"]
# A statistics process's peak memory (resident; bench/stats_memory.py, where the model is set
# against each process's measured peak): PROCESS_BYTES whatever it computes (the interpreter,
# numpy, pandas, scipy, numba's kernels), + PROCESS_TRIAL_BYTES per trial row of the largest job
# it is given + PROCESS_TRIAL_MEASURE_BYTES per trial row and measure of that job (a job: the
# measures of one group over the same rows). With processes=None, no more processes run than
# MEMORY_SHARE of the memory this process may use holds (``workers.cores.usable_memory``: a
# SLURM job's --mem, a container's limit, else the machine's available memory)
PROCESS_BYTES = 320 << 20
PROCESS_TRIAL_BYTES = 2048
PROCESS_TRIAL_MEASURE_BYTES = 56
MEMORY_SHARE = 0.8
# An interval resampled over fewer seeds than this has only a handful of distinct resamples
# (2 seeds: 3 of them): ``few_seeds`` marks it (the paper used 8 seeds)
FEW_SEEDS = 5


_QUEUE = None  # in a worker process: where each evaluation's measure count goes (progress)


def _worker_start(queue) -> None:
    """A worker process: one BLAS thread; the progress queue (or None), which the process
    does not wait to flush when it exits (its counts are progress only: a caller that stopped
    reading after an error must not keep the worker from exiting)."""
    global _QUEUE
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if queue is not None:
        queue.cancel_join_thread()
    _QUEUE = queue


def _evaluations(ps: Sequence[_Prepared], n_boot: int, seed: int, k: int, noise_filter,
                 first: int, stop: int,
                 report: Callable[[int], None] | None = None) -> tuple[str, dict[int, list]]:
    """Evaluations ``first`` .. ``stop - 1`` of one job: 0 is the estimate (with support),
    r >= 1 the r-th bootstrap replicate (draws from ``numpy.random.default_rng(seed)`` afresh,
    so a job gives the same numbers in any process and in any number of parts). ``report``:
    called with the number of measures after each bootstrap evaluation, not after the
    estimate (in a worker process they go to the progress queue, if any)."""
    method, draws = _bootstrap_indices(ps[0].seed_codes, ps[0].n, n_boot, seed)
    job = _JobRows(ps) if noise_filter is False and ps[0].n else None
    out = {}
    for r, idx in enumerate(itertools.chain([None], draws)):
        if r >= stop:
            break
        if r >= first:
            out[r] = _all_statistics(ps, idx, k, noise_filter, support=r == 0, job=job)
            if r == 0:  # (the estimates are announced together, by the caller)
                continue
            if report is not None:
                report(len(ps))
            elif _QUEUE is not None:
                _QUEUE.put(len(ps))
    return method, out


def _same_rows(p: _Prepared, q: _Prepared) -> bool:
    def same(a, b):
        return (a is None) == (b is None) and (a is None or np.array_equal(a, b, equal_nan=True))

    return (p.n == q.n and p.names == q.names and np.array_equal(p.levels, q.levels)
            and all(same(a, b) for a, b in ((p.g, q.g), (p.row_cfg, q.row_cfg),
                                             (p.cfg_codes, q.cfg_codes),
                                             (p.seed_codes, q.seed_codes),
                                             (p.test_size, q.test_size))))


def _group_label(v) -> str:
    return "null" if pd.isna(v) else str(v)


def _group_labels(values, by: str) -> list[str]:
    """One distinct label per value of ``by`` (``_group_label``: its string, "null" for a
    missing one); a label that would be "all" (the whole table's group) or that two values
    share (the string "null" and a missing value, 1 and "1") is ``by=<repr of the value>``
    instead, so no group's rows are written over another's."""
    plain = [_group_label(v) for v in values]
    clash = {lb for lb in plain if lb == "all" or plain.count(lb) > 1}
    return [f"{by}={None if pd.isna(v) else v!r}" if lb in clash else lb
            for v, lb in zip(values, plain)]


def process_bytes(trials: int, measures: int) -> int:
    """The modelled peak memory in bytes of a statistics process given a job of ``trials`` rows
    and ``measures`` measures (PROCESS_BYTES + per trial + per trial and measure)."""
    return PROCESS_BYTES + trials * (PROCESS_TRIAL_BYTES + PROCESS_TRIAL_MEASURE_BYTES * measures)


def process_count(jobs: Sequence[tuple[int, int]], cores: int | None = None,
                  memory: int | None = None, why: list[str] | None = None) -> int:
    """How many statistics processes to run (``processes=None``), >= 1: one per usable CPU
    (``cores``; None: ``workers.cores.usable_cores()``), but no more than MEMORY_SHARE of
    ``memory`` bytes (None: ``workers.cores.usable_memory()``) holds, each as large as the
    largest job needs (``process_bytes``; ``jobs``: (trial rows, measures) per job). One process
    computes in this one, starting none. ``why``: given a list, a line saying so is appended
    to it when the memory, not the CPUs, set the count."""
    cores = usable_cores() if cores is None else cores
    if cores <= 1 or not jobs:
        return 1
    memory = usable_memory() if memory is None else memory
    need = max(process_bytes(n, m) for n, m in jobs)
    count = max(1, min(cores, int(MEMORY_SHARE * memory // need)))
    if count < cores and why is not None:
        why.append(f"not {cores}: {MEMORY_SHARE:g} of the usable memory, "
                   f"{memory / 2**30:.1f} GiB, holds {count} of about "
                   f"{need / 2**30:.1f} GiB each")
    return count


def statistics_table(df: pd.DataFrame, measures: Sequence[str] | None = None,
                     target: str = "gen_gap", by: str | None = "dataset", n_boot: int = 200,
                     seed: int = 0, *, hyperparameters: Sequence[str] | None = None,
                     level: float = 0.95, k: int = 2, noise_filter: bool | float = False,
                     processes: int | None = 1,
                     signs: Mapping[str, int] | None = None,
                     progress: Callable[[int, int, int], None] | None = None) -> pd.DataFrame:
    """Every statistic of every measure against ``target``, in long form.

    Each measure enters as ``sign * measure``, its ``sign`` stated in a column: ``signs`` per
    measure, default ``measure_sign`` (+1, or -1 for a measure expected to fall as the gap grows,
    such as a margin, so that for every row a positive correlation and a small sign-error mean
    "predicts the gap in the expected direction").

    One row per (group, measure, statistic): ``group`` is "all" and, when ``by`` has several
    values, each value of ``by`` (as a string; "null" for a missing value; ``by=<value>`` where
    that string would be "all" or another value's); ``statistic`` one of
    STATISTICS, in registry order (``analysis.stats.registry.REGISTRY``: each statistic's
    function, direction and support); ``value`` on the group's rows whose measure and target
    are not NaN (``n_trials`` rows, ``n_configs`` configurations; ``n_used`` what the statistic
    rests on, its registered ``support``: trials, groups where one hyperparameter varies,
    ordered pairs or environments); ``better`` "larger" or "smaller";
    ``ci_low``/``ci_high`` the ``bootstrap_ci`` interval at ``level`` (all statistics from the
    same resamples; ``numpy.random.default_rng(seed)`` afresh for each group and measure, so a
    measure's interval does not depend on the other measures) and ``ci_method`` "seeds" or
    "trials". Measures absent from ``df`` or all-NaN in a group are skipped; one named twice
    is one. ValueError (one line) for ``hyperparameters`` that name a measure, the target or
    the seed, and for options outside what is allowed (``n_boot``, ``k``, ``signs``,
    ``noise_filter``, ``level``).
    ``hyperparameters``: default ``hyperparameter_columns(df, exclude=measures + [target])``,
    the same for every measure. ``noise_filter``: see ``sign_error``. Measures of a
    group whose rows are the same (no NaN in one that the other lacks) share the work that
    depends on the configurations and the target alone (one-factor pairs, the target's order
    counts). ``processes``: each group's n_boot + 1 evaluations run in parts in that many
    spawned processes (default 1: in this process; None: one per usable CPU, ``usable_cores``,
    as many as the usable memory holds, ``process_count``, once trials x measures x
    (n_boot + 1) reaches ``PARALLEL_ABOVE``, counting
    ``FIXED_COST_TRIALS`` more trials per evaluation, as ``sweep report`` does). Spawned
    processes import the caller's main module, so a script that asks for more than one needs the
    ``if __name__ == "__main__":`` guard. Every part regenerates its group's draws from the
    seeded generator: the table is the same either way. ``progress(done, total, processes)``:
    called with the evaluations of one measure done so far out of ``total`` (measures x groups
    x (n_boot + 1)) once the estimates are made (first: in this process, or the processes'
    first tasks) and after each replicate, for a progress bar and an estimate of the time left."""
    argcheck.frame(df)
    measures = argcheck.names(measures, "measures")
    hyperparameters = argcheck.names(hyperparameters, "hyperparameters")
    argcheck.processes(processes)
    argcheck.seed(seed)
    _check_columns(df, [target], "target")
    measures = measure_columns(df) if measures is None else list(dict.fromkeys(measures))
    if hyperparameters is None:
        hyperparameters = hyperparameter_columns(df, exclude=[*measures, target])
    _check_columns(df, hyperparameters, "hyperparameters")
    check_hyperparameters(hyperparameters, measures, target)
    check_n_boot(n_boot)
    check_noise_filter(noise_filter)
    given = {m: (signs or {}).get(m, measure_sign(m)) for m in measures}
    bad = {m: v for m, v in given.items()
           if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
           or v not in (1, -1)}
    if bad:
        raise ValueError(f"signs: {bad}; allowed: 1 or -1 per measure")
    sign = {m: int(v) for m, v in given.items()}
    flip = [m for m in measures if sign[m] < 0 and m in df.columns]
    if flip:
        df = df.assign(**{m: -df[m] for m in flip})
    check_k(k)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: {level}; allowed: 0 < level < 1")
    groups = [("all", df)]
    if by is not None:
        _check_columns(df, [by], "by")
        codes, uniques = pd.factorize(df[by], use_na_sentinel=False)
        if len(uniques) > 1:
            labels = _group_labels(uniques, by)
            parts = [(labels[c], df[codes == c]) for c in range(len(uniques))]
            groups += sorted(parts, key=lambda t: t[0])
    jobs = []  # (label, measures, prepared): measures of a group with the same rows share work
    for label, part in groups:
        for measure in measures:
            if measure not in part.columns:
                continue
            p = _prepare(part, measure, target, hyperparameters)
            if not p.n:
                continue
            same = [j for j in jobs if j[0] == label and _same_rows(j[2][0], p)]
            if same:  # the equal arrays as one object: pickled once for a worker process
                q = same[0][2][0]
                same[0][1].append(measure)
                same[0][2].append(replace(p, g=q.g, row_cfg=q.row_cfg, cfg_codes=q.cfg_codes,
                                          levels=q.levels, seed_codes=q.seed_codes,
                                          test_size=q.test_size))
            else:
                jobs.append((label, [measure], [p]))
    if processes is None:  # only where the work outweighs starting interpreters (~1 s each)
        big = sum((j[2][0].n + FIXED_COST_TRIALS) * len(j[1]) for j in jobs) * (n_boot + 1) \
            >= PARALLEL_ABOVE
        why: list[str] = []
        processes = process_count([(j[2][0].n, len(j[1])) for j in jobs], why=why) if big else 1
        if why and hasattr(progress, "processes_note"):  # (analysis.progress.StatsProgress)
            progress.processes_note = why[0]
    total = sum(len(j[1]) for j in jobs) * (n_boot + 1)  # evaluations of one measure
    first = sum(len(j[1]) for j in jobs)
    # each job's estimate (evaluation 0), then its n_boot replicates in parts (about two per
    # process and job), biggest first; in processes, the estimates are the first tasks there
    def size(t):
        return -jobs[t[0]][2][0].n * len(jobs[t[0]][1])

    estimates = sorted(((j, 0, 1) for j in range(len(jobs))), key=size)
    n_parts = 1 if processes <= 1 else min(n_boot, 2 * processes)
    cut = np.linspace(1, n_boot + 1, n_parts + 1).round().astype(int)
    tasks = sorted(((j, int(a), int(b)) for j in range(len(jobs))
                    for a, b in zip(cut[:-1], cut[1:]) if b > a), key=size)
    parallel = processes > 1 and len(tasks) + len(estimates) > 1
    done = []
    if not parallel:
        for t in estimates:
            done.append((t, _evaluations(jobs[t[0]][2], n_boot, seed, k, noise_filter, 0, 1)))
        if progress is not None and jobs:
            progress(first, total, processes)
    else:
        tasks = estimates + tasks
    args = [(jobs[j][2], n_boot, seed, k, noise_filter, a, b) for j, a, b in tasks]
    if parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, wait

        # spawn, not fork: the caller may hold threads (a Ray driver, BLAS pools); one BLAS
        # thread per process, or the processes' spinning BLAS threads fight over the cores.
        # Each evaluation's measures go back through a queue, for the progress
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue() if progress is not None else None
        with ProcessPoolExecutor(min(processes, len(tasks)), mp_context=ctx,
                                 initializer=_worker_start, initargs=(queue,)) as ex:
            futures = [ex.submit(_evaluations, *a) for a in args]
            ests = futures[:len(estimates)]
            count, announced = first, False
            while progress is not None and not all(f.done() for f in futures):
                wait(futures if announced else ests, timeout=0.5,
                     return_when="FIRST_EXCEPTION")
                if not announced and all(f.done() for f in ests):
                    failed = [f.exception() for f in ests if f.exception() is not None]
                    if failed:  # at once, as in one process: the replicates are not run
                        for f in futures:
                            f.cancel()
                        raise failed[0]
                    progress(first, total, processes)  # the estimates made, as in one process
                    announced = True
                while announced and not queue.empty():
                    count += queue.get()
                    progress(count, total, processes)
            done += [(t, f.result()) for t, f in zip(tasks, futures)]
            if progress is not None:
                if not announced and jobs:
                    progress(first, total, processes)
                progress(total, total, processes)
    else:
        count = first

        def one(n_measures: int) -> None:
            nonlocal count
            count += n_measures
            progress(count, total, processes)

        for t, a in zip(tasks, args):
            done.append((t, _evaluations(*a, report=one if progress is not None else None)))
    results: dict[int, dict[int, list]] = {}
    methods: dict[int, str] = {}
    for (j, _, _), (method, evals) in done:
        results.setdefault(j, {}).update(evals)
        methods[j] = method
    rows = {}
    # configurations with a defined mean (as the statistics count them: +inf and -inf among a
    # configuration's seeds leave it out), per prepared rows (measures of a job may share them)
    configs = {id(p): int(_configs(p).mu.size) for _, _, ps in jobs for p in ps}
    for j, (label, names, ps) in enumerate(jobs):
        ev = results[j]
        for m, (measure, p) in enumerate(zip(names, ps)):
            est, used = ev[0][m]
            reps = np.array([ev[r][m] for r in range(1, n_boot + 1)])
            low, high, _ = _percentiles(reps.reshape(n_boot, len(STATISTICS)), level)
            rows[label, measure] = [
                (label, measure, sign[measure], target, name, est[i], low[i], high[i],
                 methods[j], p.n, configs[id(p)], used[i]) for i, name in enumerate(STATISTICS)]
    parts = [rows[label, m] for label, _ in groups for m in measures if (label, m) in rows]
    table = pd.DataFrame([r for part in parts for r in part], columns=TABLE_COLUMNS[:12])
    table["rank"] = _ranks(table)
    table["better"] = table["statistic"].map(lambda s: REGISTRY[s].better)
    seeds = {}
    for label, part in groups:
        for measure in measures:
            if (label, measure) in rows:
                seeds[label, measure] = _n_seeds(part, measure, target)
    table["n_seeds"] = [seeds[g, m] for g, m in zip(table["group"], table["measure"])]
    table["few_seeds"] = (table["ci_method"] == "seeds") & (table["n_seeds"] < FEW_SEEDS)
    return table.astype({"sign": np.int64, "value": float, "ci_low": float, "ci_high": float,
                         "n_trials": np.int64, "n_configs": np.int64, "n_used": np.int64,
                         "n_seeds": np.int64, "few_seeds": bool})


def _n_seeds(part: pd.DataFrame, measure: str, target: str) -> int:
    """Distinct seeds among the rows where ``measure`` and ``target`` are both present (0
    without a ``seed`` column)."""
    if "seed" not in part.columns:
        return 0
    keep = ~(np.isnan(_numeric(part, measure)) | np.isnan(_numeric(part, target)))
    return int(part.loc[keep, "seed"].nunique(dropna=False))  # (a missing seed: a unit, as
    # the bootstrap resamples it)


def _ranks(table: pd.DataFrame) -> pd.Series:
    """Each measure's rank within its (group, statistic): 1 = agrees best with the gap (largest
    value, or smallest for the sign-errors, see LARGER_IS_BETTER); ties share the best rank;
    null where the value is."""
    if table.empty:
        return pd.Series([], dtype="Int64")
    key = table["value"].where(table["statistic"].map(LARGER_IS_BETTER).fillna(True).astype(bool),
                               -table["value"])
    return key.groupby([table["group"], table["statistic"]]).rank(
        method="min", ascending=False).astype("Int64")


def ranking_table(table: pd.DataFrame, by: str = RANK_BY,
                  group: str = "all") -> pd.DataFrame:
    """The measures of ``statistics_table``'s ``group`` ranked by the statistic ``by`` (Jiang et
    al. 2019, Table 2, in spirit): one row per measure, best first (measures without a value
    last), with ``rank``, ``measure``, ``sign`` (the statistics are of sign * measure), ``n_trials``
    and per statistic its value and interval (``<statistic>``, ``<statistic>_low``,
    ``<statistic>_high``). Raises ValueError for an unknown ``by`` or ``group``."""
    check_statistic(by, "rank by")
    cols = ["rank", "measure", "sign", "n_trials"] + [
        f"{s}{x}" for s in STATISTICS for x in ("", "_low", "_high")]
    if table.empty:
        return pd.DataFrame(columns=cols)
    if group not in set(table["group"]):
        raise ValueError(f"group {group!r}; allowed: {', '.join(dict.fromkeys(table['group']))}")
    t = table[table["group"] == group]
    out = t.groupby("measure", sort=False)[["sign", "n_trials"]].first()
    for s in STATISTICS:
        one = t[t["statistic"] == s].set_index("measure")
        for x, v in (("", "value"), ("_low", "ci_low"), ("_high", "ci_high")):
            out[s + x] = one[v].reindex(out.index).astype(float)
    out = out.reset_index()
    ranks = t[t["statistic"] == by].set_index("measure")["rank"]
    out.insert(0, "rank", out["measure"].map(ranks).astype("Int64"))
    out = out.sort_values(["rank", "measure"], na_position="last", kind="stable")
    return out[cols].reset_index(drop=True)


def write_table(table: pd.DataFrame, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.parquet`` (parent directories created); returns both."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv = stem.with_name(stem.name + ".csv")
    parquet = stem.with_name(stem.name + ".parquet")
    table.to_csv(csv, index=False)
    table.to_parquet(parquet, index=False)
    return csv, parquet
