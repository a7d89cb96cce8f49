"""The teacher-output store: every teacher output is paid for once, kept on disk, and billed.

A store is a folder of Parquet shards, `_ledger.jsonl` and `_manifest.json`:

    store/
      _ledger.jsonl           the bill and the log: every call sent (ids, cost, process), its outcome,
                              every shard committed, merged or quarantined (see ledger.py)
      _manifest.json          a checkpoint: settings, the shard list (rows, bytes, sha256), ledger position
      shard-000001.parquet    columns id, probs (or topk_index + topk_prob), teacher, then the
                              teacher's extras, if any (extras.py: raw answers, tokens, cost)
      _quarantine/            damaged shards, set aside (never read, never silently paid for again)

Names starting with `_` keep `pandas.read_parquet(store)`, `pyarrow.dataset.dataset(store)` and
duckdb's `read_parquet('store/*.parquet')` on the shards only (Arrow skips `_` and `.` files).

Crash safety. A call's ids and cost are fsynced to the ledger before it is sent (a lease: no
other process sends them meanwhile). Its shard is written to `_<name>.tmp`, fsynced and renamed
into place; one fsynced ledger line then commits it. The manifest is rewritten at checkpoints
(end of a run, merges); opening replays the ledger after the manifest's position, so a kill can
leave only (a) a `.tmp` file, deleted on the next open, or (b) a renamed shard without its
commit line (an orphan), which the next open adopts after checking it is readable and carries
this fingerprint, dropping any id already stored. A lost manifest is rebuilt by replaying the
whole ledger, checksums included.

Verification. Opening checks each shard's size and sha256 (one read that also yields its ids);
a shard changed later is re-verified before it is read. Damage is quarantined, not repaired:
paying again for the rows is the user's explicit choice (`repair(repay=True)`).

Flush policy: one shard per teacher call, so a kill loses at most the calls in flight. Small
per-call shards are merged as soon as they add up to `shard_size` rows (rolling compaction);
`compact()` also merges the last, incomplete group.

Writers exclude each other with an advisory lock on `store/.lock` (POSIX only).
"""

from .core import (FORMAT_VERSION, LOCK_NAME, MANIFEST_NAME, PRECISIONS, QUARANTINE, SETTINGS,  # noqa: F401
                   SHARD_PREFIX, SHARD_SUFFIX, LabelReport, StoreWarning, TeacherStore, _as_ids, _first_new,
                   _merge_groups, _read_manifest, _shard_number, _take)
from .ledger import LEDGER_NAME, Ledger  # noqa: F401
from .files import _atomic_write, _fsync_dir, _sha256_file, folder_lock  # noqa: F401
