"""The capability the policy model plugins provide (docs/capabilities.md)."""

from __future__ import annotations

#: Provided by model plugins whose model speaks the soft-policy protocol (plugins/policies/policy.py).
POLICY = "policy"
