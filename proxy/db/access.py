"""The gateway's config read again when its file changes (databases, agents, the policy list), and whether an open
connection is still admitted under it: one that no longer is ends at its next statement, as a revoked HTTP stream is
closed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Agent, Config, as_running, load_config
from ..dbconfig import Database
from ..policy.engine import Policy
from ..policy.load import load_policy_set


def read_again(running: Config) -> tuple[Config, tuple[Policy, ...]]:
    """The edited config as the running gateway takes it over (what only a restart changes kept as it runs, as `run`
    keeps it), with the policies it names; a ConfigError (the file or a policy has a mistake) leaves the running ones
    in force. Blocking: run it in a thread."""
    fresh = as_running(load_config(running.file), running)
    return fresh, tuple(load_policy_set(fresh.policy_sources).policies)


@dataclass(frozen=True)
class Grant:
    """What admitted a connection when it logged in: the agent's entry and the database's, as the config had them."""

    agent: Agent | None
    database: Database


def revoked(grant: Grant, agent: str, config: Config) -> tuple[str, str] | None:
    """Why a connection admitted by `grant` is no longer (SQLSTATE, message), under the config in force now."""
    name = grant.database.name
    database = config.databases.by_name.get(name)
    if database is None:
        return "3D000", f"database {name!r} was removed from goex-proxy's config; the connection is closed"
    if config.agents.get(agent) != grant.agent:
        return "28000", f"agent {agent!r} was changed or removed in goex-proxy's config; the connection is closed"
    if not database.admits(agent):
        return "42501", (f"agent {agent!r} may no longer use database {name!r} (its 'agents' in the config); the "
                         "connection is closed")
    if database != grant.database and (
            dataclasses.replace(database, agents=None) != dataclasses.replace(grant.database, agents=None)):
        return "57P01", f"database {name!r} was changed in goex-proxy's config; the connection is closed (reconnect)"
    return None
