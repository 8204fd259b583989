"""Embedded storage under `server.data_dir`, safe for several worker processes of one machine.

- `db`: the SQLite file (`modelway.db`, WAL) and the one thread each process queries it from.
- `ledger`: batched accounting rows, their health, and the account API's reads (`usage`),
  with retention folding old rows into daily rollups (`retention`).
- `keys`: managed API keys, hashed, with an in-memory index refreshed across processes.
- `limits`: the per-key limit algorithms (GCRA minute limit, cost reservations, in-flight
  counts) over one record per key, whatever stores it.
- `counters`: those records in an mmap'd file (`holdings`: what each process holds in it).
- `metrics`: Prometheus counters and histograms merged over worker processes (their snapshot
  files: `metrics_files`).
"""
from proxy.store.counters import SharedCounters
from proxy.store.db import Database
from proxy.store.keys import KeyStore, hash_secret
from proxy.store.ledger import LedgerWriter
from proxy.store.usage import format_usage_table, usage_report
from proxy.store.metrics import Metrics

__all__ = ["Database", "KeyStore", "LedgerWriter", "Metrics", "SharedCounters",
           "format_usage_table", "hash_secret", "usage_report"]
