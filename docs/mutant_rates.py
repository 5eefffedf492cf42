"""Kill rate per module from mutmut's results (run by `make mutants` after `mutmut run`; docs/testing.md).

    python docs/mutant_rates.py              # the table
    python docs/mutant_rates.py --survivors  # and every surviving mutant, by function (`mutmut show NAME` diffs one)
    python docs/mutant_rates.py --untested   # and the functions whose mutants no fast test reaches, with counts

killed / (killed + survived + timeout + suspicious): a timeout counts as detected (the mutant made the tests hang,
mutmut stopped them), as mutmut itself counts it. "no tests" mutants are in code that none of the fast tests in
[tool.mutmut] reaches (loaders, the trainer, generation: the slow tests guard them); they are listed apart, not counted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict

NAME = re.compile(r"^(?P<module>.+?)\.x(?:_|ǁ)(?P<function>.+)__mutmut_\d+$")
DETECTED = ("killed", "timeout")
COUNTED = ("killed", "survived", "timeout", "suspicious")


def results() -> list[tuple[str, str]]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], check=True,
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and NAME.match(name):
            rows.append((name, status))
    return rows


def main() -> None:
    rows = results()
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    untested: Counter[str] = Counter()
    for name, status in rows:
        m = NAME.match(name)
        assert m is not None
        by_module[m["module"]][status] += 1
        if status == "survived":
            survivors[f"{m['module']}.{m['function'].replace('ǁ', '.')}"].append(name)
        if status == "no tests":
            untested[f"{m['module']}.{m['function'].replace('ǁ', '.')}"] += 1
    print("| module | killed | survived | timeout | killed / counted | no tests | other |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for module, c in sorted(by_module.items()):
        counted = sum(c[s] for s in COUNTED)
        detected = sum(c[s] for s in DETECTED)
        rate = f"{detected}/{counted} = {100 * detected / counted:.1f}%" if counted else "-"
        other = sum(n for s, n in c.items() if s not in (*COUNTED, "no tests"))
        print(f"| {module} | {c['killed']} | {c['survived']} | {c['timeout']} | {rate} | {c['no tests']} | {other} |")
    if "--survivors" in sys.argv:
        for function, names in sorted(survivors.items()):
            print(f"\n{function}: {len(names)} survived")
            for name in names:
                print(f"    {name}")
    if "--untested" in sys.argv:
        print()
        for function, n in sorted(untested.items()):
            print(f"{function}: {n} not reached by the fast tests")


if __name__ == "__main__":
    main()
