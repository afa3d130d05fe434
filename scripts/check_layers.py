#!/usr/bin/env python3
"""Fails when a source file includes a header from a higher layer (docs/DESIGN.md, "Rooms and
dependencies"). Layers, bottom to top:

    engine/ (0)  <-  kernels/ (1)  <-  model/ (2)  <-  surgery/ (3)  <-  cli/, api/, include/ (4)

A file may include headers of its own layer and of any layer below it. Only quoted includes
("dir/file.h") are project headers; the include path has the repository root and include/ (the
public header, <engine/engine.h>), so a quoted name resolves to the first of those that holds it.
Usage: check_layers.py [REPO_ROOT]; prints each upward include and exits 1 if there is any.

PENDING lists upward includes that are known and wait for their fix: reported but not failing
the check; a new upward include fails, and so does an entry of PENDING that no longer occurs, so
the list can only shrink. It is empty: the last ones (issue 17, item 2: the trainer took a plan
and ran head scans) went when the training run became plan-free.
"""
import pathlib
import re
import sys

LAYERS = {"engine": 0, "kernels": 1, "model": 2, "surgery": 3, "cli": 4, "api": 4, "include": 4}
SOURCE_SUFFIXES = {".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh"}
PENDING: set = set()
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def layer_of(root: pathlib.Path, path: pathlib.Path):
    """The layer of a file under root, by its top-level folder; None outside the layered rooms."""
    top = path.relative_to(root).parts[0]
    return LAYERS.get(top)


def resolve(root: pathlib.Path, includer: pathlib.Path, name: str):
    for base in (includer.parent, root, root / "include"):
        candidate = base / name
        if candidate.is_file():
            return candidate.resolve()
    return None  # a system or third-party header with quotes (e.g. "absl/...", "nlohmann/...")


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent.parent)
    root = root.resolve()
    names = {v: k for k, v in LAYERS.items()}
    violations = []
    pending_seen = set()
    checked = 0
    for room in LAYERS:
        for path in sorted((root / room).rglob("*")):
            if path.suffix not in SOURCE_SUFFIXES or not path.is_file():
                continue
            checked += 1
            mine = layer_of(root, path)
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                target = resolve(root, path, m.group(1))
                if target is None or root not in target.parents:
                    continue
                theirs = layer_of(root, target)
                if theirs is not None and theirs > mine:
                    key = (str(path.relative_to(root)), m.group(1))
                    if key in PENDING:
                        pending_seen.add(key)
                        continue
                    violations.append(
                        f"{path.relative_to(root)}:{number}: includes \"{m.group(1)}\" "
                        f"({target.relative_to(root).parts[0]}/, layer {theirs}) from layer "
                        f"{mine} ({names[mine]}/): a lower room never includes a higher one")
    for includer, header in sorted(PENDING - pending_seen):
        violations.append(f"{includer}: no longer includes \"{header}\": remove it from PENDING "
                          "in scripts/check_layers.py")
    for includer, header in sorted(pending_seen):
        print(f"{includer}: includes \"{header}\" (pending, issue 17)")
    for v in violations:
        print(v)
    if checked == 0:
        print(f"check_layers: no source files under {root}")
        return 1
    print(f"check_layers: {checked} files, {len(violations)} errors, "
          f"{len(pending_seen)} pending upward includes")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
