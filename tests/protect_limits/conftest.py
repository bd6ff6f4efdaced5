"""Limits and hardening tests: apps of their own (each test module configures the limits it
tests) over the shared per-module databases of tests/conftest.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# Property tests: modest example counts, no per-example deadline (real HTTP and two databases);
# CI runs derandomised so a failure reproduces from the same seed.
settings.register_profile("dev", max_examples=40, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
