"""Test-suite settings shared by every folder."""

import os

from hypothesis import settings

# CI runs property-based tests with a fixed derivation of examples, so a red build always reproduces;
# locally each run explores new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


#: Modules whose runs take minutes, longest first: `make test` hands whole modules to two worker processes
#: in collection order (pytest-xdist --dist loadscope --no-loadscope-reorder), so these start at once and the
#: short modules fill the gaps. The Slurm run comes first: it mostly waits for the cluster, while the other
#: worker makes the shared local run (tests/integration/conftest.py).
LONGEST_FIRST = (
    "tests/integration/test_slurm.py",
    "tests/integration/test_pipeline.py",
    "tests/integration/test_degenerate.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its place
