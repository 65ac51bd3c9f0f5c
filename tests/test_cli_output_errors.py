"""A full disk or a permission problem while writing an output ends `dvdm` with one `error:` line naming the
path and the problem, exit 2, never a traceback; the partial output is still cleaned up."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from dvdm import cli

TINY_INGEST = ["ingest", "--set", "options.num_train=2", "--set", "options.num_val=0", "--set",
               "options.num_test=0", "--set", "frames=4", "--set", "height=16", "--set", "width=16"]


def _main(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    """Run the real console entry point with `args`; (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dvdm", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_full_disk_while_writing_shards_is_one_error_line(tmp_path, monkeypatch, capsys):
    import dvdm.data.shards as shards

    def disk_full(path, compress, **arrays):  # what the kernel says mid-write: no file name attached
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shards, "_save_npz", disk_full)
    out = tmp_path / "ingested"
    code, err = _main(monkeypatch, capsys, [*TINY_INGEST, "--out", str(out)])
    line = _one_error_line(err)
    assert code == 2
    assert str(out) in line and "no space left" in line and "ENOSPC" in line
    assert list(tmp_path.iterdir()) == []  # the temporary output was removed


def test_a_quota_error_raised_outside_the_atomic_helpers_is_one_error_line(tmp_path, monkeypatch, capsys):
    import dvdm.stages.ingest as ingest

    target = tmp_path / "somewhere" / "file.bin"

    def over_quota(params, out):  # wrapped by another error, as libraries do while cleaning up
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(target))
        except OSError:
            raise RuntimeError("cleanup failed")  # noqa: B904 - the implicit chain is what is tested

    monkeypatch.setattr(ingest, "run_ingest", over_quota)
    code, err = _main(monkeypatch, capsys, [*TINY_INGEST, "--out", str(tmp_path / "out")])
    line = _one_error_line(err)
    assert code == 2 and str(target) in line and "quota" in line and "EDQUOT" in line


def test_other_os_errors_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import dvdm.stages.ingest as ingest

    def broken(params, out):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(ingest, "run_ingest", broken)
    monkeypatch.setattr(sys, "argv", ["dvdm", *TINY_INGEST, "--out", str(tmp_path / "out")])
    with pytest.raises(OSError):
        cli.main()


def test_permission_denied_on_the_output_is_one_error_line(tmp_path, monkeypatch, capsys):
    import tempfile

    def denied(suffix=None, prefix=None, dir=None):  # what a read-only output folder answers (root never gets it)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, f"{prefix}k2j4"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    out = tmp_path / "ingested"
    code, err = _main(monkeypatch, capsys, [*TINY_INGEST, "--out", str(out)])
    line = _one_error_line(err)
    assert code == 2 and str(out) in line and "permission denied" in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_output_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, err = _main(monkeypatch, capsys, [*TINY_INGEST, "--out", str(folder / "ingested")])
    finally:
        folder.chmod(0o755)
    line = _one_error_line(err)
    assert code == 2 and str(folder / "ingested") in line and "permission denied" in line


PIPELINE_ON_A_FULL_DISK = """
import errno, os, sys
import dvdm.data.shards as shards

def disk_full(path, compress, **arrays):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

shards._save_npz = disk_full
sys.argv = ["dvdm", "pipeline", "--no-register", "--stage", "ingest"]
from dvdm.cli import main
main()
"""


@pytest.mark.slow
def test_a_full_disk_inside_the_pipeline_is_one_error_line(tmp_path):
    """Through Prefect too: the task's and the flow's failure records (with their tracebacks) stay off the
    console, the CLI prints the error once."""
    import subprocess

    from tiny_project import tiny_project

    project = tiny_project(tmp_path / "project")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "DVDM_WORK_DIR": str(tmp_path / "work"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1"}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([sys.executable, "-c", PIPELINE_ON_A_FULL_DISK], cwd=project, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["error: cannot write data/ingested: no space left on the device (ENOSPC)"], r.stderr
