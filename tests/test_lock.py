"""One driver per sweep directory (sweep.lock): a second driver is refused naming the holder, a
gone holder's lock is taken over, on local paths and through a file:// URI (the object-store
code path)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import sweep.lock as lock_mod
from sweep.cli import main
from sweep.lock import LOCK_FILE, DriverLock, LockHeld, lock_state, read_holder
from workers.results.storage import Store


def _stores(tmp_path):
    return [Store(tmp_path / "local"), Store((tmp_path / "uri").as_uri())]


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(lock_mod, "SETTLE_S", 0.05)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    return p.pid


def _write_lock(st: Store, **kw):
    """A lock as another driver would write it; its file's mtime is its heartbeat (the age of
    another host's lock is read on the store's clock)."""
    doc = dict(host=socket.gethostname(), pid=os.getpid(), command="launch",
               started=time.time() - 60, heartbeat=time.time(), token="other")
    doc.update(kw)
    st.makedirs()
    st.write_text(LOCK_FILE, json.dumps(doc))
    os.utime(st.path(LOCK_FILE), (doc["heartbeat"], doc["heartbeat"]))  # file:// paths too


@pytest.mark.parametrize("which", [0, 1])
def test_second_driver_is_refused_naming_the_holder(tmp_path, which):
    st = _stores(tmp_path)[which]
    with DriverLock(st, "launch") as held:
        assert read_holder(st).token == held.token
        with pytest.raises(LockHeld) as e:
            DriverLock(st, "resume").acquire()
        msg = str(e.value)
        assert "\n" not in msg and f"pid {os.getpid()}" in msg and socket.gethostname() in msg
        assert "sweep launch" in msg
        assert lock_state(st)[0].startswith("driver: live")
    assert not st.exists(LOCK_FILE)  # released
    assert lock_state(st)[0] == "driver: none running"


@pytest.mark.parametrize("which", [0, 1])
def test_a_gone_holder_is_taken_over_with_a_note(tmp_path, which):
    st = _stores(tmp_path)[which]
    notes = []
    _write_lock(st, pid=_dead_pid())  # same host, process gone
    assert lock_state(st)[0].startswith("driver: gone")
    with DriverLock(st, "resume", log=notes.append) as lk:
        assert read_holder(st).token == lk.token
    assert any("taking over" in n and "is gone" in n for n in notes)
    _write_lock(st, host="elsewhere", heartbeat=time.time() - 10 * lock_mod.STALE_AFTER_S)
    notes.clear()
    with DriverLock(st, "launch", log=notes.append):
        pass
    assert any("no heartbeat" in n for n in notes)
    _write_lock(st, host="elsewhere", heartbeat=time.time())  # another host, fresh: live
    with pytest.raises(LockHeld, match="host elsewhere"):
        DriverLock(st, "launch").acquire()
    # another host whose clock runs 20 minutes behind: its fresh lock is still live (the age is
    # the lock file's mtime against a probe file's, both on the store's clock)
    _write_lock(st, host="elsewhere", heartbeat=time.time())
    doc = json.loads(st.read_text(LOCK_FILE))
    doc["heartbeat"] -= 1200
    st.write_text(LOCK_FILE, json.dumps(doc))
    with pytest.raises(LockHeld, match="host elsewhere"):
        DriverLock(st, "launch").acquire()
    # the stale locks were set aside, never deleted
    assert sum(n.startswith(LOCK_FILE + ".stale-") for n in st.names()) == 2


def test_a_reused_pid_or_a_reboot_does_not_keep_a_lock_live(tmp_path):
    """Same host: the holder is its pid with the start time the lock recorded, on this boot."""
    st = Store(tmp_path / "s")
    _write_lock(st, pid=os.getpid(), pid_started=1.0)  # our pid, but another process's start
    with DriverLock(st, "launch"):
        pass
    _write_lock(st, pid=os.getpid(), boot_id="another-boot")
    with DriverLock(st, "launch"):
        pass
    _write_lock(st, pid=os.getpid())  # an old lock without start time: taken as live
    with pytest.raises(LockHeld):
        DriverLock(st, "launch").acquire()


def test_takeovers_are_serialised(tmp_path):
    """Two drivers judging the same lock stale: while one moves it aside (holding the second
    O_EXCL file), the other cannot take over, so it can never move the first one's new lock
    aside; exactly one ends up holding the lock."""
    st = Store(tmp_path / "s")
    _write_lock(st, pid=_dead_pid())
    a, b = DriverLock(st, "launch"), DriverLock(st, "resume")
    real_move = st.move
    seen = []

    def move_while_a_tries(src, dst):  # a tries to take over in the middle of b's takeover
        st.move = real_move
        try:
            a.acquire()
            seen.append("a holds")
        except LockHeld:
            seen.append("a refused")
        return real_move(src, dst)

    st.move = move_while_a_tries
    b.acquire()
    try:
        assert seen == ["a refused"] and read_holder(st).token == b.token
        assert sum(n.startswith(LOCK_FILE + ".stale-") for n in st.names()) == 1
    finally:
        b.release()


def test_a_lost_lock_stops_the_driver(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_mod, "HEARTBEAT_S", 0.05)
    st = Store(tmp_path / "s")
    lk = DriverLock(st, "launch").__enter__()
    try:
        _write_lock(st, token="thief")
        deadline = time.time() + 5
        while lk.lost is None and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(LockHeld, match="taken over"):
            lk.check()
    finally:
        lk.release()
    assert read_holder(st).token == "thief"  # not removed by the loser


@pytest.mark.parametrize("argv", [["plan", "trials=2"], ["launch", "trials=2"]])
def test_cli_drivers_refused_while_a_lock_is_held(tmp_path, capsys, argv):
    out = tmp_path / "s"
    assert main(["plan", "trials=2", f"out={out}"]) == 0
    capsys.readouterr()
    with DriverLock(Store(out), "launch"):
        assert main(argv + [f"out={out}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "being run by another driver" in err
        assert main(["resume", str(out)]) == 2
        assert "being run by another driver" in capsys.readouterr().err
        assert main(["status", str(out)]) == 0  # read-only: no lock needed
        assert "driver: live" in capsys.readouterr().out


@pytest.mark.slow
def test_two_launches_into_one_directory(tmp_path):
    """The issue's example: two `sweep launch dry_run=true trials=6 out=T` started together
    both ran every trial (two journals of 6 lines each); now one runs, the other exits 2."""
    out = tmp_path / "T"
    cmd = [sys.executable, "-m", "sweep.cli", "launch", "dry_run=true", "trials=6", f"out={out}",
           "progress=false", "figure=false", "cluster.num_cpus=1"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    from procs import kill_tree

    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, start_new_session=True) for _ in range(2)]
    try:  # (communicate: a full stdout pipe cannot block a launch)
        errs = [p.communicate(timeout=300)[1] for p in procs]
    except BaseException:  # a timeout: each launch and the local Ray it started
        for p in procs:
            kill_tree(p.pid)
        raise
    results = [(p.returncode, err) for p, err in zip(procs, errs)]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "being run by another driver" in loser
    lines = [ln for f in (out / "journal").glob("*") for ln in f.read_text().splitlines()
             if ln.strip()]
    assert len(lines) == 6
    assert not (out / LOCK_FILE).exists()


def test_a_transient_read_error_does_not_lose_the_lock(tmp_path, monkeypatch):
    """An object store's 503 on one heartbeat read is not 'the lock was removed'; nor is a
    shared file system's I/O error when a local holder looks at its lock file."""
    import errno

    monkeypatch.setattr(lock_mod, "HEARTBEAT_S", 0.05)
    st = Store((tmp_path / "s").as_uri())
    real = st.read_text
    fails = {"n": 3}

    def flaky(rel):
        if rel == LOCK_FILE and fails["n"] > 0:
            fails["n"] -= 1
            raise OSError("503 Slow Down")
        return real(rel)

    with DriverLock(st, "launch") as lk:
        monkeypatch.setattr(st, "read_text", flaky)
        time.sleep(0.6)
        assert fails["n"] == 0 and lk.lost is None
        lk.check()
    local = Store(tmp_path / "l")
    real_open = os.open
    fails["n"] = 3

    def flaky_open(path, flags, *a, **kw):
        if str(path) == local.path(LOCK_FILE) and flags == os.O_RDONLY and fails["n"] > 0:
            fails["n"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real_open(path, flags, *a, **kw)

    with DriverLock(local, "launch") as lk:
        monkeypatch.setattr(lock_mod.os, "open", flaky_open)
        time.sleep(0.6)
        monkeypatch.setattr(lock_mod.os, "open", real_open)
        assert fails["n"] == 0 and lk.lost is None
        lk.check()
    assert not local.exists(LOCK_FILE)


def _take_over(st: Store) -> None:
    """What a taker does: the lock moved aside, its own created (token 'taker')."""
    st.move(LOCK_FILE, f"{LOCK_FILE}.stale-test")
    fd = os.open(st.path(LOCK_FILE), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, json.dumps(dict(host="elsewhere", pid=1, command="resume", started=time.time(),
                                 heartbeat=time.time(), token="taker")).encode())
    os.close(fd)


def test_a_heartbeat_never_writes_over_the_lock_of_a_driver_that_took_over(tmp_path,
                                                                              monkeypatch):
    """A holder suspended after it saw its own lock and before it refreshed it, while another
    driver took the lock over (the old heartbeat read the lock, then wrote a new one by path:
    the taker's lock was overwritten, the taker stopped and the suspended one went on). Now the
    refresh goes through the descriptor of its own file: the taker's lock stays, and the next
    heartbeat finds the lock lost."""
    st = Store(tmp_path / "s")
    lk = DriverLock(st, "launch")
    lk.acquire()
    lk._stop.set()  # (the heartbeats are driven by hand here)
    lk._thread.join(5)
    mine = read_holder(st)
    real_read = lock_mod.read_holder
    real_ours = lk._ours_local
    taken: list = []

    def seen_then_taken(*a, **kw):  # (the old heartbeat's look: its own lock, then the takeover)
        if not taken:
            taken.append(1)
            _take_over(st)
            return mine
        return real_read(*a, **kw)

    def ours_then_taken():  # (the new heartbeat's look)
        out = real_ours()
        if not taken:
            taken.append(1)
            _take_over(st)
        return out

    monkeypatch.setattr(lock_mod, "read_holder", seen_then_taken)
    monkeypatch.setattr(lk, "_ours_local", ours_then_taken)
    assert lk._refresh() is None  # (it looked before the takeover)
    monkeypatch.setattr(lock_mod, "read_holder", real_read)
    assert taken and read_holder(st).token == "taker"
    aside = json.loads(st.read_text(f"{LOCK_FILE}.stale-test"))
    assert aside["token"] == lk.token and aside["heartbeat"] >= mine.heartbeat
    monkeypatch.setattr(lk, "_ours_local", real_ours)
    assert lk._refresh().startswith("the driver lock was taken over by `sweep resume` on host "
                                    "elsewhere")
    lk.release()
    assert read_holder(st).token == "taker"  # the loser removes nothing


def test_a_release_never_removes_the_lock_of_a_driver_that_took_over(tmp_path, monkeypatch):
    """A takeover between the holder's last look and its removal of the lock (the old release
    read the lock, then deleted by path: the taker's lock was deleted) cannot happen: the
    holder removes its lock holding the takeover file, so a taker waits."""
    st = Store(tmp_path / "s")
    lk = DriverLock(st, "launch")
    lk.acquire()
    mine = read_holder(st)
    real_read = lock_mod.read_holder
    real_ours = lk._ours_local
    tried = []

    def taker_tries():  # another driver judges the holder stale meanwhile
        if not tried:
            tried.append(DriverLock(st, "resume")._set_aside(mine.token))

    def looked_then_tries(*a, **kw):  # (the old release's look)
        out = real_read(*a, **kw)
        taker_tries()
        return out

    def ours_then_tries():  # (the new release's look)
        out = real_ours()
        taker_tries()
        return out

    monkeypatch.setattr(lock_mod, "read_holder", looked_then_tries)
    monkeypatch.setattr(lk, "_ours_local", ours_then_tries)
    lk.release()
    monkeypatch.setattr(lock_mod, "read_holder", real_read)
    assert tried == [False]  # the taker found the takeover file held and looks again later
    assert not st.exists(LOCK_FILE) and not st.exists(lock_mod.LOCK_TAKEOVER)


def test_a_heartbeat_keeps_the_lock_readable(tmp_path, monkeypatch):
    """The heartbeat rewrites the held file in place, padded: a lock whose document got
    shorter (a heartbeat with fewer digits) still reads whole, and its mtime moves."""
    st = Store(tmp_path / "s")
    with DriverLock(st, "launch") as lk:
        lk._stop.set()
        lk._thread.join(5)
        before = st.entry(LOCK_FILE).mtime_ns
        os.pwrite(lk._fd, b" " * 64, os.fstat(lk._fd).st_size)  # a longer last document
        time.sleep(0.01)
        assert lk._refresh() is None
        h = read_holder(st)
        assert h is not None and h.token == lk.token and h.heartbeat > 0
        assert st.entry(LOCK_FILE).mtime_ns > before


@pytest.mark.parametrize("answer, live", [
    ("echo RUNNING", True), ("echo COMPLETING", True), ("echo COMPLETED", False),
    ("echo CANCELLED", False), ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
                                False),
    ("echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1", True),
    ("sleep 30", True)])
def test_a_lock_of_a_slurm_job_that_ended_is_stale_at_once(tmp_path, monkeypatch, answer, live):
    """Another host's lock written by a driver inside SLURM job 4242, its last heartbeat 40 s
    ago: stale when the scheduler says the job ended (the next job of a ``sweep slurm`` chain
    after a hard kill does not wait out STALE_AFTER_S = 120 s); live while it runs or when the
    scheduler cannot say (a stopped controller, a hang past the timeout). With a fresh
    heartbeat it is live whatever the scheduler says (a driver under salloc outlives its
    allocation)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(
        f'#!/bin/sh\n[ "$*" = "-h -o %T -j 4242" ] || {{ echo "bad args: $*" >&2; exit 9; }}\n'
        f"{answer}\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    hang = answer.startswith("sleep")  # waited out: a short timeout; the others answer at once
    monkeypatch.setattr(lock_mod, "slurm_job_ended",
                        lambda job, timeout=10.0, real=lock_mod.slurm_job_ended:
                        real(job, 1.0 if hang else 10.0))
    st = Store(tmp_path / "s")
    _write_lock(st, host="node-that-ran-job-4242", slurm_job="4242", heartbeat=time.time() - 1)
    assert lock_mod.holder_state(read_holder(st), st)[0] is True  # fresh: live
    _write_lock(st, host="node-that-ran-job-4242", slurm_job="4242",
                heartbeat=time.time() - 40)
    h = read_holder(st)
    assert h.slurm_job == "4242"
    got, why = lock_mod.holder_state(h, st)
    assert got is live, why
    if not live:
        assert "SLURM job 4242 ended" in why
        with DriverLock(st, "resume") as mine:
            assert read_holder(st).token == mine.token
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # a driver records its own job
    st2 = Store(tmp_path / "t")
    with DriverLock(st2, "resume"):
        assert read_holder(st2).slurm_job == "77"


def test_the_next_job_of_a_chain_waits_out_a_hard_killed_drivers_last_heartbeat(
        tmp_path, monkeypatch):
    """A driver on another host in SLURM job 4242, killed hard at its job's end: its lock's
    heartbeat is seconds old when the chain's next job starts. The next driver waits until it
    is SLURM_ENDED_AFTER_S old (lowered to 3 s here) and takes the lock, instead of exiting
    with LockHeld (which ended the chain); a heartbeat that goes on is a live driver
    (LockHeld after the wait)."""
    import threading

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho COMPLETED\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(lock_mod, "SLURM_ENDED_AFTER_S", 3.0)
    st = Store(tmp_path / "s")
    t0 = time.monotonic()  # (before the heartbeat: it is 3 s old 2 s after it)
    _write_lock(st, host="node-of-job-4242", slurm_job="4242", heartbeat=time.time() - 1)
    notes = []
    with DriverLock(st, "resume", log=notes.append) as mine:
        assert read_holder(st).token == mine.token
    assert time.monotonic() - t0 >= 2.0  # it waited for the heartbeat to stop
    assert any("SLURM job 4242 ended" in n and "waiting up to 3 s" in n for n in notes), notes

    _write_lock(st, host="node-of-job-4242", slurm_job="4242", heartbeat=time.time())
    stop = threading.Event()

    def beat():  # the driver outlived its job: its heartbeat goes on
        while not stop.wait(0.5):
            os.utime(st.path(LOCK_FILE), None)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        with pytest.raises(LockHeld):
            DriverLock(st, "resume").acquire()
    finally:
        stop.set()
        beating.join()


def test_a_completing_job_is_waited_for_before_its_lock_is_judged(tmp_path, monkeypatch):
    """The chain's next job can start while the previous one is COMPLETING (afterany is
    satisfied): the driver waits for the state to become an end state, then for the
    heartbeat's age, and takes the lock; it does not exit with LockHeld."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    count = tmp_path / "calls"
    (bin_dir / "squeue").write_text(
        f'#!/bin/sh\necho x >> "{count}"\n'
        f'if [ "$(wc -l < "{count}")" -le 2 ]; then echo COMPLETING; else echo COMPLETED; fi\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(lock_mod, "SLURM_ENDED_AFTER_S", 4.0)
    st = Store(tmp_path / "s")
    _write_lock(st, host="node-of-job-4242", slurm_job="4242", heartbeat=time.time() - 1)
    with DriverLock(st, "resume") as mine:
        assert read_holder(st).token == mine.token
    assert len(count.read_text().splitlines()) >= 3  # COMPLETING twice, then COMPLETED


def test_another_drivers_lock_and_write_probe_read_as_a_new_sweep_being_started(tmp_path):
    """Two launches into one new directory: the second can look while the first's lock and its
    write probe (removed a moment later) are all there is. That is a new sweep being started
    (the lock then refuses it, naming the holder), not 'not empty ... choose another out
    directory'; on an object store, one look decides whether the directory exists (two looks
    could see the probe go between them: 'exists and is not a directory')."""
    from sweep.config import compose
    from sweep.driver import check_out_dir
    from workers.results.storage import PROBE_PREFIX
    from workers.results.sweep_dir import SweepDir

    for st in _stores(tmp_path):
        st.makedirs()
        st.write_text(LOCK_FILE, "{}")
        st.write_text(f"{PROBE_PREFIX}123-abcd", "")
        d = SweepDir.of(st.location)
        assert d.kind() == "dir" and d.kind(LOCK_FILE) == "file" and d.kind("nope") == "none"
        check_out_dir(d, compose(["dry_run=true", "trials=2"]))  # (no refusal)
        st.write_text("other.txt", "x")
        with pytest.raises(Exception, match="is not empty and holds no sweep.json"):
            check_out_dir(d, compose(["dry_run=true", "trials=2"]))
