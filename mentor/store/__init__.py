"""The teacher-output store: every teacher output is paid for once, kept on disk, and billed.

A store is a folder of Parquet shards, `_ledger.jsonl` and `_manifest.json`:

    store/
      _ledger.jsonl           the bill and the log: every call sent (ids, cost, process), its outcome,
                              every shard committed, merged or quarantined (see ledger.py)
      _manifest.json          a checkpoint: settings, the shard list (rows, bytes, sha256), the row-log
                              frames not yet in a shard, ledger position
      _rows-XXXX.log          the row log: answers of small calls between shards (rowlog.py); present
                              only while a run is going (or after a kill)
      shard-000001.parquet    columns id, probs (or topk_index + topk_prob), teacher, then the
                              teacher's extras, if any (extras.py: raw answers, tokens, cost)
      _quarantine/            damaged shards, set aside (never read, never silently paid for again)

Names starting with `_` keep `pandas.read_parquet(store)`, `pyarrow.dataset.dataset(store)` and
duckdb's `read_parquet('store/*.parquet')` on the shards only (Arrow skips `_` and `.` files).

Crash safety. A call's ids and cost are fsynced to the ledger before it is sent (a lease: no
other process sends them meanwhile). Its answer is appended to the row log as one frame with its
own sha256 and made durable (`fdatasync` into zeros the log writes ahead; see rowlog.py); a
ledger line naming the frame then commits it (2 syncs per call in all). Once the committed frames
add up to `shard_size` rows, and at the end of each run, they are written as one Parquet shard
(`_<name>.tmp`, fsynced, renamed) that one fsynced `flush` line commits; a call of `shard_size`
rows or more goes straight to a shard. The manifest is rewritten
at checkpoints (end of a run, merges); opening replays the ledger after the manifest's position,
so a kill can leave only (a) a `.tmp` file, deleted on the next open, (b) a renamed shard
without its commit line (an orphan), which the next open adopts after checking it is readable and
carries this fingerprint, dropping any id already stored, or (c) a frame without its commit line,
adopted the same way (by the next open, or by the next writer before it appends after it); a torn
frame fails its checksum and is skipped, and its bytes are cut once the rest of its log is
adopted. A lost manifest is rebuilt by replaying the whole ledger, checksums included.

Verification. Opening checks each shard's size and sha256 (one read that also yields its ids);
a shard changed later is re-verified before it is read. Damage is quarantined, not repaired:
paying again for the rows is the user's explicit choice (`repair(repay=True)`).

Flush policy: a kill loses at most the calls in flight. Rows are written as Parquet once (from
the row log), not once per call and again when merged; short shards (the end of a run, `write()`)
are merged as soon as consecutive ones add up to `shard_size` rows; `compact()` also merges the
last, incomplete group.

Writers exclude each other with an advisory lock on `store/.lock` (POSIX only).
"""

from .core import (FORMAT_VERSION, LOCK_NAME, MANIFEST_NAME, PRECISIONS, QUARANTINE, SETTINGS,  # noqa: F401
                   SHARD_PREFIX, SHARD_SUFFIX, LabelReport, StoreWarning, TeacherStore, _as_ids, _first_new,
                   _merge_groups, _read_manifest, _shard_number, _take)
from .ledger import LEDGER_NAME, Ledger  # noqa: F401
from .files import _atomic_write, _fsync_dir, _sha256_file, folder_lock  # noqa: F401
