"""The command line: help lists every stage, user errors are one clear line, explore's command."""

from __future__ import annotations

import sys

import pytest

from drlcore.cli import build_parser, main

STAGES = ("run", "features", "train-source", "transfer", "encode", "analyze", "explore", "demo",
          "backbones")


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in STAGES:
        assert name in out


def test_a_user_error_is_one_clear_line_and_exit_2(tmp_path, capsys):
    code = main(["features", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing created for a run that cannot start


def test_dino_offline_without_weights_names_the_three_ways(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 40), (200, 100, 150)).save(tmp_path / "img" / "cell.png")
    code = main(["features", str(tmp_path / "img"), "--backbone", "dino-vitb16",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--weights" in err and "cache" in err.lower()


def test_explore_starts_streamlit_without_prompts(monkeypatch, tmp_path):
    import os

    calls = []
    # drl explore becomes Streamlit (exec), so a signal to it reaches the server itself.
    monkeypatch.setattr(os, "execve", lambda path, cmd, env: calls.append(cmd))
    main(["explore", str(tmp_path), "--port", "8600", "--headless"])
    cmd = calls[0]
    assert cmd[:3] == [sys.executable, "-m", "streamlit"] and cmd[4].endswith("explorer/app.py")
    assert cmd[cmd.index("--server.showEmailPrompt") + 1] == "false"
    assert cmd[cmd.index("--server.port") + 1] == "8600"
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--") + 1:][-2:] == ["--run", str(tmp_path.resolve())]


def test_parser_rejects_unknown_options():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "x", "--out", "y", "--no-such-option"])
