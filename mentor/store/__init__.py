"""The teacher-output store: every teacher output is paid for once and kept on disk.

A store is a folder of Parquet shards plus `_manifest.json`:

    store/
      _manifest.json          what is committed: teacher fingerprint, settings, shards, cost spent
      shard-000001.parquet    columns id, probs (or topk_index + topk_prob), teacher
      shard-000002.parquet

The manifest starts with `_` so that `pandas.read_parquet(store)`, `pyarrow.dataset.dataset(store)`
and duckdb's `read_parquet('store/*.parquet')` see only the shards (Arrow skips `_` and `.` files).

Crash safety. A shard is written to `_<name>.tmp`, fsynced and renamed into place; then the
manifest is rewritten the same way. A kill can therefore leave only (a) a `.tmp` file, deleted on
the next open, or (b) a renamed shard the manifest does not list yet (an orphan), which the next
open adopts after checking it is readable, carries this fingerprint, and dropping any id already
stored. The cost of an orphan's teacher call travels in its Parquet metadata, so it is not lost.

Flush policy: one shard per teacher call. A teacher call is the expensive thing (money or
minutes), so its result is on disk before the next call starts and a kill loses at most the call
in flight. Small per-call shards are merged as soon as they add up to `shard_size` rows (rolling
compaction), which keeps the file count near rows / shard_size and memory near shard_size rows
plus one chunk; `compact()` also merges the last, incomplete group.

One process writes at a time: mutations hold an advisory lock on `store/.lock` (POSIX only).
"""

from .core import (FORMAT_VERSION, LOCK_NAME, MANIFEST_NAME, PRECISIONS, QUARANTINE, SETTINGS,  # noqa: F401
                   SHARD_PREFIX, SHARD_SUFFIX, LabelReport, StoreWarning, TeacherStore, _as_ids, _first_new,
                   _merge_groups, _read_manifest, _shard_number, _take)
from .ledger import LEDGER_NAME, Ledger  # noqa: F401
from .files import _atomic_write, _fsync_dir, _sha256_file, folder_lock  # noqa: F401
