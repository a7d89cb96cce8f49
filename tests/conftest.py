"""Fixtures shared by test modules: the digits data set and a scikit-learn teacher fit on it."""

import pytest

from mentor.data import load_dataset
from mentor.teachers import SklearnTeacher


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def model(digits):
    """LogisticRegression on the first 300 digits, as a mentor teacher."""
    from sklearn.linear_model import LogisticRegression
    est = LogisticRegression(max_iter=300).fit(digits.features[:300], digits.labels[:300])
    return SklearnTeacher(est, 10)


def kill_before_done(store, monkeypatch):
    """Make `store` die (KeyboardInterrupt) at its next ledger `done` line: the answer is on disk
    but not committed, as when a process is killed there."""
    append = store._ledger.append

    def killed(record, **kw):
        if record["e"] == "done":
            raise KeyboardInterrupt
        return append(record, **kw)

    monkeypatch.setattr(store._ledger, "append", killed)
