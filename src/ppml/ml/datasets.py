"""PyTorch datasets that stream encrypted files with bounded memory (needs ``ppml[torch]``).

Importing this module imports PyTorch.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from ppml.crypto.formats import get_format
from ppml.errors import UsageError
from ppml.io.lines import LineRange
from ppml.keys.settings import KeySettings
from ppml.ml.data import DataFile, data_files, parse_error
from ppml.ml.library import require

__all__ = ["EncryptedCsvDataset"]


class EncryptedCsvDataset(IterableDataset):
    """Rows of encrypted CSV files as tensors, for a ``torch.utils.data.DataLoader``.

    Files are read in ranges of about ``split_size`` plaintext bytes (cut at segment boundaries, so a range
    decrypts only its own segments); the ranges are shared among the loader's workers, each line read by
    exactly one. Memory is bounded by ``block_size`` and a few encryption segments per worker, whatever the
    size of the data.

    Parameters
    ----------
    paths
        Encrypted CSV files, folders of them, or a list.
    features
        The feature columns, in order; each item is a float tensor of them (``dtype``).
    label
        The label column, or ``None`` to yield features only.
    keys
        Which key management services unwrap the files' keys (each worker unwraps them itself).
    header, sep
        CSV layout. Without a header, ``column_names`` names the columns.
    label_dtype
        The label tensor's dtype (default: ``dtype``; ``torch.long`` for class indices).
    batches
        Yield whole parsed blocks as ``(features [n, k], label [n])`` instead of single rows.
    shuffle, seed
        Read the ranges in a random order (seeded; call :meth:`set_epoch` to vary it per epoch).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *, features: Sequence[str],
                 label: str | None = None, keys: KeySettings | None = None, header: bool = True, sep: str = ",",
                 column_names: Sequence[str] | None = None, dtype: Any = None, label_dtype: Any = None,
                 batches: bool = False, shuffle: bool = False, seed: int = 0, split_size: int = 32 << 20,
                 block_size: int = 1 << 20) -> None:
        super().__init__()
        import torch

        if not header and column_names is None:
            raise UsageError("CSV files without a header need column_names=[...]")
        self.features, self.label = list(features), label
        self.keys = keys or KeySettings()
        self.header, self.sep, self.column_names = header, sep, list(column_names) if column_names else None
        self.dtype = dtype or torch.float32
        self.label_dtype = label_dtype or self.dtype
        self.batches, self.shuffle, self.seed, self.epoch = batches, shuffle, seed, 0
        self.block_size = block_size
        self.ranges = []
        for data_file in data_files(paths, self.keys):
            info = data_file.describe()
            self.ranges.extend((data_file, start, end) for start, end in
                               get_format(info.format).split_ranges(info, split_size, name=data_file.url))

    def set_epoch(self, epoch: int) -> None:
        """Use another shuffled order of the ranges (with ``shuffle=True``)."""
        self.epoch = epoch

    def _mine(self) -> list[tuple[str, int, int]]:
        ranges = list(self.ranges)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(ranges)
        worker = get_worker_info()
        return ranges if worker is None else ranges[worker.id::worker.num_workers]

    def _blocks(self, data_file: DataFile, start: int, end: int) -> Iterator[Any]:
        import pyarrow

        csv = require("pyarrow.csv", "ml")
        wanted = self.features + ([self.label] if self.label else [])
        url = data_file.url
        with data_file.open(self.keys) as plaintext:
            names = self.column_names
            if names is None:
                names = plaintext.readline().decode("utf-8").rstrip("\r\n").split(self.sep)
            lines = io.BufferedReader(LineRange(plaintext, start, end), self.block_size)
            read = csv.ReadOptions(column_names=names, skip_rows=1 if self.header and start == 0 else 0,
                                   block_size=self.block_size)
            try:
                with csv.open_csv(lines, read_options=read, parse_options=csv.ParseOptions(delimiter=self.sep),
                                  convert_options=csv.ConvertOptions(include_columns=wanted)) as reader:
                    yield from reader  # closed with the file, even when the loop stops early: it reads ahead
            except pyarrow.ArrowException as exc:
                raise parse_error(url, "csv", exc) from None

    def __iter__(self) -> Iterator[Any]:
        import numpy as np
        import torch

        for data_file, start, end in self._mine():
            url = data_file.url
            for block in self._blocks(data_file, start, end):
                try:
                    x = np.column_stack([block.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                                         for c in self.features])
                    y = block.column(self.label).to_numpy(zero_copy_only=False).astype(np.float64) \
                        if self.label else None
                except (ValueError, TypeError):  # numpy's message would quote the value
                    raise UsageError(f"{url}: a feature or label column is not numeric",
                                     hint=f"features {self.features} and label {self.label} must be numbers") from None
                xs = torch.from_numpy(x).to(self.dtype)
                ys = torch.from_numpy(y).to(self.label_dtype) if y is not None else None
                if self.batches:
                    yield (xs, ys) if ys is not None else xs
                    continue
                for i in range(len(xs)):
                    yield (xs[i], ys[i]) if ys is not None else xs[i]
