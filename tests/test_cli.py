"""The `dermagan` console script dispatches to one module per command."""

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dermagan import cli


def test_help_lists_every_command(capsys):
    try:
        cli.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_every_registered_command_has_the_hooks():
    for name in cli.COMMANDS:
        module = cli._load(name)
        assert callable(module.add_arguments) and callable(module.run), name


@pytest.mark.parametrize("argv, named", [
    (["synth", "--n", "6"], "--n 6"),  # was taken for --no-progress, and the error named only "6"
    (["train", "generate", "--r1", "0.2"], "--r1 0.2"),
    (["serve", "--port", "8000", "--work", "2"], "--work 2"),  # was taken for --workers
])
def test_a_shortened_option_is_refused_by_its_name_not_taken_for_another(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {named}" in capsys.readouterr().err


def test_serve_does_not_import_torch():
    code = ("import sys; from dermagan import cli; cli._load('serve'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_serve_runs_on_uvloop_and_httptools():
    """The serve extras install both, and `dermagan serve` hands uvicorn the uvloop loop and its
    httptools protocol with early refusal (shedding.py)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from dermagan.service.cli import _uvicorn_config, http_stack
    from dermagan.service.settings import Settings
    from dermagan.service.shedding import SheddingHttpToolsProtocol

    assert http_stack() == ("uvloop", "httptools")
    config = _uvicorn_config(Settings.from_env({}), "dermagan.service.cli:worker_app", factory=True)
    assert config.loop == "uvloop" and config.http is SheddingHttpToolsProtocol
    assert issubclass(config.http, HttpToolsProtocol)


def test_serve_keep_alive_setting_reaches_uvicorn():
    from dermagan.service.cli import _uvicorn_config
    from dermagan.service.settings import Settings, SettingsError

    assert _uvicorn_config(Settings.from_env({}), "x").timeout_keep_alive == 5  # uvicorn's own default
    settings = Settings.from_env({"DERMAGAN_KEEP_ALIVE_S": "75"})  # above an ALB's 60 s idle timeout
    assert _uvicorn_config(settings, "x").timeout_keep_alive == 75
    with pytest.raises(SettingsError, match="DERMAGAN_KEEP_ALIVE_S"):
        Settings.from_env({"DERMAGAN_KEEP_ALIVE_S": "0"})


def test_serve_warns_when_it_falls_back_to_asyncio_and_h11():
    code = ("import sys; sys.modules['uvloop'] = None; sys.modules['httptools'] = None\n"
            "import logging; logging.basicConfig(level='INFO', format='%(levelname)s %(message)s')\n"
            "from dermagan.service import cli\n"
            "stack = cli.http_stack(); print(stack); cli._log_http_stack(*stack)")
    code += "\nprint(cli.http_protocol())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["('asyncio',", "'h11')", "h11"]  # no early refusal without httptools
    assert "WARNING HTTP: h11 on the asyncio event loop" in out.stderr
    assert "pip install uvloop httptools" in out.stderr


def _guarded_child(supervisor_pid: str) -> subprocess.CompletedProcess:
    """A process that calls exit_with_supervisor() as a worker does, with SIGTERM caught (exit 7)."""
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
            "from dermagan.service.cli import exit_with_supervisor, SUPERVISOR_ENV\n"
            f"os.environ[SUPERVISOR_ENV] = {supervisor_pid!r}.replace('PARENT', str(os.getppid()))\n"
            "exit_with_supervisor()\n"
            "time.sleep(0.5)\n")
    return subprocess.run([sys.executable, "-c", code], timeout=30)


def test_a_worker_whose_supervisor_is_gone_terminates_itself():
    assert _guarded_child("PARENT").returncode == 0  # its supervisor is alive: it runs on
    assert _guarded_child("999999999").returncode == 7  # not its parent (already gone): SIGTERM


def test_a_worker_gets_sigterm_when_its_supervisor_is_killed():
    """PR_SET_PDEATHSIG: the kernel signals the worker when its parent dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    with tempfile.TemporaryDirectory() as tmp:
        flag = Path(tmp) / "terminated"
        worker = ("import os, signal, sys, time\n"
                  f"signal.signal(signal.SIGTERM, lambda *_: (open({str(flag)!r}, 'w').close(), sys.exit(0)))\n"
                  "from dermagan.service.cli import exit_with_supervisor, SUPERVISOR_ENV\n"
                  "os.environ[SUPERVISOR_ENV] = str(os.getppid())\n"
                  "exit_with_supervisor()\n"
                  "print('guarded', flush=True)\n"
                  "time.sleep(30)\n")
        supervisor = ("import subprocess, sys, time\n"
                      f"subprocess.Popen([sys.executable, '-c', {worker!r}])\n"
                      "time.sleep(60)\n")
        sup = subprocess.Popen([sys.executable, "-c", supervisor], stdout=subprocess.PIPE, text=True)
        assert sup.stdout.readline().strip() == "guarded"
        sup.send_signal(signal.SIGKILL)
        sup.wait(10)
        t0 = time.monotonic()
        while not flag.exists():
            assert time.monotonic() - t0 < 10, "the orphaned worker got no SIGTERM"
            time.sleep(0.05)


def test_a_full_disk_is_one_line_that_says_how_to_go_on(monkeypatch, capsys):
    import errno
    import types

    def command(error: OSError) -> types.SimpleNamespace:
        def run(args):
            raise error
        return types.SimpleNamespace(add_arguments=lambda parser: None, run=run)

    monkeypatch.setattr(cli, "_load", lambda name: command(OSError(errno.ENOSPC, "No space left on device", "runs/x/last.pt")))
    assert cli.main(["train"]) == 1
    err = capsys.readouterr().err
    assert err == ("dermagan train: error: cannot write runs/x/last.pt: the disk is full (No space left on device); "
                   "make room, then run it again with --resume to continue from its last checkpoint\n")
    monkeypatch.setattr(cli, "_load", lambda name: command(OSError(errno.EDQUOT, "Disk quota exceeded")))
    assert cli.main(["sample"]) == 1
    assert "dermagan sample: error: cannot write: the disk quota is used up" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_load", lambda name: command(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):  # anything else is not this message's to explain
        cli.main(["train"])


def test_ctrl_c_outside_a_training_step_is_one_line_not_a_traceback(monkeypatch, capsys):
    import types

    def run(args):
        raise KeyboardInterrupt  # e.g. while a large procedural set is rendered ahead, before the first step

    monkeypatch.setattr(cli, "_load", lambda name: types.SimpleNamespace(add_arguments=lambda parser: None, run=run))
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err == ("dermagan train: interrupted; run it again with --resume to continue from its "
                                       "last checkpoint\n")
    assert cli.main(["synth"]) == 130
    assert capsys.readouterr().err == "dermagan synth: interrupted\n"


@pytest.mark.parametrize("command, required", [("gallery", "--models, --out"), ("evaluate", "--models"),
                                               ("release", "--models")])
def test_an_installed_package_never_defaults_into_its_own_folder(command, required, tmp_path, monkeypatch, capsys):
    """From a wheel the training commands' defaults (the checkout's models/ and docs/gallery/) would have pointed
    into site-packages/dermagan: a gallery written there, a release exporting there. Without a checkout the options
    are required, named by argparse before anything runs."""
    from dermagan.training import checkout

    assert checkout.checkout_path("models") == checkout.ROOT / "models"  # this test runs in a checkout
    monkeypatch.setattr(checkout, "ROOT", tmp_path / "site-packages" / "dermagan")
    assert checkout.checkout_path("models") is None
    argv = [command] + (["--out", str(tmp_path / "metrics")] if command == "evaluate" else [])
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert f"the following arguments are required: {required}" in capsys.readouterr().err
    assert not (tmp_path / "site-packages").exists() and not (tmp_path / "metrics").exists()


def test_output_cut_short_by_its_reader_is_no_traceback():
    """`dermagan serve --settings | head -2` ended in a BrokenPipeError traceback."""
    proc = subprocess.run(f"{sys.executable} -m dermagan.cli serve --settings | head -2", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines()[0].startswith("| variable |")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
