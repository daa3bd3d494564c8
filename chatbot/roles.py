"""Who may do what in the admin: four roles, each able to do everything the one before it can.

- viewer: the dashboard, conversations and messages with numbers masked, reports; changes nothing.
- agent: + takeover, replies, the Waiting inbox, notes, retry on Problems.
- admin: + AI configurations, numbers, knowledge, access lists, budgets, deletes, the audit log.
- owner: + users and roles, revealing full numbers, key rotation.
"""
from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    AGENT = "agent"
    ADMIN = "admin"
    OWNER = "owner"


ORDER = (Role.VIEWER, Role.AGENT, Role.ADMIN, Role.OWNER)


def rank(role: str) -> int:
    """A role's place in ORDER; an unknown one ranks below a viewer (it may do nothing)."""
    try:
        return ORDER.index(Role(role))
    except ValueError:
        return -1


def may(role: str, needed: Role) -> bool:
    """Whether a user with `role` may do what needs `needed`."""
    return rank(role) >= ORDER.index(needed)
