# Copyright: rpatch developers
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Filters of the ``rpatch.live.rollout`` playbook: the per-host outcome summary."""

# What a host's outcome fact means when the summary is printed. ``started`` is left on a host
# whose batch never finished with it (it became unreachable in the middle of the batch).
OUTCOME_WORDS = {
    "started": "interrupted",
}


def rollout_summary(hosts, hostvars):
    """One entry per host of the rollout, in inventory order: ``host``, ``outcome``, ``phase``,
    ``detail``. A host without an outcome never got through the preparation (unreachable)."""
    summary = []
    for host in hosts:
        facts = hostvars.get(host) or {}
        outcome = facts.get("rpatch_outcome") or "unreachable"
        summary.append({
            "host": host,
            "outcome": OUTCOME_WORDS.get(outcome, outcome),
            "phase": facts.get("rpatch_phase") or "",
            "detail": facts.get("rpatch_detail") or "",
        })
    return summary


def rollout_summary_lines(summary):
    """The summary as aligned text lines, one per host, for a human reading the play's output."""
    if not summary:
        return []
    width = max(len(entry["host"]) for entry in summary)
    lines = []
    for entry in summary:
        line = "%-*s  %-16s %-7s %s" % (width, entry["host"], entry["outcome"], entry["phase"],
                                        entry["detail"])
        lines.append(line.rstrip())
    return lines


def process_results(result):
    """One line from an ``rpatch.live.patch`` result: each result word with its count and PIDs,
    e.g. ``applied 2 (pids 14 15), skipped 1 (pid 16)``."""
    processes = (result or {}).get("processes") or []
    counts = (result or {}).get("counts") or {}
    parts = []
    for word, count in counts.items():
        if not count:
            continue
        pids = [str(p.get("pid")) for p in processes if p.get("result") == word]
        parts.append("%s %d (%s %s)" % (word, count, "pid" if len(pids) == 1 else "pids",
                                        " ".join(pids)))
    return ", ".join(parts) or "no matching process"


class FilterModule:
    """The rollout summary filters."""

    def filters(self):
        return {
            "rollout_summary": rollout_summary,
            "rollout_summary_lines": rollout_summary_lines,
            "process_results": process_results,
        }
