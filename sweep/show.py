"""``sweep show``: the composed configuration, and every key with its default and allowed values.

The descriptions are the comments of ``conf/config.yaml`` and ``conf/dataset/<name>.yaml`` (one
place documents a key); the allowed values of the keys that take a fixed set come from the code
that checks them (sweep/config.py, the activation and optimizer tables, the measure registry).
"""

from __future__ import annotations

import re
from pathlib import Path

from sweep.commands import sweep_command
from sweep.config import (FACTORS, INFEASIBLE, SAMPLERS, available, composed, conf_dir,
                          schema_keys)

_KEY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(.*)$")

GROUP_DOCS = {
    "experiment": "the experiment (conf/experiment/<name>.yaml): its space, plan and budget",
    "dataset": "the data set (conf/dataset/<name>.yaml); its keys are dataset.*",
}


def key_docs(path: Path, prefix: str = "") -> dict[str, str]:
    """dotted key -> its comment in a YAML config file: the text after ``#`` on the key's line
    and on the comment lines indented below it (continuations). Keys of the ``defaults`` list
    and comment blocks at a key's own indent (section introductions) are not descriptions."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    last: tuple[int, str] | None = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            if last is not None and indent > last[0] and stripped.startswith("#"):
                text = stripped.lstrip("#").strip()
                if text:
                    docs[last[1]] = f"{docs.get(last[1], '')} {text}".strip()
            continue
        m = _KEY.match(line)
        if m is None:  # a list item (defaults) or a continued value
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name = ".".join([k for _, k in stack] + [m.group(2)])
        stack.append((indent, m.group(2)))
        value, _, comment = m.group(3).partition("#")
        if name.split(".")[0] == "defaults":
            last = None
            continue
        key = prefix + name
        last = (indent, key)
        if comment.strip():
            docs[key] = comment.strip()
    return docs


def allowed_values() -> dict[str, list[str]]:
    """The keys that take one of a fixed set of values (or a list of them), with that set."""
    from workers.measures import available as measures_available
    from workers.names import ACTIVATION_NAMES, OPTIMIZERS

    space = [k.split(".", 1)[1] for k in schema_keys() if k.startswith("space.")]
    return {
        "experiment": available("experiment"),
        "dataset": available("dataset"),
        "space.activation": list(ACTIVATION_NAMES),
        "space.optimizer": list(OPTIMIZERS),
        "plan.sampler": list(SAMPLERS),
        "plan.infeasible": list(INFEASIBLE),
        "plan.factors": list(FACTORS),
        "plan.grid": space,
        "measures": ["all", *measures_available(())],
    }


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def data_note(cfg) -> str | None:
    """Why ``sweep plan`` / ``sweep launch`` of ``cfg`` would be refused for its data set
    (workers.data.check_available: the files missing under the root it looks in, and how to get
    them), or None when the data set is there (or will be downloaded)."""
    from workers.data import DataError, check_available

    try:
        check_available(cfg.dataset.name, cfg.dataset.root, cfg.dataset.download)
    except DataError as e:
        return f"{e}; sweep plan and sweep launch refuse this configuration until then"
    return None


def show(overrides: list[str] | tuple[str, ...] = (), keys: bool = False) -> str:
    """The text ``sweep show [--keys] [overrides]`` prints: the composed configuration as YAML,
    headed by the experiment, data set and the command that launches it (and a ``# note:`` line
    when the data set's files are missing on this machine: ``data_note``); with ``keys``, one
    line per key: its value in this composition, what it means and, where fixed, the allowed
    values. Raises ConfigError for bad overrides (as ``sweep launch`` would)."""
    import yaml

    from sweep.config import from_dict

    d = composed(overrides)
    cfg = from_dict(d)  # every value checked, as a launch would
    experiment = next((o.partition("=")[2] for o in overrides
                       if o.partition("=")[0].lstrip("+") == "experiment"), "demo")
    launch = sweep_command("launch", *overrides)
    head = [f"# experiment {experiment}, data set {cfg.dataset.name}, {cfg.trials} trials; "
            f"sweep directory: {cfg.out_dir()}",
            f"# launch it with: {launch}"]
    note = data_note(cfg)
    if note:
        head.append(f"# note: {note}")
    if not keys:
        class Dumper(yaml.SafeDumper):  # sections as blocks, lists of values on one line
            pass

        Dumper.add_representer(list, lambda dumper, v: dumper.represent_sequence(
            "tag:yaml.org,2002:seq", v, flow_style=True))
        # the measure settings other than the defaults (null) only: all of them are listed,
        # with their defaults, by --keys
        d = {**d, "measure_settings": {
            m: {k: v for k, v in st.items() if v is not None}
            for m, st in (d.get("measure_settings") or {}).items()
            if any(v is not None for v in st.values())}}
        return "\n".join(head) + "\n" + yaml.dump(d, Dumper=Dumper, sort_keys=False,
                                                  default_flow_style=False, width=100)
    docs = {**key_docs(conf_dir() / "config.yaml"),
            **key_docs(conf_dir() / "dataset" / f"{cfg.dataset.name}.yaml", "dataset."),
            **GROUP_DOCS}
    from workers.measures import configurable_settings, setting_rule

    for name, defaults in configurable_settings().items():
        for k, v in defaults.items():
            kind, lowest = setting_rule(name, k)
            docs[f"measure_settings.{name}.{k}"] = (
                f"null = the measure's default, {'all' if v is None else v}"
                + (f"; an integer >= {lowest} or all (every point)" if kind == "points" else "")
                + ("; 0 = off" if kind == "points" and lowest == 0 else "")
                + ("; sets the six PAC-Bayes measures" if name == "pacbayes" else ""))
    from workers.results.measure_values import METRIC_ALIASES

    base = (yaml.safe_load((conf_dir() / "config.yaml").read_text()) or {}).get("metrics", {})
    for alias, targets in METRIC_ALIASES.items():  # (an older name beside the key in use)
        key = f"metrics.{alias}"
        if key in docs:
            names = ", ".join(f"measure_settings.{m}.{k}" for m, k in targets)
            at_default = alias in base and d.get("metrics", {}).get(alias) == base[alias]
            docs[key] = (f"older name of {names}"
                         + ("; at this default it sets nothing (that key's value is used)"
                            if at_default else "") + f"; {docs[key]}")
    allowed = allowed_values()
    flat = _flat(d)
    flat = {"experiment": experiment, "dataset": cfg.dataset.name, **flat}
    rows = []
    for key, value in flat.items():
        text = docs.get(key, "")
        if key in allowed:
            text = f"{text}; allowed: {', '.join(allowed[key])}" if text else \
                f"allowed: {', '.join(allowed[key])}"
        rows.append((key, _value(value), text))
    width_k = max(len(r[0]) for r in rows)
    width_v = min(24, max(len(r[1]) for r in rows))
    lines = head + [f"# {'key':<{width_k}}  {'value':<{width_v}}  meaning",
                    "# (override any key on the command line: KEY=VALUE; lists in brackets, "
                    "quoted: 'space.width=[64,256]')"]
    for key, value, text in rows:
        lines.append(f"{key:<{width_k}}  {value:<{width_v}}  {text}".rstrip())
    return "\n".join(lines) + "\n"


SKIP = ("name", "out", "progress", "figure", "cluster.", "resources.")  # not what a sweep is
# ...except where the identity holds it: the memory a plan.infeasible=replace draw depends on
KEEP = {"resources.worker_memory_gb": lambda c: (c.get("plan") or {}).get("infeasible") == "replace"}


def _literal(v) -> str:
    """A value as a command-line override writes it: a string with special characters in
    double quotes, a literal ``${`` (a stored value is never an interpolation) as Hydra's
    escape ``\\${`` (k backslashes before it doubled, as Hydra's grammar reads them back)."""
    import re

    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_literal(x) for x in v) + "]"
    if isinstance(v, str) and (not v or any(c in v for c in " ,[]{}()='\"$")):
        v = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", v)
        return '"' + v.replace('"', '\\"') + '"'
    return _value(v)


def launch_command(config: dict) -> tuple[str, bool]:
    """(the ``sweep launch`` command that composes a stored sweep's ``config`` (``sweep.json``:
    asdict of its SweepConfig), whether it is exact). The command names the experiment and data
    set and overrides every key whose value differs from theirs (the sweep directory, the
    cluster and resources left out); it is exact when composing it gives the stored sweep's
    identity. Needs this version's keys: a key it does not know makes it inexact."""
    from dataclasses import asdict

    from sweep.config import ConfigError, compose, from_dict

    name, data = config.get("name"), (config.get("dataset") or {}).get("name")
    head = [f"experiment={name}"] if name in available("experiment") else []
    head += [f"dataset={data}"] if data else []
    over, exact = [], False
    try:
        try:
            base = _flat(asdict(compose(head)))
        except ConfigError:  # the experiment's own values do not fit this data set
            base = _flat(composed(head))
        if "measure_settings" not in config:  # (written before the key: the defaults)
            from sweep.config import MeasureSettings

            config = {**config, "measure_settings": asdict(MeasureSettings())}
        stored = _flat(config)
        if "measures" in base and _same_measures(base["measures"], stored.get("measures"),
                                                 stored.get("measure_modules") or ()):
            base["measures"] = stored["measures"]
        over = [f"{k}={_literal(v)}" for k, v in stored.items()
                if (not k.startswith(SKIP) or (k in KEEP and KEEP[k](config))) and k in base
                and _literal(v) != _literal(base[k])]
        wanted = from_dict(config).identity_hash()
        exact = compose(head + over).identity_hash() == wanted and set(stored) <= set(base)
    except (ConfigError, TypeError, ValueError, KeyError):  # the overrides found so far stand
        exact = False
    return sweep_command("launch", *head, *over), exact


def _same_measures(base, stored, modules) -> bool:
    """Whether the stored (expanded) measure list is what ``base`` (maybe ``[all]``) means."""
    from workers.measures import available as measures_available

    if stored is None:
        return False
    base = list(base)
    if base == ["all"]:
        try:
            base = list(measures_available(tuple(modules)))
        except (ImportError, ValueError):
            return False
    return sorted(base) == sorted(stored)
