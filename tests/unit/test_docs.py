"""The documentation follows the settings' declarations: `.env.example`, the README's
settings table and `--help` each list every setting once, with its default, and nothing
else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from twilio_dg_proxy.__main__ import build_parser
from twilio_dg_proxy.config import Settings, settings_table

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings_table()
NAMES = [name for name, _, _ in SETTINGS]
# A row of the README's settings table: | `NAME` | `default` or (unset) | meaning |
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", re.MULTILINE)


def readme_rows() -> list[tuple[str, str]]:
    """(variable, default cell) for each row of the README's "## Settings" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return [(name, cell.strip()) for name, cell in ROW.findall(section)]


def as_documented(default: str) -> str:
    return f"`{default}`" if default else "(unset)"


@pytest.mark.parametrize(("name", "default", "doc"), SETTINGS)
def test_env_example_lists_every_setting_with_its_default(
    name: str, default: str, doc: str
) -> None:
    values = dotenv_values(ROOT / ".env.example")
    assert name in values
    assert (values[name] or "") == default


def test_env_example_lists_nothing_but_settings() -> None:
    assert sorted(dotenv_values(ROOT / ".env.example")) == sorted(NAMES)


def test_env_example_is_a_valid_configuration() -> None:
    values = {k: v or "" for k, v in dotenv_values(ROOT / ".env.example").items()}
    assert Settings.from_env(values) == Settings()


@pytest.mark.parametrize(("name", "default", "doc"), SETTINGS)
def test_readme_documents_every_setting_once_with_its_default(
    name: str, default: str, doc: str
) -> None:
    cells = [cell for row_name, cell in readme_rows() if row_name == name]
    assert cells == [as_documented(default)], f"README row of {name}"


def test_readme_table_has_no_row_for_an_undeclared_setting() -> None:
    assert sorted(name for name, _ in readme_rows()) == sorted(NAMES)


@pytest.mark.parametrize(("name", "default", "doc"), SETTINGS)
def test_help_lists_every_setting_with_its_help_and_default(
    name: str, default: str, doc: str
) -> None:
    parser, _ = build_parser("serve")
    help_text = " ".join(parser.format_help().split())  # argparse may rewrap nothing, but be safe
    assert f"{name} {doc} (default: {default or 'unset'})" in help_text


def test_a_drifted_readme_row_is_caught() -> None:
    """The table parser reads defaults, so a wrong one in a row would fail the test above."""
    rows = dict(readme_rows())
    assert rows["CHUNK_MS"] == "`100`" and rows["DEEPGRAM_API_KEY"] == "(unset)"
