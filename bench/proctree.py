"""Sample the memory of a process and all its descendants from ``/proc`` (Linux)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

PROC = Path("/proc")


def parent_map() -> dict[int, list[int]]:
    """Map each pid to the pids of its children."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children = parent_map()
    tree = [root]
    for pid in tree:
        tree.extend(children.get(pid, ()))
    return tree


def memory_kb(pid: int) -> int:
    """Proportional set size of ``pid`` in kB (RSS where PSS is unavailable)."""
    try:
        for line in Path(PROC, str(pid), "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    try:
        resident_pages = int(Path(PROC, str(pid), "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGESIZE") // 1024


def tree_memory_kb(root: int) -> tuple[int, int]:
    """Total memory of ``root`` and its descendants, and how many processes that is."""
    tree = process_tree(root)
    return sum(memory_kb(pid) for pid in tree), len(tree)


class TreeMemorySampler(threading.Thread):
    """Background thread recording the peak total PSS of a process tree."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_kb = 0
        self.peak_processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total, count = tree_memory_kb(self.root)
            self.peak_kb = max(self.peak_kb, total)
            self.peak_processes = max(self.peak_processes, count)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024
