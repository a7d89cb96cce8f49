"""Labels ids 0..N-1 into a store with a slow deterministic teacher; the kill test SIGKILLs it.

Usage: python tests/_store_worker.py STORE_DIR LOGFILE N
Every teacher call appends its ids to LOGFILE (one line per call, flushed) before it answers,
so the test can count exactly which ids were ever sent to the teacher.
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mentor.store import TeacherStore  # noqa: E402

N_CLASSES, CHUNK, SHARD_SIZE, FINGERPRINT = 4, 50, 200, "slow-deterministic"


def expected_probs(ids) -> np.ndarray:
    """Probabilities as a pure function of the id, so any run can check any stored row."""
    k = np.array([int(i[2:]) for i in ids], dtype=np.float64)[:, None]
    logits = np.sin(k * np.arange(1, N_CLASSES + 1) * 0.37)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class SlowTeacher:
    fingerprint, n_classes, cost_per_example = FINGERPRINT, N_CLASSES, 0.5

    def __init__(self, log: Path):
        self.log = open(log, "a")

    def predict_proba(self, inputs, ids=None):
        self.log.write(" ".join(ids) + "\n")
        self.log.flush()
        time.sleep(0.01)
        return expected_probs(ids)


def main(store_dir: str, log: str, n: int) -> None:
    ids = np.array([f"id{i}" for i in range(n)])
    store = TeacherStore(store_dir, fingerprint=FINGERPRINT, n_classes=N_CLASSES, shard_size=SHARD_SIZE)
    chunks = ((ids[i:i + CHUNK], np.zeros((len(ids[i:i + CHUNK]), 1))) for i in range(0, n, CHUNK))
    store.label(SlowTeacher(Path(log)), chunks)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
