"""One progress bar for a cohort (jobs, images, time left) and the summary at its end.

Example:
    >>> from esegeta_monai.jobs.progress import summarise
    >>> from esegeta_monai.jobs.record import Record
    >>> records = [Record("a", "saliency", "argmax1", "ok", 2.0), Record("b", "saliency", "argmax1", "failed", 1.0)]
    >>> summary = summarise(records, skipped=3)
    >>> summary["counts"], summary["methods"]["saliency"]["mean_seconds"]
    ({'ok': 1, 'failed': 1, 'timeout': 0, 'empty': 0, 'skipped': 3}, 2.0)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from esegeta_monai.jobs.record import STATUSES, Record

__all__ = ["CohortProgress", "summarise", "summary_lines"]


class CohortProgress:
    """A tqdm bar over the jobs of a run, with images done and the count of failures."""

    def __init__(self, jobs: int, images: int, enabled: bool = True, skipped: int = 0):
        self.images, self.skipped = images, skipped
        self.images_done = 0
        self.failed = 0
        self.bar = tqdm(total=jobs, unit="job", desc="explaining", disable=not enabled or jobs == 0, dynamic_ncols=True)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"images {self.images_done}/{self.images}" + (f", {self.failed} not ok" if self.failed else "")
                                 + (f", {self.skipped} skipped" if self.skipped else ""), refresh=False)

    def record(self, record: Record) -> None:
        if record.kind != "map":  # the bar counts maps; predictions and figures come with them
            return
        self.failed += not record.ok
        self._postfix()
        self.bar.update(1)

    def image_done(self) -> None:
        self.images_done += 1
        self._postfix()
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def summarise(records: Sequence[Record], skipped: int = 0, seconds: float | None = None) -> dict[str, Any]:
    """Counts per status of the maps (and ``skipped``: map jobs a previous run had done), per
    method the counts and the mean seconds of its ok jobs, and per other kind of output
    (``prediction``, ``figure``, ``scene``) its counts per status."""
    others: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        if record.kind != "map":
            others[record.kind][record.status] += 1
    records = [r for r in records if r.kind == "map"]
    counts = Counter(r.status for r in records)
    methods: dict[str, dict[str, Any]] = defaultdict(lambda: {**{s: 0 for s in STATUSES}, "mean_seconds": None})
    times: dict[str, list[float]] = defaultdict(list)
    for record in records:
        methods[record.method][record.status] += 1
        if record.ok:
            times[record.method].append(record.seconds)
    for method, values in times.items():
        methods[method]["mean_seconds"] = round(sum(values) / len(values), 3)
    return {"counts": {**{s: counts.get(s, 0) for s in STATUSES}, "skipped": skipped}, "methods": dict(methods),
            **({"outputs": {kind: dict(c) for kind, c in others.items()}} if others else {}),
            **({"seconds": round(seconds, 1)} if seconds is not None else {})}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as lines of text: the counts, then one row per method."""
    counts = summary["counts"]
    head = ", ".join(f"{counts[k]} {k}" for k in (*STATUSES, "skipped") if counts.get(k) or k == "ok")
    if summary.get("seconds") is not None:
        head += f" in {summary['seconds']:.1f} s"
    lines = [head]
    if summary["methods"]:
        width = max(len(m) for m in summary["methods"])
        lines.append(f"  {'method'.ljust(width)}  {'ok':>4} {'failed':>6} {'timeout':>7} {'empty':>5}  s/job")
        for method, row in summary["methods"].items():
            mean = f"{row['mean_seconds']:.2f}" if row["mean_seconds"] is not None else "-"
            lines.append(f"  {method.ljust(width)}  {row['ok']:>4} {row['failed']:>6} {row['timeout']:>7} {row['empty']:>5}  {mean}")
    for kind, kind_counts in (summary.get("outputs") or {}).items():
        lines.append(f"  {kind}s: " + ", ".join(f"{n} {status}" for status, n in sorted(kind_counts.items())))
    return lines
