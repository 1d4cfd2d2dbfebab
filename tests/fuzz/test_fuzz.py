"""CI slice of the hostile-input fuzzer against the session's real server: no INTERNAL,
UNKNOWN, UNAVAILABLE, hang, wrongly accepted request, dead server or changed greedy
reference. ``make fuzz`` runs the full ≥ 5000 against a server of its own."""

from __future__ import annotations

import pytest

from tests.fuzz import corpus
from tests.fuzz.runner import KNOWN_OPEN_KINDS, run

SLICE = 300
SEED = 20261130


def test_every_kind_builds_deterministically():
    for kind in corpus.KINDS:
        a, b = corpus.build(kind, 7), corpus.build(kind, 7)
        assert a == b and a.kind == kind and a.messages is not None
    assert len({c.kind for c in corpus.cases(1, len(corpus.KINDS))}) == len(corpus.KINDS)


def test_known_open_kinds_exist():
    assert KNOWN_OPEN_KINDS <= set(corpus.KINDS)


@pytest.mark.timeout(300)
async def test_fuzz_slice(grpc_target):
    report = await run(
        grpc_target, corpus.cases(SEED, SLICE), seed=SEED, concurrency=8, timeout_s=20, stall_timeout_s=15
    )
    text = report.text(KNOWN_OPEN_KINDS)
    print(text)
    assert report.healthy_after, text
    assert not report.reference_changed, text
    assert not report.failures(KNOWN_OPEN_KINDS), text
