"""Result tables, plots and reports of calibrate, evaluate and audit: small
driver-side tables written whole (Parquet, and CSV beside them) at any
storage location, without a Spark job."""

from __future__ import annotations

import io
import logging
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dp_spark import storage

log = logging.getLogger(__name__)


def write_result_table(frame: pd.DataFrame, location: str) -> None:
    """``frame`` as ``location`` (a Parquet file) and ``location``.csv.
    Infinities are written as null; a column with no value at all (which
    has no type) as strings."""
    frame = frame.replace([np.inf, -np.inf], np.nan)
    frame = frame.astype({c: "string" for c in frame.columns if frame[c].isna().all()})
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    storage.write_bytes(location, buffer.getvalue())
    storage.write_text(location + ".csv", frame.to_csv(index=False))


def write_plot(location: str, render: Callable[[], bytes]) -> bool:
    """Write the PNG that ``render`` draws; without matplotlib, warn and return False."""
    try:
        png = render()
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'dp-spark[plot]'): no plot written")
        return False
    storage.write_bytes(location, png)
    return True
