"""Shared test helpers: location of ../shared, the OpenMX corpus, and AiiDA fixtures."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Keep AiiDA's configuration out of the user's home during tests.
os.environ.setdefault("AIIDA_PATH", tempfile.mkdtemp(prefix="aiida-deeph-tests-"))


def shared_dir() -> Path:
    """The ``shared/`` folder beside the checkout (override with AIIDA_DEEPH_SHARED)."""
    env = os.environ.get("AIIDA_DEEPH_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def corpus_dir() -> Path:
    return shared_dir() / "openmx-corpus"


def corpus_ids() -> list:
    root = corpus_dir()
    return sorted(p.name for p in root.iterdir() if (p / "openmx.scfout.xz").is_file()) if root.is_dir() else []


def corpus_ids_with_band() -> list:
    return [i for i in corpus_ids() if (corpus_dir() / i / "openmx.Band").is_file()]


@pytest.fixture(scope="session")
def shared():
    path = shared_dir()
    if not path.is_dir():
        pytest.fail(f"../shared not found at {path}: the tests need the shared corpus beside the checkout")
    return path
