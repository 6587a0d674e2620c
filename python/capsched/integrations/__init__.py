"""Integrations of capsched with serving frameworks.

Each integration is a module of its own that imports its framework lazily, so importing
this package needs nothing beyond capsched:

* :mod:`capsched.integrations.ray_serve`: a Ray Serve request router that ranks a
  deployment's replicas with capsched's capacity-aware placement (``pip install
  "capsched[ray]"``), and the replica-side helper that reports capacity and utilization.
"""

from __future__ import annotations

__all__: list[str] = []
