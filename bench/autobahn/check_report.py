"""Reads an Autobahn fuzzingclient report (index.json) and prints one summary line.

    python check_report.py INDEX_JSON AGENT EXPECTED_CASES NOTE

Exits 1, listing the cases, when a case's behavior is FAILED or its closing behavior is
FAILED or UNCLEAN, or when the report holds another number of cases than EXPECTED_CASES (a run
cut short). Runs under Python 2.7 (the suite's own) and 3.
"""
from __future__ import print_function

import json
import sys


def main(argv):
    path, agent, expected, note = argv[1], argv[2], int(argv[3]), argv[4]
    with open(path) as f:
        cases = json.load(f).get(agent, {})
    counts = {}
    bad = []
    for case_id in sorted(cases, key=lambda c: [int(p) for p in c.split(".")]):
        result = cases[case_id]
        behavior, close = result.get("behavior"), result.get("behaviorClose")
        counts[behavior] = counts.get(behavior, 0) + 1
        if behavior == "FAILED" or close in ("FAILED", "UNCLEAN"):
            bad.append("%s (behavior %s, close %s)" % (case_id, behavior, close))
    shown = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED"]
    shown += sorted(b for b in counts if b not in shown)
    parts = ["%d %s" % (counts.get(b, 0), b) for b in shown]
    print("autobahn: %s of %d (%s)" % (", ".join(parts), len(cases), note))
    ok = True
    if bad:
        print("autobahn: failed cases: " + "; ".join(bad), file=sys.stderr)
        ok = False
    if len(cases) != expected:
        print("autobahn: the report has %d cases, expected %d" % (len(cases), expected),
              file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
