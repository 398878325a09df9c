"""``rptdose register`` and ``rptdose train registration`` through typer's CliRunner.

The commands are mounted on a local typer app the way ``cli.main`` mounts them, so the test
exercises the command functions themselves (option parsing, the call, the printed table).
"""

import json

import typer
from typer.testing import CliRunner

from cli.register import register_cmd, train_registration_cmd
from dosimetry.errors import InputError
from dosimetry.registration import RegistrationError
from dosimetry.study.workdir import WorkDir

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer(rich_markup_mode=None)
    app.command("register")(register_cmd)
    train = typer.Typer()
    train.command("registration")(train_registration_cmd)
    app.add_typer(train, name="train")
    return app


def test_register_prints_the_qa_table(pair_study, tmp_path):
    # its own work folder: the command registers with the default options
    wd = WorkDir.create(tmp_path / "w", pair_study.study, pair_study.out_dir)
    out = runner.invoke(_app(), ["register", str(wd.root)], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "registration to 4h (classical)" in out.output
    assert "48h" in out.output and "TRE" in out.output
    qa = json.loads((wd.root / "registration" / "qa.json").read_text())
    tre = qa["timepoints"][1]["qa"]["tre"]["mean_mm"]
    assert f"{tre:.2f}" in out.output
    again = runner.invoke(_app(), ["register", str(wd.root)], terminal_width=200)
    assert again.exit_code == 0 and "up to date, nothing recomputed" in again.output


def test_register_errors_reach_the_caller(pair_registered, tmp_path):
    wd, _ = pair_registered
    out = runner.invoke(_app(), ["register", str(wd.root), "--reference-timepoint", "99h"])
    # cli.main turns RptdoseError into one line and exit status 1; here it arrives unchanged
    assert isinstance(out.exception, InputError) and "99h" in str(out.exception)
    out = runner.invoke(_app(), ["register", str(tmp_path)])
    assert isinstance(out.exception, InputError) and "not a work folder" in str(out.exception)
    out = runner.invoke(_app(), ["register", str(wd.root), "--method", "magic"])
    assert out.exit_code == 2 and not isinstance(out.exception, RegistrationError)


def test_train_registration_options():
    out = runner.invoke(_app(), ["train", "registration", "--help"], terminal_width=200)
    assert out.exit_code == 0
    for opt in ("--seed", "--epochs", "--output", "--device"):
        assert opt in out.output
    assert runner.invoke(_app(), ["train", "registration", "--epochs", "0"]).exit_code == 2
