"""The documentation stays true: every setting is in .env.example (with its default) and
in the README's settings table."""

from __future__ import annotations

from pathlib import Path

import pytest
from dotenv import dotenv_values

from twilio_dg_proxy.config import Settings, settings_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "default", "doc"), settings_table())
def test_env_example_lists_every_setting_with_its_default(
    name: str, default: str, doc: str
) -> None:
    values = dotenv_values(ROOT / ".env.example")
    assert name in values
    assert (values[name] or "") == default


def test_env_example_is_a_valid_configuration() -> None:
    values = {k: v or "" for k, v in dotenv_values(ROOT / ".env.example").items()}
    assert Settings.from_env(values) == Settings()


@pytest.mark.parametrize(("name", "default", "doc"), settings_table())
def test_readme_documents_every_setting(name: str, default: str, doc: str) -> None:
    assert f"`{name}`" in (ROOT / "README.md").read_text()
