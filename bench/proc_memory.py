"""The memory of process trees, read from /proc: summed RSS and PSS, and each process's high-water mark.

PSS (proportional set size) splits each page shared between processes (e.g. since a fork) among
them, so summing it over a tree counts every page once; summing RSS counts shared pages in every
process that maps them.
"""
from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field


def read_kib(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """Read the named kB fields of a /proc file; a process gone meanwhile gives none."""
    values = {}
    try:
        with open(path) as lines:
            for line in lines:
                name, _, rest = line.partition(":")
                if name in names:
                    values[name] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        pass
    return values


def parent_map() -> dict[int, list[int]]:
    """Map every process id to its children's (/proc/<pid>/task/<tid>/children needs a kernel option)."""
    children = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command name may hold spaces and parentheses; the fields after its ")" do not.
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children[parent].append(int(entry))
    return children


@dataclass
class TreeMemory:
    """Peaks of one group of process trees, sampled; roots are long-lived, descendants may not be."""

    roots: list[int]
    transient_descendants: bool
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    largest_hwm_kib: int = 0
    largest_transient_hwm_kib: int = 0
    long_lived_rss_first_kib: int | None = None
    long_lived_rss_last_kib: int = 0
    processes_seen: set = field(default_factory=set)
    transient_seen: set = field(default_factory=set)

    def summary(self) -> dict:
        mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
        return {
            "peak_rss_total_mib": mib(self.peak_rss_kib),
            "peak_pss_total_mib": mib(self.peak_pss_kib),
            "largest_process_vmhwm_mib": mib(self.largest_hwm_kib),
            "long_lived_rss_first_mib": mib(self.long_lived_rss_first_kib or 0),
            "long_lived_rss_last_mib": mib(self.long_lived_rss_last_kib),
            "processes_seen": len(self.processes_seen),
            "work_horses_seen": len(self.transient_seen),
            "largest_work_horse_vmhwm_mib": mib(self.largest_transient_hwm_kib),
        }


class MemorySampler(threading.Thread):
    """Samples VmRSS, VmHWM and Pss of every process in each group's trees until stopped."""

    def __init__(self, groups: dict[str, TreeMemory], interval: float):
        super().__init__(daemon=True)
        self.groups = groups
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        self.sample()

    def sample(self) -> None:
        children = parent_map()
        for tree in self.groups.values():
            rss_total = pss_total = long_lived_rss = 0
            pending = [(pid, False) for pid in tree.roots]
            while pending:
                pid, descendant = pending.pop()
                pending.extend((child, True) for child in children.get(pid, ()))
                status = read_kib(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
                if "VmRSS" not in status:
                    continue  # gone, or a zombie
                rss_total += status["VmRSS"]
                pss_total += read_kib(f"/proc/{pid}/smaps_rollup", ("Pss",)).get("Pss", 0)
                tree.largest_hwm_kib = max(tree.largest_hwm_kib, status.get("VmHWM", 0))
                tree.processes_seen.add(pid)
                if descendant and tree.transient_descendants:
                    tree.transient_seen.add(pid)
                    tree.largest_transient_hwm_kib = max(tree.largest_transient_hwm_kib, status.get("VmHWM", 0))
                else:
                    long_lived_rss += status["VmRSS"]
            if not rss_total:
                continue
            tree.peak_rss_kib = max(tree.peak_rss_kib, rss_total)
            tree.peak_pss_kib = max(tree.peak_pss_kib, pss_total)
            if tree.long_lived_rss_first_kib is None:
                tree.long_lived_rss_first_kib = long_lived_rss
            tree.long_lived_rss_last_kib = long_lived_rss
