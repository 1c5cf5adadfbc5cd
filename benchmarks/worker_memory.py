"""Memory of the Python workers while they perturb: peak RSS, and what it
is made of: anonymous memory (each worker's own) against file pages (the
memory-mapped artifact, which workers of one executor can share), with the
proportional set size (Pss) that says how far they really share them.

    nice .venv/bin/python benchmarks/worker_memory.py                      # default 100k vocabulary
    nice .venv/bin/python benchmarks/worker_memory.py --artifact DIR      # a built artifact (400k, say)

Perturbs real sentences (../shared/data, repeated to --rows rows, 4
partitions) in one mapInArrow pass on a local[2] classic session, with
tgumbel and mlap side by side (the neighbour table, the vectors and mlap's
flat index all in use), written to a noop sink. Meanwhile /proc/<pid>/status
of this driver's Python workers (descendants of its JVM forked by
pyspark.daemon) is sampled every 0.1 s; after the pass, each worker's VmHWM
(its peak RSS over its life, which here is this pass), RssAnon/RssFile and
smaps_rollup's Pss_Anon/Pss_File, and per mapped artifact file its Rss and
Pss. Classic only: the workers of a Connect server are not this process's
descendants.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")


def sentences() -> list[str]:
    texts = []
    for name in ("amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt"):
        for line in (DATA / "sentiment_sentences" / name).read_text(encoding="utf-8", errors="replace").splitlines():
            texts.append(line.rsplit("\t", 1)[0])
    for line in (DATA / "sms_spam" / "SMSSpamCollection.tsv").read_text(encoding="utf-8",
                                                                         errors="replace").splitlines():
        texts.append(line.split("\t", 1)[-1])
    return [t for t in texts if t.strip()]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def python_workers(root: int) -> list[int]:
    """Processes forked by pyspark.daemon (the daemon itself excluded)."""
    workers = []
    for pid in descendants(root):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "pyspark.daemon" in command and "pyspark.daemon" in parent_command:
            workers.append(pid)
    return workers


def status(pid: int) -> dict[str, int]:
    """/proc/<pid>/status memory fields, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0])
    return values


def rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
            values[key] = int(rest.split()[0])
    return values


def mapped_files(pid: int, marker: str) -> dict[str, dict[str, int]]:
    """Rss and Pss (kB) of each mapping whose file name contains ``marker``."""
    files: dict[str, dict[str, int]] = {}
    current = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            current = head[5] if len(head) > 5 and marker in head[5] else None
            continue
        if current and head and head[0] in ("Rss:", "Pss:"):
            entry = files.setdefault(os.path.basename(current), {"Rss": 0, "Pss": 0})
            entry[head[0][:-1]] += int(head[1])
    return files


class Sampler(threading.Thread):
    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak, self.done = root, {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in python_workers(self.root):
                try:
                    rss = status(pid)["VmRSS"]
                except (OSError, KeyError):
                    continue
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self.done.wait(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=100_000, help="default GloVe embeddings of this size")
    parser.add_argument("--artifact", help="a built artifact folder instead")
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--tgumbel-epsilon", type=float, default=100.0)
    parser.add_argument("--mlap-epsilon", type=float, default=10.0)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from dp_spark.config import EmbeddingsConfig
    from dp_spark.spark.perturber import DPTextPerturber, perturb
    from dp_spark.spark.session import start_session

    embeddings = EmbeddingsConfig(artifact=args.artifact) if args.artifact else EmbeddingsConfig(
        vocab_size=args.vocab_size)
    spark, _ = start_session("dp-spark worker memory", "local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    spark.conf.set("spark.sql.execution.pyspark.udf.faulthandler.enabled", "true")
    texts = sentences()
    frame = spark.createDataFrame(pd.DataFrame({"text": (texts * (args.rows // len(texts) + 1))[: args.rows]}))
    frame = frame.repartition(4).cache()
    frame.count()
    tgumbel = DPTextPerturber(inputCol="text", outputCol="text_tgumbel", mechanism="tgumbel",
                              epsilon=args.tgumbel_epsilon, acceptNoGuarantee=True).setEmbeddings(embeddings)
    runtime = tgumbel.runtime()
    mlap = DPTextPerturber(inputCol="text", outputCol="text_mlap", mechanism="mlap",
                           epsilon=args.mlap_epsilon).setEmbeddings(embeddings).setRuntime(runtime)
    artifact = runtime.artifact
    sizes = {os.path.basename(p): os.path.getsize(p) >> 10 for p in artifact.paths.values()}
    jvm = [pid for pid in descendants(os.getpid()) if b"java" in Path(f"/proc/{pid}/cmdline").read_bytes()][0]
    sampler = Sampler(jvm)
    sampler.start()
    started = time.perf_counter()
    perturb(frame, [tgumbel, mlap]).data.write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    workers = {}
    for pid in python_workers(jvm):
        workers[pid] = {**status(pid), **{f"smaps_{k}": v for k, v in rollup(pid).items()},
                        "sampled_peak_VmRSS": sampler.peak.get(pid), "artifact_files": mapped_files(pid, artifact.id)}
    spark.stop()
    result = {"artifact": artifact.id, "words": artifact.meta["words"], "rows": args.rows, "seconds": round(seconds, 1),
              "artifact_file_kB": sizes, "workers": workers}
    print(json.dumps(result, indent=1))
    mb = 1 / 1024
    print(f"\n{artifact.meta['words']:,} words, {args.rows:,} rows perturbed (tgumbel + mlap) in {seconds:.1f} s; "
          f"artifact files {sum(sizes.values()) * mb:.0f} MB")
    for pid, w in workers.items():
        mapped = {key: sum(f[key] for f in w["artifact_files"].values()) * mb for key in ("Rss", "Pss")}
        print(f"worker {pid}: peak {w['VmHWM'] * mb:.0f} MB (VmHWM), now {w['VmRSS'] * mb:.0f} MB = anon "
              f"{w['RssAnon'] * mb:.0f} + file {w['RssFile'] * mb:.0f} MB; Pss anon {w['smaps_Pss_Anon'] * mb:.0f}, "
              f"file {w['smaps_Pss_File'] * mb:.0f} MB; artifact mapped: Rss {mapped['Rss']:.0f} MB, "
              f"Pss {mapped['Pss']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
