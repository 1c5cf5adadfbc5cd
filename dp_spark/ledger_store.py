"""The privacy ledger on storage: one small JSON file per run under
``<output root>/ledger/``, written whole (temporary name, then moved), so a
reader never sees half an entry and any filesystem Spark writes to can hold
it. ``spark.read.json("<root>/ledger")`` reads it as a table.

A run's file is first written with status ``pending`` (before the run's
table can change) and moved to ``committed`` or ``rolled_back`` at the end;
pending entries count as released. Ledgers written by dp-spark 0.1 (Parquet
files, no guarantee recorded) are read too, as releases without a known
guarantee.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from dp_spark import storage
from dp_spark.errors import DPRuntimeError
from dp_spark.ledger import COMMITTED, PENDING, ROLLED_BACK, LedgerEntry

SUFFIX = ".json"


class LedgerStore:
    def __init__(self, location: str) -> None:
        self.location = location

    def _run_file(self, run_id: str) -> str:
        return storage.join(self.location, run_id + SUFFIX)

    def runs(self) -> dict[str, dict[str, Any]]:
        """Every run's record (run_id -> {"status", "entries", ...})."""
        records = {}
        for entry in storage.list_dir(self.location):
            if entry.is_dir or not entry.name.endswith(SUFFIX):
                continue
            try:
                record = json.loads(storage.read_text(entry.location))
            except ValueError:
                raise DPRuntimeError(f"the ledger file {entry.location} is not valid JSON: the ledger is damaged; "
                                     "restore it from a backup before releasing more") from None
            records[record["run_id"]] = record
        return records

    def entries(self) -> list[LedgerEntry]:
        """Every release recorded, pending, committed and rolled back (each with its run's status)."""
        entries = [
            LedgerEntry(**{**fields, "status": record["status"]})
            for record in self.runs().values()
            for fields in record["entries"]
        ]
        return entries + self._legacy_entries()

    def record(self, run_id: str, entries: list[LedgerEntry], status: str = PENDING) -> None:
        """Write a run's entries with ``status``; a new pending record may
        replace only a rolled-back attempt of the same run id (a retry)."""
        if status == PENDING and self.runs().get(run_id, {"status": ROLLED_BACK})["status"] != ROLLED_BACK:
            raise DPRuntimeError(f"the ledger already holds run {run_id}")
        storage.write_text(self._run_file(run_id), json.dumps({
            "run_id": run_id,
            "status": status,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "entries": [{k: v for k, v in e.to_dict().items() if k != "status"} for e in entries],
        }, indent=2, sort_keys=True))

    def set_status(self, run_id: str, status: str) -> None:
        if status not in (COMMITTED, ROLLED_BACK):
            raise ValueError(f"a run ends committed or rolled back, not {status!r}")
        record = self.runs().get(run_id)
        if record is None:
            raise DPRuntimeError(f"the ledger has no run {run_id} to mark {status}")
        self.record(run_id, [LedgerEntry(**{**fields, "status": status}) for fields in record["entries"]], status)

    def pending_runs(self) -> list[str]:
        return sorted(run for run, record in self.runs().items() if record["status"] == PENDING)

    def _legacy_entries(self) -> list[LedgerEntry]:
        """Entries of a dp-spark 0.1 ledger (Parquet), booked without a guarantee."""
        parquet = [e for e in storage.list_dir(self.location) if e.name.endswith(".parquet")]
        if not parquet:
            return []
        import pyarrow.parquet as pq

        entries = []
        for file in parquet:
            fs, path = storage.resolve(file.location)
            for row in pq.read_table(path, filesystem=fs).to_pylist():
                partition = dict(part.split("=", 1) for part in row["partition"].split("/")) \
                    if row["partition"] != "*" else {}
                entries.append(LedgerEntry(
                    row["run_id"], row["dataset"], json.dumps(partition, sort_keys=True, separators=(",", ":")),
                    row["column"], row["output_column"], row["mechanism"], float(row["epsilon"]),
                    f"legacy:{row['run_id']}:{row['output_column']}", row["seed_fingerprint"], row["row_key"],
                    "none", None, 0.0, None, row["recorded_at"], COMMITTED,
                ))
        return entries
