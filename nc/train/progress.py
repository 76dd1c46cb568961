"""A running job's progress, as a small JSON file beside its part (`lr-<lr>-seed<s>.progress.json`), written
atomically by the job after every epoch and read by the driver for its status block: no scraping of logs.

Fields: label, epoch (epochs done), epochs, seconds per epoch over this process's epochs, an ETA in seconds at that
pace, the status (running / complete / diverged) and the time it was written (UTC, ISO 8601).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from nc import files


def fmt(seconds: float) -> str:
    """A duration for people: 2h05m, 3m04s or 12s."""
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def path_for(part: Path) -> Path:
    """The progress file of a part file: its name with `.progress.json` for `.nc`."""
    part = Path(part)
    return part.with_name(part.stem + ".progress.json")


def write(path, label: str, epoch: int, epochs: int, seconds_per_epoch: float, status: str = "running") -> None:
    path = Path(path)
    info = {"label": label, "epoch": epoch, "epochs": epochs, "seconds_per_epoch": seconds_per_epoch,
            "eta_s": seconds_per_epoch * (epochs - epoch), "status": status,
            "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    files.write_json(path, info, indent=None)


def read(path) -> dict | None:
    """The progress of a job, or None when it has not written any yet (or the file is unreadable)."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and {"label", "epoch", "epochs"} <= set(info) else None


def line(info: dict) -> str:
    """`cell lr=0.05: epoch 8/100, 2.1 s/epoch, about 3m13s left`."""
    if info.get("status", "running") != "running":
        return f"{info['label']}: {info['status']} at epoch {info['epoch']}/{info['epochs']}"
    return (f"{info['label']}: epoch {info['epoch']}/{info['epochs']}, {info['seconds_per_epoch']:.3g} s/epoch, "
            f"about {fmt(info['eta_s'])} left")
