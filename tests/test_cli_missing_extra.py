"""A command run in an install without its extra (serve-only, say) ends in one `error:` line naming the extra
to install, not a ModuleNotFoundError traceback; a missing module no extra provides stays a traceback (a bug)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dvdm import cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_train_without_torch_names_the_train_extra(tmp_path):
    # sys.modules[name] = None makes `import torch` fail as in an install without it
    script = ("import sys; sys.modules['torch'] = None; sys.argv = ['dvdm', 'train', '--in', 'nowhere']; "
              "from dvdm.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ('error: dvdm train needs the [train] extra (missing module torch): '
                                'pip install "dvdm[train,cpu]"')


@pytest.mark.parametrize(("module", "expected"), [
    ("prefect", 'error: dvdm pipeline needs the [orchestrate] extra (missing module prefect): '
                'pip install "dvdm[orchestrate,cpu]"'),
    ("multipart.multipart", 'error: dvdm pipeline needs the [serve] extra (missing module multipart.multipart): '
                            'pip install "dvdm[serve,cpu]"'),
    ("onnxruntime", 'error: dvdm pipeline needs ONNX Runtime, the [cpu] or [gpu] extra (missing module '
                    'onnxruntime): pip install "dvdm[cpu]" (or "dvdm[gpu]" on a CUDA machine)'),
])
def test_missing_extra_is_one_line_and_exit_2(module, expected, monkeypatch, capsys):
    top = module.partition(".")[0]
    monkeypatch.setitem(sys.modules, top, None)
    _command_raises(monkeypatch, ModuleNotFoundError(f"No module named {module!r}", name=module), "pipeline")
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == expected


@pytest.mark.parametrize("module", [
    "dvdm.no_such_module",      # no extra provides it: a bug in dvdm
    "torch.no_such_submodule",  # torch is installed here: a broken import inside it, not a missing extra
])
def test_other_missing_modules_keep_their_traceback(module, monkeypatch):
    _command_raises(monkeypatch, ModuleNotFoundError(f"No module named {module!r}", name=module), "train")
    with pytest.raises(ModuleNotFoundError):
        cli.main()


def test_every_extra_named_exists_in_pyproject():
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(cli.EXTRA_OF_MODULE.values()) <= set(extras)


def _command_raises(monkeypatch, exc: Exception, command: str) -> None:
    """Run `dvdm COMMAND` as a command that fails with `exc` on import."""
    def app():
        raise exc

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["dvdm", command])
