"""Raw rows of a resolved source -> validated records, with bad rows raised or counted and logged.

A record is `{"text": str}` or `{"messages": [...]}` plus `source` (the source label) and `id`
(file:row, or hub id:row), so any later error can name where the sample came from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from data_prep.adapters import ROW_ADAPTERS, TREE_ADAPTERS
from data_prep.errors import BadRow, DataError
from data_prep.registry import Source
from data_prep.sources import iter_rows, resolve_files

log = logging.getLogger(__name__)
SHOWN_REASONS = 5


def iter_raw(source: Source) -> Iterator[tuple[str, object]]:
    """(where, raw row) pairs in a fixed order, from local files or the hub."""
    if source.path is None:
        import datasets

        kwargs = {"data_files": source.data_files} if source.data_files else {}
        if source.revision:
            kwargs["revision"] = source.revision
        for split in source.split.split("+"):  # streaming loads one split at a time
            try:
                ds = datasets.load_dataset(source.hub_id, split=split, streaming=True, **kwargs)
            except Exception as e:  # offline, gated or misspelled: one clear message
                raise DataError(
                    f"cannot load hub dataset '{source.hub_id}' (split '{split}'): {e}. "
                    "Offline? Set the source's 'path' to a local copy."
                ) from None
            for i, row in enumerate(ds, 1):
                yield f"{source.hub_id}/{split}:{i}", row
        return
    key = source.options.text_key if source.adapter == "text" else None
    for path in resolve_files(source.path, source.split):
        for row_no, row in iter_rows(path, key):
            yield f"{path}:{row_no}", row


@dataclass
class Skips:
    """Bad rows skipped under `on_error: skip`: how many, and the first reasons (each names file and row)."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.reasons) < SHOWN_REASONS:
            self.reasons.append(reason)

    def warn(self, label: str) -> None:
        """Log the count and the first reasons, once a source is done (later stages skip rows too)."""
        if self.count:
            log.warning(
                "source '%s': skipped %d bad rows; first reasons:\n  %s",
                label,
                self.count,
                "\n  ".join(self.reasons),
            )


def iter_records(source: Source, on_error: str = "raise", skips: Skips | None = None) -> Iterator[dict]:
    """Adapted records of one source; with on_error='skip' bad rows are counted in `skips` instead
    (the caller logs them with `Skips.warn`)."""
    skips = skips if skips is not None else Skips()
    opts, n = source.options, 0
    if source.adapter in TREE_ADAPTERS:
        results = TREE_ADAPTERS[source.adapter](iter_raw(source), opts)
    else:
        adapt = ROW_ADAPTERS[source.adapter]

        def results():
            for where, row in iter_raw(source):
                try:
                    yield where, row if isinstance(row, BadRow) else adapt(row, opts)
                except BadRow as e:
                    yield where, e

        results = results()
    for where, rec in results:
        if isinstance(rec, BadRow):
            # a reason may quote the row, and a lone surrogate in it could not be logged or written out
            reason = f"{where}: {rec}".encode("utf-8", "backslashreplace").decode("utf-8")
            if on_error == "raise":
                raise DataError(f"{reason} (adapter '{source.adapter}'; or set data.on_error: skip)")
            skips.add(reason)
            continue
        n += 1
        yield {**rec, "source": source.label, "id": where}
    if n == 0:
        raise DataError(
            f"source '{source.label}' has no usable rows"
            + (f" ({skips.count} skipped as bad; first: {skips.reasons[0]})" if skips.count else "")
        )
