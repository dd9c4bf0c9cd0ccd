"""Fixtures of the end-to-end tests in this folder: a real PostgreSQL server (tests/support/postgres.py),
started once per session on first use; its set-up time is printed in the test summary."""

from __future__ import annotations

import os
import secrets

import pytest

from tests.support.postgres import PostgresUnavailable, start_postgres

_SETUP: dict[str, float] = {}


@pytest.fixture(scope="session")
def postgres_server():
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))  # CI installs it (scripts/test): never skip there
        pytest.skip(str(exc))
    _SETUP["setup_s"] = server.setup_s
    yield server
    server.stop()


@pytest.fixture
def postgres_db(postgres_server):
    """A function that creates a fresh database on the session's server and returns its URL."""

    def create(prefix: str = "db") -> str:
        return postgres_server.create_database(f"{prefix}_{secrets.token_hex(4)}")

    return create


def pytest_terminal_summary(terminalreporter) -> None:
    if "setup_s" in _SETUP:
        terminalreporter.write_line(f"PostgreSQL test server: initdb + start + role took {_SETUP['setup_s']:.2f} s")
