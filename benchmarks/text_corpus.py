"""Real English sentences as benchmark input, read from ``../shared/data`` at
run time (never copied into the repository): the sentiment sentences
(Amazon, IMDb and Yelp reviews: ``sentence TAB label``) and the SMS spam
collection (``label TAB text``), one sentence per row, repeated until the
column holds at least the number of words asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dp_spark.tokenize import segment

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sentences(data: Path = DEFAULT_DATA) -> list[str]:
    """Every sentence of the two collections, in file order."""
    found = []
    for path in sorted((data / "sentiment_sentences").glob("*_labelled.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            text, _, _ = line.rpartition("\t")
            if text.strip():
                found.append(text.strip())
    for line in (data / "sms_spam" / "SMSSpamCollection.tsv").read_text(encoding="utf-8").splitlines():
        _, _, text = line.partition("\t")
        if text.strip():
            found.append(text.strip())
    if not found:
        raise SystemExit(f"no sentences under {data}: pass --data")
    return found


def word_tokens(strings: pa.Array) -> pa.Array:
    """The same rows as lists of the words dp-spark's tokenizer finds in them
    (the array<string> form of the same tokens; separators dropped)."""
    cut = segment(strings)
    keep = np.flatnonzero(cut.is_word)
    rows = np.repeat(np.arange(len(strings)), np.diff(cut.row_offsets))[keep]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(strings)))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), cut.values.take(pa.array(keep)).cast(pa.string()))


def corpus(min_words: int, data: Path = DEFAULT_DATA) -> pa.Table:
    """A table ``id`` (int64), ``text`` (string) and ``tokens``
    (array<string>, the words of ``text``), the sentences repeated in order
    until there are at least ``min_words`` words."""
    base = pa.array(sentences(data), pa.string())
    per_copy = int(pc.sum(pc.list_value_length(word_tokens(base))).as_py())
    copies = -(-min_words // per_copy)
    text = pa.concat_arrays([base] * copies)
    return pa.table({"id": np.arange(len(text), dtype=np.int64), "text": text, "tokens": word_tokens(text)})


def word_count(table: pa.Table) -> int:
    return int(pc.sum(pc.list_value_length(table.column("tokens"))).as_py())
