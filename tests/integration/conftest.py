"""The one clean integration run of a test session, shared by test_pipeline.py, test_multiverse_workflow.py and
test_slurm.py, also when pytest-xdist spreads them over worker processes (``make test``)."""

from __future__ import annotations

import pytest
from workflow_copy import Run, local_run


@pytest.fixture(scope="session")
def integration_run(tmp_path_factory, worker_id) -> Run:
    """The integration config with the multiverse, run once: under pytest-xdist the workers' temporary folders
    share a parent, where the first worker to ask runs it and the others reuse it (see :func:`local_run`)."""
    base = tmp_path_factory.getbasetemp()
    return local_run(base if worker_id == "master" else base.parent)
