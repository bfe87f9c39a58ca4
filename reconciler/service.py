"""Wiring for the real service: which parts exist depends on the config.

Kept apart from agent.py so the runtime stays testable with injected parts,
and so optional parts (control plane, evidence, integrations) are imported
only when configured.
"""

from __future__ import annotations

import logging

from reconciler.agent import Agent
from reconciler.daemon import Daemon
from specs.config import AgentConfig

log = logging.getLogger("compliance_agent.service")


def build_agent(cfg: AgentConfig) -> Agent:
    return Agent(cfg)


def build_daemon(cfg: AgentConfig) -> Daemon:
    agent = build_agent(cfg)
    return Daemon(agent)
