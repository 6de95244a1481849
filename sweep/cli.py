"""``sweep``: train and measure many networks, then rank what predicts generalization.

    sweep launch [KEY=VALUE ...]     plan a sweep and run it (then the report); e.g.
                                     dataset=fashion_mnist trials=64 'space.width=[64,256]'
    sweep plan [KEY=VALUE ...]       write the sweep directory, its plan and cost; run nothing
    sweep show [--keys] [KEY=VALUE ...]   the composed configuration; --keys: every key with
                                     its value, meaning and allowed values
    sweep resume SWEEP_DIR [--verify] [KEY=VALUE ...]   run the planned trials that lack a valid result
                                     (overrides: cluster.*, resources.*, progress, ...)
    sweep measure SWEEP_DIR [measures=[...]] [KEY=VALUE ...]   evaluate measures on the saved
                                     networks (no training): only missing or outdated values;
                                     --retrain IDS: first write those trials' weights anew
    sweep status SWEEP_DIR           counts by status, progress, failures with their reasons
    sweep report SWEEP_DIR [--train-acc 1.0] [--bootstrap 200] [--rank-by granulated_kendall]
                     [--noise-filter] [--out DIR]
                                     figures, statistics and an HTML report (SWEEP_DIR/report/)
    sweep compact SWEEP_DIR          merge the per-trial files into a partitioned dataset
    sweep slurm [KEY=VALUE ...] --nodes N --time HH:MM:SS [--partition P] [--gpus-per-node G]
                     [--account A] [--signal-before S] [--dry-run]
                                     plan the sweep, write its SLURM batch script and submit it
                                     (a chain of jobs, each a resume; docker/README.md "SLURM")

Results (the sweep directory, the report's path, status tables, `sweep show`) go to stdout;
progress and diagnostics to stderr. Bad input ends with one line on stderr naming the key and
what is allowed, exit code 2, before anything is written or Ray starts.
"""

from __future__ import annotations

import argparse
import os
import sys

from sweep.commands import sweep_command

EXIT_USAGE = 2


def _fail(msg: str) -> int:
    print(f"sweep: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def cmd_show(overrides: list[str], keys: bool = False) -> int:
    from sweep.config import ConfigError
    from sweep.show import show

    first = next((o for o in overrides if "=" not in o and not o.startswith("~")), None)
    if first is not None:  # (a sweep directory, most likely: show composes a configuration)
        from workers.results.layout import SWEEP_FILE

        return _fail(f"{first}: not KEY=VALUE; sweep show composes a configuration from "
                     f"overrides (a sweep's own is in its {SWEEP_FILE}; sweep status DIR shows "
                     "its progress)")
    try:
        text = show(overrides, keys=keys)
    except ConfigError as e:
        return _fail(str(e))
    sys.stdout.write(text)
    return 0


def cmd_launch(overrides: list[str], plan_only: bool = False) -> int:
    from sweep.config import ConfigError
    from sweep import driver
    from sweep.measure import launch_config
    from workers.data import DataError

    cfg = None
    try:
        cfg = launch_config(overrides)
        location = (driver.plan_only if plan_only else driver.launch)(cfg)
        _result(location)
        if not plan_only and cfg.figure:
            _report_after(location)
    except (ConfigError, DataError) as e:
        return _fail(str(e))
    except driver.DispatchStopped as e:  # what finished and the resume command: on stderr
        _run_the_rest(cfg.out_dir())
        return e.exit_code
    except KeyboardInterrupt:  # outside the dispatcher (starting up, planning, the report)
        _interrupted(cfg.out_dir() if cfg is not None else None)
        return 130
    return 0


def _result(location: str) -> None:
    """The sweep directory, on stdout (``sweep launch > log`` keeps it)."""
    print(f"sweep directory: {location}  (analysis.load_results({str(location)!r}))", flush=True)


def report_current(d, page: str) -> bool:
    """Whether the report ``page`` of sweep store ``d`` exists and is newer than every result
    and measure file (a report that failed, was interrupted or was turned off while trials ran
    is not)."""
    from workers.results.layout import MEASURES, RESULT_SUFFIX, TRIALS

    try:
        made = d.entry(page).mtime_ns
    except OSError:
        return False
    newest = max((e.mtime_ns for rel in (TRIALS, MEASURES) for e in d.list(rel, RESULT_SUFFIX)),
                 default=0)
    return newest <= made


def _report_after(sweep_dir) -> None:
    """The report at the end of `sweep launch` / `sweep resume` (figure=true), its path on
    stdout; not rebuilt while it is newer than every result and measure file
    (``report_current``: nothing was written since). The sweep's results are safe whatever happens here; a
    failure only leaves the report missing."""
    from sweep.driver import log
    from workers.results.layout import PLAN_FILE, REPORT_PAGE
    from workers.results.sweep_dir import SweepDir

    from analysis.report import make_report

    d = SweepDir.of(sweep_dir)  # (the SweepDir the command opened, or the location it returned)
    page = REPORT_PAGE
    if report_current(d, page):
        log("report: unchanged (nothing new to report); rebuild it with: "
            + sweep_command("report", d))
        print(f"report: {d.uri(page)}", flush=True)
        return
    planned = d.parquet_file(PLAN_FILE).metadata.num_rows
    # 200 replicates at 10^5 trials take minutes on 2 cores (bench/README.md): fewer there
    n_boot = 200 if planned <= 20_000 else 50
    try:
        from sweep.show import launch_command

        page = make_report(d, n_boot=n_boot, progress=True, launch_command=launch_command)
        print(f"report: {page}", flush=True)
    except Exception as e:
        log(f"no report ({type(e).__name__}: {e}); write it with: "
            + sweep_command("report", d))


def _run_the_rest(sweep_dir, again: list[str] = ()) -> str | None:
    """After a stop (Ctrl-C, SIGTERM, a lost Ray runtime): the ``sweep resume`` command that
    runs what is left (with ``again``, a resume's own overrides, which the sweep does not
    store), as one line on stdout, where ``sweep launch ... > log`` keeps it (stderr says what
    finished); returns it. Nothing (None) when ``sweep_dir`` has no plan yet."""
    from workers.results.sweep_dir import SweepDir

    try:
        d = None if sweep_dir is None else SweepDir.of(sweep_dir)
        if d is None or not d.planned:
            return None
    except (OSError, ValueError):
        return None
    command = sweep_command("resume", d, *again)
    print(f"stopped; run the rest with: {command}", flush=True)
    return command


def _interrupted(sweep_dir, again: list[str] = ()) -> None:
    """After Ctrl-C outside the dispatcher: what is kept and how to go on, one line on stderr
    (and the resume command on stdout: ``_run_the_rest``)."""
    msg = "sweep: interrupted; every finished trial's result is kept"
    command = _run_the_rest(sweep_dir, again)
    if command is not None:
        msg += "; run the rest with: " + command
    print(msg, file=sys.stderr)


def cmd_resume(sweep_dir: str, overrides: list[str], verify: bool = False) -> int:
    from sweep.config import ConfigError
    from sweep import driver
    from sweep.measure import recorded_modules, with_modules
    from workers.data import DataError

    # the overrides that the command to run the rest repeats (a sweep slurm job's own
    # cluster.* name its allocation's head, gone when it ends: the chain goes on without them)
    again = [o for o in overrides if not (os.environ.get("SWEEP_SLURM_JOB")
                                          and o.startswith("cluster."))]
    d = None
    try:
        d = driver.open_out(sweep_dir, "SWEEP_DIR", write=False)  # (once: passed down)
        notes: list[str] = []
        added = recorded_modules(d, overrides, notes=notes)  # (before the names' check)
        cfg = with_modules(driver.stored_config(d, overrides), added)
        driver.check_writable(d, "SWEEP_DIR")  # (the input checked: no probe for bad input)
        for note in notes:
            driver.log(note)
        location = driver.launch(cfg, verify=verify, command="resume", out=d,
                                 again=tuple(again))
        _result(location)
        if cfg.figure:
            _report_after(d)
    except (ConfigError, DataError) as e:
        return _fail(str(e))
    except driver.DispatchStopped as e:  # what finished and the resume command: on stderr
        _run_the_rest(d, again)
        return e.exit_code
    except KeyboardInterrupt:
        _interrupted(sweep_dir if d is None else d, again)
        return 130
    return 0


def cmd_measure(sweep_dir: str, overrides: list[str], retry_errors: bool = False,
                retrain: str | None = None) -> int:
    from sweep.config import ConfigError
    from sweep.measure import MeasureStopped, measure_sweep
    from workers.data import DataError

    again = sweep_command("measure", sweep_dir, *(["--retry-errors"] if retry_errors else []),
                          *overrides)  # (--retrain: added if a stop came while retraining)
    ids = tuple(t for t in (retrain or "").split(",") if t.strip())
    if retrain is not None and not ids:
        return _fail("--retrain: no trial id; allowed: trial ids, comma-separated")
    try:
        counts = measure_sweep(sweep_dir, overrides, retry_errors, retrain=ids)
    except (ConfigError, DataError) as e:
        return _fail(str(e))
    except (KeyboardInterrupt, MeasureStopped) as e:
        left = getattr(e, "retrain_left", ())
        if left:  # stopped while retraining: those whose retraining did not end, first
            again = sweep_command("measure", sweep_dir, "--retrain", ",".join(left),
                                  *(["--retry-errors"] if retry_errors else []), *overrides)
        print(f"sweep: measure {'stopped' if isinstance(e, MeasureStopped) else 'interrupted'};"
              f" the values written are kept. Evaluate the rest with: {again}", file=sys.stderr)
        print(f"stopped; evaluate the rest with: {again}", flush=True)  # (kept by `> log`)
        return e.exit_code if isinstance(e, MeasureStopped) else 130
    return 1 if counts["failed"] else 0


def cmd_status(sweep_dir: str) -> int:
    """Counts by status, progress, and the failures with their reasons. Fast at 10^5 trials: a
    result file whose size matches the driver's journal is not opened (see
    workers.results.index.status_counts); `sweep resume` reads and checks every file."""
    import shlex

    from sweep.lock import lock_state
    from workers.results.layout import PLAN_FILE, SLURM_SCRIPT
    from workers.results.record import ResultError, Status, read_result
    from workers.results.sweep_dir import SweepDir

    try:
        d = SweepDir.checked(sweep_dir, "SWEEP_DIR")  # (reachable: one line if not)
    except ValueError as e:
        return _fail(str(e))
    if not d.planned:
        return _fail(f"SWEEP_DIR: {d} is not a sweep directory (no {PLAN_FILE})")
    planned = d.read_parquet(PLAN_FILE, columns=["trial_id"]).column("trial_id").to_pylist()
    sc = d.status_counts(planned)
    counts, failures, bad = sc.counts, sc.failures, sc.invalid
    print(f"sweep {d}: {len(planned)} trials planned")
    line, driving = lock_state(d)
    print(f"  {line}")
    from sweep.slurm import chain_status

    jobs, chain_live = chain_status(d)
    for line in jobs:  # the SLURM jobs of a sweep run by `sweep slurm`
        print(f"  {line}")
    for k in sc.ORDER:
        if counts[k]:
            print(f"  {k:9s}{counts[k]:>8d}")
    done = sc.done
    print(f"  progress {done}/{len(planned)} ({100.0 * done / max(1, len(planned)):.1f}%)")
    shown = failures[:50]
    for tid, status in shown:
        try:
            err = read_result(d, tid, columns=["error"]).column("error")[0].as_py()
        except ResultError as e:  # moved aside or rewritten meanwhile
            err = f"(unreadable now: {e})"
        err = err or ""
        print(f"  {tid} {status}: {err.splitlines()[0] if err else ''}")
    if len(failures) > len(shown):
        print(f"  ... and {len(failures) - len(shown)} more (analysis.load_results for all)")
    for _, msg in bad:
        print(f"  invalid: {msg}")
    left = counts[Status.PENDING] + counts[Status.INVALID]
    retry = _retryable(d, [t for t, st in failures if st == Status.FAILED])
    if sc.newer:  # (resume refuses them: they are a newer release's valid results)
        print(f"  next: upgrade sensitivity-sweep: {len(sc.newer)} result file(s) were written "
              "by a newer release, which `sweep resume` here refuses to run past")
    elif (left or retry) and not driving and not chain_live:
        what = [f"the {left} without a valid result"] if left else []
        if retry:
            what.append(f"the {retry} failure(s) recorded as retryable (a worker or node that "
                        "died)")
        command = (sweep_command("resume", d) if chain_live is None else
                   f"sbatch {shlex.quote(d.path(SLURM_SCRIPT))}")  # (the chain, continued)
        print(f"  next: {command} runs {' and '.join(what)}")
    return 0


def _retryable(d, failed: list[str]) -> int:
    """How many of the ``failed`` trials' records say the failure is retryable (resume runs
    them again; a trial's own failure is final)."""
    from workers.results.record import ResultError, read_result

    n = 0
    for tid in failed:
        try:
            n += bool(read_result(d, tid, columns=["retryable"]).column("retryable")[0].as_py())
        except ResultError:
            pass
    return n


def cmd_report(sweep_dir: str, train_acc: float, n_boot: int, out: str | None,
               noise_filter: bool = False, rank_by: str | None = None) -> int:
    from workers.results.layout import SWEEP_FILE
    from workers.results.storage import check_location
    from workers.results.sweep_dir import SweepDir

    try:  # the arguments, then reachable, then writable where the report goes (no probe
        # written for bad input)
        if not 0.0 <= train_acc <= 1.0:
            return _fail(f"--train-acc: {train_acc}; allowed: a number in [0, 1]")
        if n_boot < 0:
            return _fail(f"--bootstrap: {n_boot}; allowed: an integer >= 0")
        from analysis.stats.registry import RANK_BY, check_statistic

        rank_by = check_statistic(rank_by or RANK_BY, "--rank-by")  # ValueError: below
        d = SweepDir.checked(sweep_dir, "SWEEP_DIR")
        if not d.is_file(SWEEP_FILE):
            return _fail(f"SWEEP_DIR: {sweep_dir} is not a sweep directory (no {SWEEP_FILE})")
        check_location(d.location if out is None else out, "SWEEP_DIR" if out is None else "--out",
                       write=True)
        from analysis.report import make_report
        from sweep.driver import log
        from sweep.show import launch_command

        log(f"report: figures and statistics of {sweep_dir} with {n_boot} bootstrap resamples")
        page = make_report(d, train_acc=train_acc, n_boot=n_boot, out=out,
                           noise_filter=noise_filter, rank_by=rank_by, progress=True,
                           launch_command=launch_command)
    except FileNotFoundError as e:  # no trials/ yet
        return _fail(str(e))
    except ValueError as e:
        return _fail(str(e))
    except OSError as e:  # (a full disk, a read-only mount, a store that refuses)
        from workers.results.storage import PartlyPublished

        where = out if out is not None else f"{sweep_dir}/report"
        had = os.path.exists(os.path.join(where, "report.html")) if "://" not in where else True
        return _fail(f"report: could not be made in {where} ({type(e).__name__}: {e})"
                     + ("" if isinstance(e, PartlyPublished) else
                        "; nothing was replaced (a previous report stays)" if had else
                        "; nothing was written"))
    print(f"report: {page}")
    return 0


def cmd_compact(sweep_dir: str) -> int:
    from workers.results.layout import SWEEP_FILE
    from workers.results.sweep_dir import SweepDir

    try:  # reachable and writable (the compacted dataset goes into it)
        d = SweepDir.checked(sweep_dir, "SWEEP_DIR", write=True)
        if not d.is_file(SWEEP_FILE):
            return _fail(f"SWEEP_DIR: {sweep_dir} is not a sweep directory (no {SWEEP_FILE})")
    except ValueError as e:
        return _fail(str(e))
    from workers.results.compact import compact, describe

    try:
        summary = compact(d)
    except (FileNotFoundError, OSError) as e:
        return _fail(f"SWEEP_DIR: {e}")
    print(describe(summary))
    return 0


def cmd_slurm(overrides: list[str], args) -> int:
    """``sweep slurm``: sweep.slurm.prepare, then submit_sweep; on stdout the script
    (--dry-run) or the sweep directory and the first job's id."""
    from sweep.config import ConfigError
    from sweep.slurm import SlurmOptions, prepare, submit_sweep
    from workers.data import DataError

    opts = SlurmOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time,
                        partition=args.partition, account=args.account,
                        signal_before=args.signal_before)
    try:
        cfg, d, script = prepare(overrides, opts)
        if args.dry_run:
            sys.stdout.write(script)
            return 0
        job = submit_sweep(cfg, d, script)
    except (ConfigError, DataError) as e:
        return _fail(str(e))
    except RuntimeError as e:  # sbatch missing or refusing: the plan is written, nothing runs
        print(f"sweep: error: {e}", file=sys.stderr)
        return 1
    _result(str(d))
    print(f"submitted SLURM job {job} ({sweep_command('status', d)} names the jobs of the "
          "chain)", flush=True)
    return 0


def _missing(sweep_dir: str | None) -> str | None:
    """The line for a SWEEP_DIR that does not exist (a path, or a URI with no object under it)
    or cannot be reached (``SweepDir.checked``'s line), before a command reads it; None when it
    exists or none is given."""
    from workers.results.sweep_dir import SweepDir

    if sweep_dir is None:
        return None
    try:
        if SweepDir.checked(sweep_dir, "SWEEP_DIR").exists():
            return None
    except ValueError as e:  # unreachable: one line naming SWEEP_DIR
        return str(e)
    except OSError:
        return None  # the command's own check says it
    return (f"SWEEP_DIR: {sweep_dir} does not exist; allowed: a sweep directory (the one "
            "sweep launch, plan or slurm printed)")


class _Parser(argparse.ArgumentParser):
    """argparse held to the CLI's standard for bad input: one line on stderr naming what is
    wrong and what is allowed (the choices with the closest ones, the value's type, or the
    command's usage on one line), exit code 2; ``--help`` is argparse's own."""

    _KINDS = {"int": "an integer", "float": "a number"}

    def error(self, message: str):
        import difflib
        import re

        def fail(line: str):  # (the prefix of every refusal, the commands' own too: _fail)
            self.exit(EXIT_USAGE, f"sweep: error: {line}\n")

        message = message.removeprefix("argument ")
        m = re.fullmatch(r"(\S+): invalid choice: '(.*)' \(choose from (.*)\)", message)
        if m:
            arg, value, choices = m.groups()
            names = [c.strip("'") for c in choices.split(", ")]
            close = difflib.get_close_matches(value, names, n=2, cutoff=0.6)
            hint = f" (closest: {', '.join(close)})" if close else ""
            fail(f"{arg}: unknown {value!r}{hint}; allowed: {', '.join(names)}")
        m = re.fullmatch(r"(\S+?)(?:/\S+)?: invalid (int|float) value: '(.*)'", message)
        if m:
            arg, kind, value = m.groups()
            fail(f"{arg}: {value!r}; allowed: {self._KINDS[kind]}")
        commands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if commands:  # the top level: the commands
            fail(f"{message}; allowed: sweep COMMAND, COMMAND one of "
                 f"{', '.join(commands[0].choices)} (sweep --help)")
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        fail(f"{message}; allowed: {usage.replace(' [-h]', '')} ({self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    import warnings

    previous = warnings.formatwarning
    warnings.formatwarning = _user_warning  # (a note a user reads, not a source line)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # e.g. while torch and Ray import: nothing has started
        print("sweep: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous


def _ours(filename: str) -> bool:
    """Whether ``filename`` is a module of this project's packages (sweep, analysis, workers),
    wherever they are installed."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return any(path.is_relative_to(root / pkg) for pkg in ("sweep", "analysis", "workers"))


def _user_warning(message, category, filename, lineno, line=None) -> str:
    """How the command line shows a warning of the project's (a UserWarning: what a user should
    know, e.g. a measure column that mixes settings) as one "note:" line; any other warning as
    Python does."""
    import warnings

    if issubclass(category, UserWarning) and _ours(filename):
        return f"note: {message}\n"
    return warnings._formatwarning_orig(message, category, filename, lineno, line) \
        if hasattr(warnings, "_formatwarning_orig") else \
        f"{filename}:{lineno}: {category.__name__}: {message}\n"


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verify = False
    if argv[:1] == ["resume"] and "--verify" in argv[1:]:  # anywhere among the overrides
        argv = [a for a in argv if a != "--verify"]
        verify = True
    if argv[:1] == ["measure"] and "--retry-errors" in argv[2:]:  # likewise
        argv = [a for a in argv if a != "--retry-errors"]
        argv.insert(1, "--retry-errors")
    if argv[:1] == ["measure"]:  # --retrain IDS / --retrain=IDS anywhere: before SWEEP_DIR
        for i, a in enumerate(argv[2:], start=2):
            if a == "--retrain" or a.startswith("--retrain="):
                take = argv[i:i + 2] if a == "--retrain" else [a]
                del argv[i:i + len(take)]
                argv[1:1] = take
                break
    if argv[:1] == ["slurm"]:  # its options anywhere among the overrides: before them
        from sweep.slurm import cli_options_first

        argv = cli_options_first(argv)
    if argv[:1] in (["launch"], ["plan"]) and "--cfg" in argv:  # Hydra's spelling of show
        i = argv.index("--cfg")
        if argv[i + 1:i + 2] not in (["job"], ["all"]):
            return _fail("--cfg: allowed: job or all (print the composed configuration; "
                         "same as sweep show)")
        return cmd_show(argv[1:i] + argv[i + 2:])
    keys_help = ("KEY=VALUE overrides of conf/config.yaml; every key with its default, meaning "
                 "and allowed values: sweep show --keys. Lists in brackets, quoted for the "
                 "shell: 'space.width=[64,256]'.")
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="sweep", description=__doc__.split("\n\n")[0].strip("`").replace("``", ""),
        epilog="Run 'sweep COMMAND --help' for a command's arguments; README.md for the "
               "first hour (launch, status, report, pandas, adding a measure).",
        formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_launch = sub.add_parser(
        "launch", help="plan a sweep and run it, then write its report",
        description="Plan a sweep (or read its plan), run the trials that lack a result on a "
                    "local Ray or the cluster at cluster.address, evaluate the measures, write "
                    "the report. Relaunching the same configuration resumes it.",
        epilog=keys_help + " Examples: sweep launch; sweep launch dataset=fashion_mnist "
               "trials=64; sweep launch experiment=paper_small dataset=digits train.steps=2000",
        formatter_class=fmt)
    p_launch.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                          help="e.g. dataset=fashion_mnist trials=64 (--cfg job: print the "
                               "composed configuration instead, as sweep show)")
    p_plan = sub.add_parser(
        "plan", help="write the sweep directory, its plan and cost summary; run nothing",
        description="Check the configuration, draw the plan, print its cost and feasibility "
                    "summary and write the sweep directory; run nothing (sweep resume runs it).",
        epilog=keys_help, formatter_class=fmt)
    p_plan.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as for launch")
    p_show = sub.add_parser(
        "show", help="print the composed configuration (--keys: every key explained)",
        description="Print the configuration that 'sweep launch' with the same overrides "
                    "would run, as YAML; with --keys, one line per key: its value here, what it "
                    "means and, where fixed, the allowed values. Runs nothing.",
        epilog=keys_help, formatter_class=fmt)
    p_show.add_argument("--keys", action="store_true",
                        help="one line per key: value, meaning, allowed values")
    p_show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as for launch")
    from sweep.config import resumable_keys_text

    overridable = resumable_keys_text()
    p_resume = sub.add_parser(
        "resume", help="run a sweep's planned trials that lack a valid result",
        description="Run the planned trials of SWEEP_DIR that have no valid result (never "
                    "redraws the plan; finished trials are not touched).",
        epilog=f"Overrides allowed: where and how trials run and what is measured "
               f"({overridable}); the trials themselves cannot change.", formatter_class=fmt)
    p_resume.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p_resume.add_argument("--verify", action="store_true",
                          help="read and check every result file, not only those whose size or "
                               "modification time differs from the drivers' journal")
    p_resume.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                          help="overrides of the keys below")
    p_measure = sub.add_parser(
        "measure", help="evaluate measures on a sweep's saved networks (no training)",
        description="Evaluate the measures asked for on SWEEP_DIR's saved networks: only the "
                    "values missing or outdated; nothing already written changes.",
        epilog="Examples: sweep measure SWEEP_DIR 'measures=[all]'; sweep measure SWEEP_DIR "
               "'measure_modules=[./lab_measures.py]' 'measures=[weight_l2]'. Registered measures: "
               "sweep show --keys (key 'measures').", formatter_class=fmt)
    p_measure.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p_measure.add_argument("--retrain", metavar="ID[,ID...]",
                           help="first train these finished trials' networks again to write "
                                "their weights files anew (damaged or missing); the weights "
                                "only: their results stay, and a network that does not "
                                "reproduce its record is not written")
    p_measure.add_argument("--retry-errors", action="store_true",
                           help="evaluate again the values whose measure raised")
    p_measure.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                           help=f"overrides, e.g. measures=[...]; allowed keys: {overridable}")
    p_status = sub.add_parser(
        "status", help="counts by status, progress and failures of a sweep",
        description="Counts by status, progress, the lock's holder and the failures with "
                    "their reasons (stdout). Reads no result file whose size matches the "
                    "drivers' journal: fast at 10^5 trials.")
    p_status.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p_report = sub.add_parser(
        "report", help="figures, statistics and an HTML report of a sweep",
        description="Write SWEEP_DIR/report/: report.html, the figures, statistics.csv and "
                    "ranking.csv. Prints the page's path.")
    p_report.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p_report.add_argument("--train-acc", type=float, default=1.0,
                          help="only trials at train accuracy >= this (default 1.0, the paper's)")
    p_report.add_argument("--bootstrap", type=int, default=200,
                          help="bootstrap resamples for the confidence intervals (default 200)")
    from analysis.stats.registry import RANK_BY, STATISTICS

    p_report.add_argument("--rank-by", default=RANK_BY,
                          help="the statistic that orders the ranking of the measures (default "
                               f"{RANK_BY}; "
                               f"{', '.join(s for s in STATISTICS if s != RANK_BY)})")
    p_report.add_argument("--noise-filter", action="store_true",
                          help="sign-errors with Dziugaite et al.'s Monte-Carlo noise filter "
                               "(pairs of runs weighted by the Hoeffding bound on their gap "
                               "difference over the trials' test points)")
    p_report.add_argument("--out", default=None,
                          help="write the report here instead of SWEEP_DIR/report (path or URI)")
    p_compact = sub.add_parser(
        "compact", help="merge per-trial result files into a partitioned Parquet dataset",
        description="Merge SWEEP_DIR's per-trial result files into a partitioned Parquet "
                    "dataset (faster loads at 10^5 trials); the per-trial files are kept.")
    p_compact.add_argument("sweep_dir", metavar="SWEEP_DIR")
    from sweep.slurm import SIGNAL_BEFORE_S

    p_slurm = sub.add_parser(
        "slurm", help="plan a sweep and run it as a chain of SLURM batch jobs",
        description="Plan the sweep (as sweep plan), write its batch script "
                    "SWEEP_DIR/slurm/sweep.sbatch (edit it: module load lines) and submit it "
                    "with sbatch. Each job starts Ray across its nodes, runs sweep resume "
                    "against it, and before its time limit stops the driver and submits the "
                    "next job, until no trial is left. sweep status names the jobs.",
        epilog=keys_help + ' docker/README.md "SLURM".', formatter_class=fmt)
    p_slurm.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as for launch")
    p_slurm.add_argument("--nodes", type=int, default=1, help="nodes per job (default 1)")
    p_slurm.add_argument("--gpus-per-node", type=int, default=0,
                         help="GPUs per node (default 0); Ray gets them all")
    p_slurm.add_argument("--time", default="24:00:00",
                         help="each job's time limit (Slurm's format; default 24:00:00)")
    p_slurm.add_argument("--partition", default=None, help="the partition (default: the "
                         "cluster's default partition)")
    p_slurm.add_argument("--account", default=None, help="the account to charge")
    p_slurm.add_argument("--signal-before", type=int, default=None, metavar="SECONDS",
                         help="stop the driver and submit the next job this many seconds "
                              f"before the time limit (default {SIGNAL_BEFORE_S}, at most half "
                              "the limit)")
    p_slurm.add_argument("--dry-run", action="store_true",
                         help="print the batch script; write and submit nothing")
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own usage, not the top level's
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    missing = _missing(getattr(args, "sweep_dir", None))
    if missing:
        return _fail(missing)
    if args.command == "show":
        return cmd_show(args.overrides, keys=args.keys)
    if args.command in ("launch", "plan"):
        return cmd_launch(args.overrides, plan_only=args.command == "plan")
    if args.command == "resume":
        return cmd_resume(args.sweep_dir, args.overrides, verify or args.verify)
    if args.command == "slurm":
        return cmd_slurm(args.overrides, args)
    if args.command == "measure":
        return cmd_measure(args.sweep_dir, args.overrides, args.retry_errors, args.retrain)
    try:
        if args.command == "report":
            return cmd_report(args.sweep_dir, args.train_acc, args.bootstrap, args.out,
                              args.noise_filter, args.rank_by)
        if args.command == "compact":  # a partial copy is never published (manifest last)
            return cmd_compact(args.sweep_dir)
    except KeyboardInterrupt:
        print(f"sweep: {args.command} interrupted; nothing half-written is published",
              file=sys.stderr)
        return 130
    return cmd_status(args.sweep_dir)


if __name__ == "__main__":
    sys.exit(main())
