"""Submitted jobs: their records beside the parts, and stopping them for good.

Every submitted job is recorded, atomically and at submit time, beside its part (the part's name with `.job.json`,
e.g. `<cube_dir>/parts/<cell>/lr-0.05-seed0.job.json`): the job id, the executor, the submit time, the parameter
hash and the submitit folder. A restarted driver reads these records to find its Slurm jobs (nc.runs.executors).

Stopping is by construction: `stop_local` / `stop_slurm` cancel the jobs, wait until they are gone (at most
STOP_WAIT_S), SIGKILL what is left (local: each job's process group; Slurm: scancel --signal=KILL) and wait again,
so that a driver that returns from them has no job left. Local jobs die with their driver even when it is
SIGKILLed (PR_SET_PDEATHSIG on each job's controller, which leads a process group of its own).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

from nc import files, runs
from nc.runs import params as params_mod

STOP_WAIT_S = 30.0  # a stopped driver waits this long for its cancelled jobs to go before it SIGKILLs them
STOP_MARGIN_S = 2 * STOP_WAIT_S + 15.0  # --deadline: the driver begins to stop this long before it (two waits, merge)
RECORD_SUFFIX = ".job.json"


class DeadlineReached(RuntimeError):
    """The sweep's --deadline less STOP_MARGIN_S has come: the driver starts no more jobs and stops the running ones."""


def parse_deadline(text: str, now: float | None = None) -> float:
    """--deadline as a POSIX time: seconds from `now` ('3600', '90.5') or a time of day, local time ('23:30',
    '06:00:05': the next such moment, tomorrow if it has passed today). ValueError naming the value otherwise."""
    now = time.time() if now is None else now
    bad = f"--deadline must be a positive number of seconds or a time of day HH:MM[:SS], got {text!r}"
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 < seconds < float("inf"):
            raise ValueError(bad)
        return now + seconds
    try:
        clock = datetime.datetime.strptime(text, "%H:%M:%S" if text.count(":") == 2 else "%H:%M").time()
    except ValueError:
        raise ValueError(bad) from None
    at = datetime.datetime.combine(datetime.datetime.fromtimestamp(now).date(), clock)
    if at.timestamp() <= now:
        at += datetime.timedelta(days=1)
    return at.timestamp()


def check_deadline(stop_at: float | None) -> None:
    """DeadlineReached once time.time() has reached `stop_at` (None: no deadline)."""
    if stop_at is not None and time.time() >= stop_at:
        at = time.strftime("%H:%M:%S", time.localtime(stop_at))
        raise DeadlineReached(f"deadline: stopped at {at}, {STOP_MARGIN_S:g} s before --deadline")


def record_path(job) -> Path:
    """The part's path with `.job.json` for `.nc`: the record of the job last submitted for this part."""
    part = runs.part_path(job.parts_dir, job.lr, job.seed)
    return part.with_name(part.stem + RECORD_SUFFIX)


def write_record(job, job_id: str, executor: str, folder) -> Path:
    """Record a submitted job beside its part, atomically (a temporary file, then a rename): job id, executor,
    submit time (UTC), parameter hash, cell, lr and the submitit folder (a Slurm job is rebuilt from id and folder)."""
    path = record_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"job_id": str(job_id), "executor": executor, "cell": params_mod.cell_name(job.params), "lr": job.lr,
              "seed": job.seed, "parameter_hash": params_mod.run_digest(job.params),
              "folder": str(Path(folder).resolve()),
              "submitted": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    return files.write_json(path, record)


def read_record(job) -> dict | None:
    """The record of the job last submitted for this part (see `write_record`); None if absent or unreadable."""
    try:
        record = json.loads(record_path(job).read_text())
    except (OSError, ValueError):
        return None
    keys = {"job_id", "executor", "parameter_hash", "folder"}
    return record if isinstance(record, dict) and keys <= set(record) else None


@contextlib.contextmanager
def stop_signals(handler):
    """While inside: SIGINT and SIGTERM call `handler(signum, frame)`; the previous handlers after. Main thread
    only (elsewhere Python cannot set handlers: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


@contextlib.contextmanager
def held_stop_signals():
    """While inside, a SIGINT / SIGTERM is held and acts only when the block is left: a job is never submitted
    without being registered (running, recorded) for the stop that follows."""
    held = []
    with stop_signals(lambda signum, frame: held.append(signum)):
        yield
    if held:
        signal.raise_signal(held[0])


@contextlib.contextmanager
def sigterm_exits():
    """While inside: SIGTERM (kill, scancel of a driver job) raises SystemExit, like SIGINT's KeyboardInterrupt,
    so that the executors' cleanup runs and stops the jobs (submitit's jobs ignore SIGTERM). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


_LIBC = []  # the C library, loaded once in the driver (a forked child only calls it)


def _libc():
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def die_with_parent(sig: int, parent: int) -> None:
    """Linux: this process gets `sig` when its parent (pid `parent`) exits (prctl PR_SET_PDEATHSIG), and exits at
    once if the parent already has; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    _libc().prctl(1, int(sig), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(128 + int(sig))


def default_stop_signals() -> None:
    """SIGINT and SIGTERM back at their defaults, as a shell's foreground command has them: for a child about to
    exec, whatever its parent ignores (a nohup'd or backgrounded process ignores SIGINT, and so would its child,
    which neither a cancel nor a Ctrl-C would then stop)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


@contextlib.contextmanager
def jobs_in_own_process_groups():
    """While inside, submitit's LocalExecutor starts each job's controller as the leader of a new process group
    (its task joins it), with SIGINT and SIGTERM at their defaults and PR_SET_PDEATHSIG=SIGINT: it stops its task
    when the driver dies, even by SIGKILL, whatever signals the driver was started ignoring.
    submitit has no option for either, so its module's `subprocess` is replaced for the duration."""
    from submitit.local import local as submitit_local

    driver = os.getpid()
    if sys.platform.startswith("linux"):
        _libc()  # loaded here, not in the forked child

    def controller_setup():  # in the forked child, before exec
        default_stop_signals()
        die_with_parent(signal.SIGINT, driver)

    def popen(*args, **kwargs):
        return subprocess.Popen(*args, process_group=0, preexec_fn=controller_setup, **kwargs)

    original = getattr(submitit_local, "subprocess", None)
    if original is not subprocess:  # another submitit: leave it alone (the jobs are still cancelled and waited for)
        yield
        return
    submitit_local.subprocess = types.SimpleNamespace(Popen=popen)
    try:
        yield
    finally:
        submitit_local.subprocess = original


def _live_groups(groups) -> set[int]:
    """Those of the process groups `groups` that still hold a live process (zombies do not count)."""
    groups, live = set(groups), set()
    if not groups:
        return live
    if Path("/proc/self/stat").is_file():
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
                if state not in ("Z", "X") and int(pgrp) in groups:
                    live.add(int(pgrp))
        return live
    for group in groups:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        live.add(group)
    return live


def _wait_until(gone, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while not gone():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_local(handles: list, groups: set[int], wait_s: float = STOP_WAIT_S) -> bool:
    """Stop local jobs for good: submitit's cancel (SIGINT to each job's controller, which stops its task), wait
    until every controller has exited (done() reaps it) and no process of `groups` (the jobs' process groups) is
    left, at most wait_s; then SIGKILL the groups and controllers left and wait again. True if all are gone."""
    def gone():
        return all(h.done() for h in handles) and not _live_groups(groups)

    for handle in handles:
        handle.cancel(check=False)
    if _wait_until(gone, wait_s):
        return True
    for group in _live_groups(groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    for handle in handles:
        if not handle.done():  # not reaped yet: its pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(handle.job_id), signal.SIGKILL)
    return _wait_until(gone, wait_s)


SLURM_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"}


def slurm_live(job_ids) -> dict[str, str]:
    """{job id: state} of those of `job_ids` that squeue lists in a live state (pending, running, requeued,
    completing, ...: anything but an end state); RuntimeError if squeue fails."""
    ids = {str(j) for j in job_ids}
    if not ids:
        return {}
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T",
                          f"--jobs={','.join(sorted(ids))}"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise RuntimeError(f"squeue exited {out.returncode}: {out.stderr.strip()}")
    listed = dict(line.strip().split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    return {j: state for j, state in listed.items() if j in ids and state not in SLURM_ENDED}


def slurm_end_states(job_ids) -> dict[str, str]:
    """{job id: sacct's state} (COMPLETED, CANCELLED by 0, TIMEOUT, ...) for reports; {} where sacct cannot say."""
    ids = sorted({str(j) for j in job_ids})
    try:
        out = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                              f"--jobs={','.join(ids)}"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if line.count("|") == 1) if ids else {}


def stop_slurm(handles: list, wait_s: float = STOP_WAIT_S) -> bool:
    """Stop Slurm jobs for good: scancel, wait until squeue no longer lists them as live (at most wait_s), then
    scancel --full --signal=KILL the ones left and wait again. True if all are gone."""
    ids = [h.job_id for h in handles]

    def live():
        try:
            return slurm_live(ids)
        except (RuntimeError, OSError, subprocess.SubprocessError):
            return dict.fromkeys(ids, "UNKNOWN")

    if not ids:
        return True
    subprocess.run(["scancel", *ids], check=False, timeout=120)
    if _wait_until(lambda: not live(), wait_s):
        return True
    subprocess.run(["scancel", "--full", "--signal=KILL", *live()], check=False, timeout=120)
    return _wait_until(lambda: not live(), wait_s)


def stop_jobs(handles: list, stop) -> None:
    """Run `stop(handles)` deaf to further SIGINT / SIGTERM (one stop at a time), reporting before and after."""
    print(f"stopping {len(handles)} job(s) before exiting ...", flush=True)
    with stop_signals(lambda signum, frame: print("nc.runs.sweep: already stopping the jobs", flush=True)):
        gone = stop(handles)
    print(f"{len(handles)} job(s) stopped" if gone else "nc.runs.sweep: some job processes could not be stopped",
          flush=True)


def own_group(pid: int) -> int | None:
    """pid if the process leads its own process group (a job's controller), else None."""
    try:
        return pid if os.getpgid(pid) == pid else None
    except (ProcessLookupError, PermissionError):
        return None
