"""The staged write every engine dir goes through: readable by others, nothing half-written, and what a killed
writer left behind is cleaned up by the next write."""
import os
import signal
import subprocess
import sys
import time

import pytest

from runtime.engine_dir import staged_engine_dir
from runtime.errors import ConfigError
from tests.conftest import ROOT, file_modes


def test_exported_and_calibrated_dirs_are_readable_by_other_users(none_dir):
    got = file_modes(none_dir)
    assert got["."] == 0o755 and got["tokenizer"] == 0o755
    assert {m for name, m in got.items() if (none_dir / name).is_file()} == {0o644}
    assert len(got) > 8


def test_a_finished_write_replaces_the_old_dir_and_a_failed_one_leaves_it(tmp_path):
    out = tmp_path / "eng"
    with staged_engine_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        with staged_engine_dir(out):
            pass
    with pytest.raises(RuntimeError, match="half-way"):
        with staged_engine_dir(out, force=True) as tmp:
            (tmp / "b.txt").write_text("second")
            raise RuntimeError("half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng"] and (out / "a.txt").read_text() == "first"
    with staged_engine_dir(out, force=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng"]


def test_what_a_killed_writer_left_is_removed_and_a_live_writers_dir_is_not(tmp_path):
    dead = 2**22 + 12345  # above pid_max's default: no such process
    abandoned = tmp_path / f".eng.partial-{dead}-x1y2"
    live = tmp_path / f".eng.partial-{os.getpid()}-z3w4"
    old = tmp_path / ".eng.old-1700000000"
    other = tmp_path / f".other.partial-{dead}-q"
    for d in (abandoned, live, old, other):
        (d / "tokenizer").mkdir(parents=True)
        (d / "tokenizer" / "llm.json").write_text("{}")
    with staged_engine_dir(tmp_path / "eng") as tmp:
        (tmp / "manifest.json").write_text("{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["eng", live.name, other.name])


def test_an_export_killed_by_the_kernel_leaves_no_engine_dir_and_the_next_write_clears_it(tmp_path):
    """SIGKILL is what the OOM killer sends: no handler runs, so only the staged layout protects the user."""
    out = tmp_path / "eng"
    export = subprocess.Popen([sys.executable, "cli.py", "export", "--method", "none", "--model", "tiny", "--out", out],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".eng.partial-*/tokenizer")) and time.monotonic() < deadline:
        assert export.poll() is None, "the export ended before it started writing"
        time.sleep(0.2)
    export.send_signal(signal.SIGKILL)
    export.wait()
    partial = list(tmp_path.glob(".eng.partial-*"))
    assert len(partial) == 1 and f".eng.partial-{export.pid}-" in partial[0].name and not out.exists()
    with staged_engine_dir(out) as tmp:  # what the next export (or calibrate, or build) of that dir does first
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng"]
