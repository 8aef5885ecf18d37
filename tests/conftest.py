"""Test-suite settings shared by every folder."""

import os

from hypothesis import settings

# CI runs property-based tests with a fixed derivation of examples, so a red build always reproduces;
# locally each run explores new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
