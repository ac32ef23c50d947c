#!/usr/bin/env python3
"""Compares two captures of the test suite's --json outputs (RPATCH_TEST_CAPTURE=DIR, see
tests/common/mod.rs) to show what a change did to the JSON interface.

    scripts/json-captures.py BEFORE_DIR AFTER_DIR

Each run is reduced to its shape: the exit code, every key path with the type of its value,
enum-like words (snake_case) kept as they are, numbers, addresses, paths and other text
replaced by placeholders; error messages are kept with numbers, addresses and temporary paths
masked, so a changed message shows. Runs are paired per test, in order. Prints each difference
once with the tests it occurs in, and exits 1 when there is any.
"""

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

WORD = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
HEX = re.compile(r"0x[0-9a-f]+")
NUM = re.compile(r"\b\d+\b")
TMP = re.compile(r"/tmp/[^\s:;,)'\"]+")


def mask(text):
    text = TMP.sub("<tmp>", text)
    text = HEX.sub("<hex>", text)
    return NUM.sub("<n>", text)


def shape(value, path, out, message=False):
    if isinstance(value, dict):
        out.add(f"{path}: object")
        for k, v in value.items():
            shape(v, f"{path}.{k}", out, message=(k == "message" and path.endswith("error")))
    elif isinstance(value, list):
        out.add(f"{path}: array")
        for v in value:
            shape(v, f"{path}[]", out)
    elif isinstance(value, bool):
        out.add(f"{path}: bool")
    elif isinstance(value, (int, float)):
        out.add(f"{path}: number")
    elif value is None:
        out.add(f"{path}: null")
    elif message:
        out.add(f"{path}: message {mask(value)!r}")
    elif HEX.fullmatch(value):
        out.add(f"{path}: hex")
    elif WORD.match(value):
        out.add(f"{path}: {value!r}")
    elif value == "":
        out.add(f"{path}: empty string")
    else:
        out.add(f"{path}: string")


def runs(directory):
    tests = {}
    for file in sorted(Path(directory).glob("*.jsonl")):
        entries = []
        for line in file.read_text().splitlines():
            run = json.loads(line)
            found = set()
            found.add(f"exit {run['code']}")
            try:
                shape(json.loads(run["stdout"]), "$", found)
            except json.JSONDecodeError:
                found.add("stdout: not JSON")
            command = next((a for a in run["args"] if not a.startswith("-")), "?")
            entries.append((command, found))
        tests[file.stem] = entries
    return tests


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    before, after = runs(sys.argv[1]), runs(sys.argv[2])
    differences = defaultdict(set)
    for test in sorted(set(before) | set(after)):
        a, b = before.get(test, []), after.get(test, [])
        if len(a) != len(b):
            differences[f"number of runs differs ({len(a)} before, {len(b)} after)"].add(test)
        for (command, x), (_, y) in zip(a, b):
            for item in sorted(x - y):
                differences[f"{command}: only before: {item}"].add(test)
            for item in sorted(y - x):
                differences[f"{command}: only after:  {item}"].add(test)
    for difference in sorted(differences):
        tests = sorted(differences[difference])
        shown = ", ".join(tests[:4]) + (f" (+{len(tests) - 4})" if len(tests) > 4 else "")
        print(f"{difference}\n    in {shown}")
    print(f"{len(differences)} difference(s) in {len(before)} tests before, {len(after)} after")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
