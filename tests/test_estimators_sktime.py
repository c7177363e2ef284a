"""The sktime adapters (rnnkit.estimators.sktime) against sktime's own conformance suite.

The classifier runs the whole suite for one instance (111 tests, about 8 s of CPU). The forecaster's whole suite is
754 tests and two minutes of CPU (every index type x every horizon): here, the tests of its contract without the
index matrix; ``python -c "from sktime.utils.estimator_checks import check_estimator; from rnnkit.estimators.sktime
import RnnkitForecaster as F; print(check_estimator(F, verbose=False))"`` runs all of it (all passed on 2026-12-07).
"""

from __future__ import annotations

import pytest

# imported in the tests, not here: both are slow-tier tests, and sktime's import (seconds) would otherwise cost every
# pytest worker that collects this file, in make test too

FORECASTER_TESTS = [
    "test_constructor", "test_set_params", "test_clone", "test_fit_does_not_overwrite_hyper_params",
    "test_fit_idempotent", "test_persistence_via_pickle", "test_raises_not_fitted_error", "test_get_fitted_params",
    "test_fit_predict", "test_predict_series_name_preserved", "test_predict_interval", "test_predict_quantiles",
    "test_fh_not_passed_error_handling", "test_class_has_doctest_example", "test_doctest_examples",
]  # fmt: skip


def _failures(results: dict) -> dict:
    return {name: str(outcome)[:300] for name, outcome in results.items() if outcome != "PASSED"}


def _suite():
    pytest.importorskip("sktime")
    from sktime.utils.estimator_checks import check_estimator

    from rnnkit.estimators.sktime import RnnkitClassifier, RnnkitForecaster

    return check_estimator, RnnkitClassifier, RnnkitForecaster


@pytest.mark.slow
def test_sktime_classifier_suite():
    check_estimator, RnnkitClassifier, _ = _suite()
    results = check_estimator(RnnkitClassifier(**RnnkitClassifier.get_test_params()[0]), verbose=False)
    assert len(results) > 100 and not _failures(results)


@pytest.mark.slow
def test_sktime_forecaster_contract():
    check_estimator, _, RnnkitForecaster = _suite()
    forecaster = RnnkitForecaster(**RnnkitForecaster.get_test_params()[0])
    results = check_estimator(forecaster, verbose=False, tests_to_run=FORECASTER_TESTS)
    assert {name.split("[")[0] for name in results} == set(FORECASTER_TESTS) and not _failures(results)
