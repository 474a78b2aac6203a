"""The `record` keys: per route and top-level (the default), `serve --record`, and `check` showing them."""

from __future__ import annotations

from pathlib import Path

import pytest
from procs import run_cli

from sseproxy.cli import parser, serve_overrides
from sseproxy.errors import ConfigError
from sseproxy.loader import Overrides, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_a_route_records_into_its_own_dir_else_the_top_level_one_and_false_opts_out(tmp_path: Path) -> None:
    config = load(write(tmp_path, "record: all/\nroutes:\n"
                                  "  - {path: /a, upstream: 'http://127.0.0.1:1', record: mine/}\n"
                                  "  - {path: /b, upstream: 'http://127.0.0.1:1'}\n"
                                  "  - {path: /c, upstream: 'http://127.0.0.1:1', record: false}\n"), env={})
    assert [config.record_dir(r) for r in config.routes] == ["mine/", "all/", None]
    config = load(write(tmp_path, "routes:\n  - {upstream: 'http://127.0.0.1:1'}\n"), env={})
    assert config.record is None and config.record_dir(config.routes[0]) is None


@pytest.mark.parametrize("value, message", [("true", "record: true is not a directory"),
                                            ("''", "record is empty"), ("[a]", "['a'] is not a directory")])
def test_a_record_that_is_not_a_directory_is_an_error_naming_the_key(tmp_path: Path, value: str,
                                                                      message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, f"routes:\n  - {{upstream: 'http://127.0.0.1:1', record: {value}}}\n"), env={})
    assert [(p.loc, message in p.message) for p in caught.value.problems] == [("routes[0].record", True)]


def test_serve_record_sets_the_top_level_key_under_the_files_routes(tmp_path: Path) -> None:
    args = parser().parse_args(["serve", "--record", "rec/", "--route", "/=http://127.0.0.1:1",
                                "--config", str(write(tmp_path, "record: file-default/\nroutes:\n"
                                                                "  - {path: /x, upstream: 'http://127.0.0.1:1',"
                                                                " record: own/}\n"))])
    config = load(args.config, serve_overrides(args), env={})
    assert config.record == "rec/"
    assert [config.record_dir(r) for r in config.routes] == ["rec/", "own/"]
    assert load(None, serve_overrides(parser().parse_args(["serve"]))).record is None
    assert load(None, Overrides(extra={"record": "x"})).record == "x"


async def test_check_shows_where_each_route_records(tmp_path: Path) -> None:
    path = write(tmp_path, "record: all/\nroutes:\n  - {path: /a, upstream: 'http://127.0.0.1:1'}\n"
                           "  - {path: /b, upstream: 'http://127.0.0.1:1', record: false}\n")
    code, out, err = await run_cli("check", str(path))
    assert code == 0, err
    lines = out.splitlines()
    first, second = (lines.index(next(line for line in lines if line.startswith(f"[{i}] "))) for i in (0, 1))
    assert lines[first + 1].endswith(" record=all/") and "record=" not in lines[second + 1]
