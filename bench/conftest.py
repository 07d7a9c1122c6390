"""pytest hooks and fixtures for ``pytest bench/`` (helpers live in ``benchlib.py``).

Parametrises every benchmark over ``case`` x ``backend`` x ``mode``: CPU cases only on CPU,
all cases on CUDA; under ``--benchmark-disable`` (smoke run) only the smallest case.
"""

from __future__ import annotations

import pytest

from benchlib import CPU_CASES, CUDA_CASES, IS_CUDA, MODES, Runner, available_backends


def cases_for_run(config) -> list:
    if config.getoption("benchmark_disable", default=False) and not config.getoption("benchmark_enable", default=False):
        return CPU_CASES[:1]  # smoke: every stage/mode/backend once on the smallest scene
    return CUDA_CASES if IS_CUDA else CPU_CASES


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    params = []
    for case in cases_for_run(metafunc.config):
        for backend in available_backends():
            if metafunc.function.__name__ == "test_bin":  # binning does not depend on the mode
                params.append(pytest.param(case, backend, None, id=f"{backend}-{case.id}"))
                continue
            for mode in MODES:
                if backend == "gsplat" and mode != "alpha":
                    continue
                params.append(pytest.param(case, backend, mode, id=f"{backend}-{mode}-{case.id}"))
    metafunc.parametrize("case,backend,mode", params)


@pytest.fixture
def runner(benchmark):
    return Runner(benchmark)
