"""`mentor store status | repair`: a store's bill and health as plain text."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from ..errors import StoreError
from .core import MANIFEST_NAME, StoreWarning, TeacherStore
from .ledger import LEDGER_NAME


def resolve(path) -> Path:
    """The store folder of `path`: a store folder itself, or a run config (its store.path, or
    output_dir/store). StoreError where there is no store."""
    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
        from ..config import load_config
        cfg = load_config(path)
        path = Path(cfg.store.path) if cfg.store.path else Path(cfg.output_dir) / "store"
    if not TeacherStore.exists(path):
        raise StoreError(f"{path} is not a teacher-output store (no {MANIFEST_NAME}, {LEDGER_NAME} or shard-*.parquet "
                         "in it). Give a store folder (a run's output_dir/store, or its store.path) or a run config.")
    return path


def status_text(s: dict) -> str:
    """The lines `mentor store status` prints."""
    def money(x: float) -> str:
        return f"{x:,.4g}"

    owners = ", ".join(s["in_flight"]["owners"])
    lines = [
        f"store        {s['path']} ({'writable' if s['writable'] else 'read-only'})",
        f"teacher      {s['fingerprint']}",
        f"rows         {s['rows']:,} stored in {s['shards']} shards"
        + (f" and the row log ({s['unflushed_rows']:,} rows written to a shard at the end of the run)"
           if s.get("unflushed_rows") else ""),
        f"spent        {money(s['spent'])} over {s['calls']:,} teacher calls sent (the ledger)",
        f"  stored     {money(s['done']['cost'])} for {s['done']['calls']:,} calls answered and stored",
        f"  failed     {money(s['failed']['cost'])} for {s['failed']['calls']:,} calls that failed or whose answer "
        "could not be kept",
        f"  lost       {money(s['lost']['cost'])} for {s['lost']['calls']:,} calls that never returned (their process "
        "died mid-call)",
        f"  in flight  {money(s['in_flight']['cost'])} for {s['in_flight']['calls']:,} calls running now"
        + (f" ({owners})" if owners else ""),
    ]
    if s["carried"]["calls"] or s["carried"]["cost"]:
        lines.append(f"  carried    {money(s['carried']['cost'])} for {s['carried']['calls']:,} calls recorded before "
                     "the ledger existed")
    if not s["ledger"]:
        lines.append("  (no ledger yet: spent is the manifest's tally of stored calls; it starts when the store "
                     "is next opened with write access)")
    if s["quarantined"]:
        for q in s["quarantined"]:
            lines.append(f"quarantined  {q['shard']}: {q['rows']:,} paid rows, set aside in {q['where']}")
        lines.append(f"             restore them and run `mentor store repair {s['path']}`, or run "
                     f"`mentor store repair {s['path']} --repay` to label those rows anew")
    else:
        lines.append("quarantined  none (every shard matches its checksum)")
    return "\n".join(lines)


def _open(path) -> TeacherStore:
    """Open the store, printing what it repaired on the way as plain `warning:` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        store = TeacherStore.open(resolve(path))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return store


def status(path) -> str:
    return status_text(_open(path).status())


def repair(path, *, repay: bool = False) -> str:
    store = _open(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        r = store.repair(repay=repay)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    lines = [f"checked {len(store.manifest['shards'])} shards of {store.path}: "
             + (f"{len(r['damaged'])} damaged, quarantined: {', '.join(r['damaged'])}" if r["damaged"] else
                "none damaged")]
    if r["restored"]:
        lines.append(f"restored from {store.path}/_quarantine: {', '.join(r['restored'])}")
    if r["repay"]:
        lines.append(f"accepted to pay again for the rows of {', '.join(r['repay'])}: the next `mentor label` "
                     "asks the teacher for them")
    if r["quarantined"]:
        lines.append(f"still quarantined: {', '.join(r['quarantined'])}; labeling refuses until you restore them "
                     "or run with --repay")
    return "\n".join(lines + ["", status_text(store.status())])
