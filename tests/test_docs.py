"""The README's "Layout" names every module of the project, in its package's entry: a module
added, moved or removed without the map following fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIM_MARK = "this import path is kept for one release"


def layout_entries() -> dict[str, str]:
    """``"dir/"`` -> the text of its bullet in README's Layout section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    entries, key = {}, None
    for line in section.splitlines():
        m = re.match(r"- `([\w/]+/)`", line)
        if m:
            key = m.group(1)
            entries[key] = line
        elif key and line.startswith("  "):
            entries[key] += " " + line.strip()
        else:
            key = None
    return entries


def test_layout_names_every_module_in_its_package():
    entries = layout_entries()
    missing = []
    for pkg in ("sweep", "workers", "analysis"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "__init__.py" or SHIM_MARK in path.read_text():
                continue
            folder = path.parent.relative_to(ROOT).as_posix() + "/"
            if f"`{path.name}`" not in entries.get(folder, ""):
                missing.append(f"{folder}{path.name}")
    assert not missing, f"README Layout lacks: {missing}"


def test_layout_names_no_module_that_does_not_exist():
    entries = layout_entries()
    gone = [f"{folder}{name}" for folder, line in entries.items()
            for name in re.findall(r"`(\w+\.py)`", line)
            if (ROOT / folder).is_dir() and not (ROOT / folder / name).exists()]
    assert not gone, f"README Layout names modules that do not exist: {gone}"
