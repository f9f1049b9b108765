"""Bring-your-own recommendation data: CSV files in, one validated, immutable :class:`Dataset` out.

A run is only as trustworthy as its input, so every problem found in the files is reported as a
:class:`DataError` that names the file, the 1-based physical line where the offending record starts, and the
field; and nothing is returned until every check has passed (no partial results).

Files (standard CSV as read by :mod:`csv`: quoted fields, quoted newlines, UTF-8 with or without BOM,
CRLF or LF line ends; surrounding whitespace of every field is stripped):

- ``interactions.csv``: ``user_id,item_id,timestamp[,rating]`` in any column order.
- ``items.csv``: ``item_id,title[,text][,categories]``, categories ``|``-separated. This is the catalog.
- ``users.csv`` (optional): ``user_id,store``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"
USERS_FILE = "users.csv"

INTERACTION_REQUIRED = ("user_id", "item_id", "timestamp")
INTERACTION_OPTIONAL = ("rating",)
ITEM_REQUIRED = ("item_id", "title")
ITEM_OPTIONAL = ("text", "categories")
USER_REQUIRED = ("user_id", "store")
USER_OPTIONAL: tuple[str, ...] = ()

CATEGORY_SEPARATOR = "|"
EXPECTED_DELIMITER = ","
# Delimiters people commonly export by mistake; seeing one in the header explains a missing column.
SUSPECT_DELIMITERS = (";", "\t", "|")
SENTENCE_END = (".", "!", "?")
INT64_MAX = int(np.iinfo(np.int64).max)

_INTEGER_ID = re.compile(r"[+-]?[0-9]+")


class DataError(ValueError):
    """Bad input data; str() is '<path>:<line>: <field>: <message>' (line/field omitted when not applicable).

    The compiler-style prefix lets editors and humans jump straight to the offending record.
    """

    def __init__(
        self, path: str | Path, message: str, line: int | None = None, field: str | None = None
    ) -> None:
        self.path = str(path)
        self.message = message
        self.line = line
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        location = self.path if self.line is None else f"{self.path}:{self.line}"
        field = [] if self.field is None else [self.field]
        return ": ".join([location, *field, self.message])


# --------------------------------------------------------------------------------------------- raw tables


@dataclass(frozen=True)
class _Table:
    """A parsed CSV file: header positions, raw records and where each record starts in the file."""

    path: Path
    columns: dict[str, int]
    rows: list[list[str]]
    lines: list[int]

    def has(self, name: str) -> bool:
        return name in self.columns

    def column(self, name: str) -> list[str]:
        """Values of one column, whitespace-stripped, so ' 42' and '42' name the same id."""
        position = self.columns[name]
        return [row[position].strip() for row in self.rows]

    def error(self, row: int, field: str | None, message: str) -> DataError:
        return DataError(self.path, message, line=self.lines[row], field=field)


def _utf8_error(path: Path) -> DataError:
    """Locate the first undecodable byte; the text reader decodes in chunks, so its line count is behind."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return DataError(path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", line=line)
    return DataError(path, "not valid UTF-8")  # pragma: no cover - the reader and bytes.decode agree


def _open_text(path: Path) -> TextIO:
    """Open for the csv module (newline='' keeps quoted newlines; utf-8-sig drops a BOM)."""
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read file: {exc.strerror or exc}") from None


def _read_records(path: Path) -> tuple[list[list[str]], list[int]]:
    """All non-blank records of a CSV file with the physical line each starts on."""
    rows: list[list[str]] = []
    lines: list[int] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        previous_end = 0
        try:
            for row in reader:
                if row:
                    rows.append(row)
                    lines.append(previous_end + 1)
                previous_end = reader.line_num
        except UnicodeDecodeError:
            raise _utf8_error(path) from None
        except csv.Error as exc:
            raise DataError(path, f"malformed CSV: {exc}", line=previous_end + 1) from None
    return rows, lines


def _check_header(
    path: Path, header: list[str], line: int, required: Sequence[str], optional: Sequence[str]
) -> dict[str, int]:
    """Map column names to positions, rejecting wrong delimiters, duplicates, unknown and missing columns."""
    names = [name.strip() for name in header]
    missing = [name for name in required if name not in names]
    if missing:
        for suspect in SUSPECT_DELIMITERS:
            if any(suspect in name for name in names):
                raise DataError(
                    path,
                    f"wrong delimiter? expected {EXPECTED_DELIMITER!r} but the header looks "
                    f"{suspect!r}-separated: {EXPECTED_DELIMITER.join(header)!r}",
                    line=line,
                )
    columns: dict[str, int] = {}
    allowed = (*required, *optional)
    for position, name in enumerate(names):
        if name in columns:
            raise DataError(path, "duplicate column", line=line, field=name)
        if name not in allowed:
            raise DataError(
                path, f"unknown column {name!r} (allowed: {', '.join(allowed)})", line=line, field=name
            )
        columns[name] = position
    if missing:
        raise DataError(path, f"missing required column {missing[0]!r}", line=line, field=missing[0])
    return columns


def _read_table(path: Path, required: Sequence[str], optional: Sequence[str]) -> _Table:
    """Read a CSV file and check its shape: header, at least one row, same field count everywhere."""
    rows, lines = _read_records(path)
    if not rows:
        raise DataError(path, "file is empty (expected a header line and rows)")
    columns = _check_header(path, rows[0], lines[0], required, optional)
    table = _Table(path=path, columns=columns, rows=rows[1:], lines=lines[1:])
    if not table.rows:
        raise DataError(path, "no data rows (header only)", line=lines[0])
    width = len(columns)
    for row, record in enumerate(table.rows):
        if len(record) != width:
            raise table.error(row, None, f"expected {width} fields as in the header, got {len(record)}")
    return table


# ----------------------------------------------------------------------------------------- value checks


def _first_index(values: list[str], target: str) -> int | None:
    try:
        return values.index(target)
    except ValueError:
        return None


def _require_non_empty(table: _Table, field: str, values: list[str], what: str) -> None:
    row = _first_index(values, "")
    if row is not None:
        raise table.error(row, field, f"empty {what}")


def _first_duplicate(keys: Sequence[object]) -> tuple[int, int] | None:
    """(later row, earlier row) of the first repeated key, or None; the set test keeps the clean path fast."""
    if len(set(keys)) == len(keys):
        return None
    seen: dict[object, int] = {}
    for row, key in enumerate(keys):
        earlier = seen.setdefault(key, row)
        if earlier != row:
            return row, earlier
    return None


def _parse_timestamp(text: str) -> int:
    """An integer timestamp; integral floats such as '123.0' are accepted because spreadsheets write them."""
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"not a number: {text!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"not a finite number: {text!r}") from None
        if not number.is_integer():
            raise ValueError(f"not an integer: {text!r}") from None
        value = int(number)
    if value < 0:
        raise ValueError(f"negative: {text!r}")
    if value > INT64_MAX:
        raise ValueError(f"too large for int64: {text!r}")
    return value


def _parse_rating(text: str) -> float:
    """A finite, non-negative rating (implicit feedback ignores the value, but garbage signals a bad file)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    if value < 0:
        raise ValueError(f"negative: {text!r}")
    return value


def _timestamps(table: _Table, values: list[str]) -> np.ndarray:
    """Vectorised parse of plain integers; anything else goes through the exact per-value parser."""
    try:
        parsed = np.array(values).astype(np.int64)
    except (ValueError, OverflowError):
        parsed = None
    if parsed is not None and not (parsed < 0).any():
        return parsed
    result = np.empty(len(values), dtype=np.int64)
    for row, text in enumerate(values):
        try:
            result[row] = _parse_timestamp(text)
        except ValueError as exc:
            raise table.error(row, "timestamp", f"bad timestamp, {exc}") from None
    return result


def _ratings(table: _Table, values: list[str]) -> np.ndarray:
    """Vectorised float parse; on any bad value the per-value parser finds and names the first one."""
    try:
        parsed = np.array(values).astype(np.float64)
    except ValueError:
        parsed = None
    if parsed is not None and np.isfinite(parsed).all() and not (parsed < 0).any():
        return parsed.astype(np.float32)
    for row, text in enumerate(values):
        try:
            _parse_rating(text)
        except ValueError as exc:
            raise table.error(row, "rating", f"bad rating, {exc}") from None
    raise AssertionError("vectorised and per-value rating parsers disagree")  # pragma: no cover


def _parse_categories(text: str) -> tuple[str, ...]:
    parts = (part.strip() for part in text.split(CATEGORY_SEPARATOR))
    return tuple(dict.fromkeys(part for part in parts if part))


def ordered_ids(ids: Iterable[str]) -> tuple[str, ...]:
    """Distinct ids in canonical order: numeric ascending when all are integers, else lexicographic.

    Internal indices follow this order, so it must not depend on file row order.
    """
    unique = set(ids)
    if all(_INTEGER_ID.fullmatch(value) for value in unique):
        return tuple(sorted(unique, key=lambda value: (int(value), value)))
    return tuple(sorted(unique))


# ---------------------------------------------------------------------------------------- file loaders


@dataclass(frozen=True)
class InteractionsTable:
    """interactions.csv as validated raw rows (ids still strings) with the line each row starts on."""

    path: Path
    user_ids: list[str]
    item_ids: list[str]
    timestamps: np.ndarray
    ratings: np.ndarray | None
    lines: list[int]


@dataclass(frozen=True)
class ItemsTable:
    """items.csv as validated raw rows, in file order."""

    path: Path
    item_ids: list[str]
    titles: list[str]
    texts: list[str]
    categories: list[tuple[str, ...]]
    lines: list[int]


@dataclass(frozen=True)
class UsersTable:
    """users.csv as validated raw rows, in file order."""

    path: Path
    user_ids: list[str]
    stores: list[str]
    lines: list[int]


def load_interactions_csv(path: str | Path) -> InteractionsTable:
    """Read and validate interactions.csv on its own (ids, timestamps, ratings, duplicate pairs)."""
    table = _read_table(Path(path), INTERACTION_REQUIRED, INTERACTION_OPTIONAL)
    users = table.column("user_id")
    items = table.column("item_id")
    _require_non_empty(table, "user_id", users, "user_id")
    _require_non_empty(table, "item_id", items, "item_id")
    timestamps = _timestamps(table, table.column("timestamp"))
    ratings = _ratings(table, table.column("rating")) if table.has("rating") else None
    duplicate = _first_duplicate(list(zip(users, items, strict=True)))
    if duplicate is not None:
        later, earlier = duplicate
        same_row = [v.strip() for v in table.rows[later]] == [v.strip() for v in table.rows[earlier]]
        pair = f"({users[later]}, {items[later]})"
        what = "duplicate row" if same_row else f"duplicate (user_id, item_id) pair {pair}"
        raise table.error(later, "item_id", f"{what}; first seen on line {table.lines[earlier]}")
    return InteractionsTable(table.path, users, items, timestamps, ratings, table.lines)


def load_items_csv(path: str | Path) -> ItemsTable:
    """Read and validate items.csv (the catalog): unique non-empty ids, non-empty titles."""
    table = _read_table(Path(path), ITEM_REQUIRED, ITEM_OPTIONAL)
    ids = table.column("item_id")
    titles = table.column("title")
    _require_non_empty(table, "item_id", ids, "item_id")
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        later, earlier = duplicate
        raise table.error(later, "item_id", f"duplicate item_id {ids[later]!r}; first seen on line "
                                            f"{table.lines[earlier]}")
    _require_non_empty(table, "title", titles, "title")
    texts = table.column("text") if table.has("text") else [""] * len(ids)
    raw_categories = table.column("categories") if table.has("categories") else [""] * len(ids)
    categories = [_parse_categories(value) for value in raw_categories]
    return ItemsTable(table.path, ids, titles, texts, categories, table.lines)


def load_users_csv(path: str | Path) -> UsersTable:
    """Read and validate users.csv: unique non-empty user ids, each with a non-empty store."""
    table = _read_table(Path(path), USER_REQUIRED, USER_OPTIONAL)
    ids = table.column("user_id")
    stores = table.column("store")
    _require_non_empty(table, "user_id", ids, "user_id")
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        later, earlier = duplicate
        raise table.error(later, "user_id", f"duplicate user_id {ids[later]!r}; first seen on line "
                                            f"{table.lines[earlier]}")
    _require_non_empty(table, "store", stores, "store")
    return UsersTable(table.path, ids, stores, table.lines)


# --------------------------------------------------------------------------------------------- dataset


def _readonly(array: np.ndarray, dtype: type, name: str, length: int) -> np.ndarray:
    result: np.ndarray = np.array(array, dtype=dtype, copy=True)
    if result.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {result.shape}")
    result.setflags(write=False)
    return result


@dataclass(frozen=True, eq=False)
class Dataset:
    """A validated dataset; indices into ``user_ids``/``item_ids`` are the internal ids used everywhere.

    Arrays are read-only copies so that a Dataset shared by clients and the centralized baseline cannot drift.
    """

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray | None
    titles: tuple[str, ...]
    texts: tuple[str, ...]
    categories: tuple[tuple[str, ...], ...]
    user_stores: tuple[str, ...] | None
    source: str

    def __post_init__(self) -> None:
        n = len(self.users)
        object.__setattr__(self, "users", _readonly(self.users, np.int64, "users", n))
        object.__setattr__(self, "items", _readonly(self.items, np.int64, "items", n))
        object.__setattr__(self, "timestamps", _readonly(self.timestamps, np.int64, "timestamps", n))
        if self.ratings is not None:
            object.__setattr__(self, "ratings", _readonly(self.ratings, np.float32, "ratings", n))
        for name in ("titles", "texts", "categories"):
            if len(getattr(self, name)) != self.n_items:
                raise ValueError(f"{name} must have one entry per item ({self.n_items})")
        if self.user_stores is not None and len(self.user_stores) != self.n_users:
            raise ValueError(f"user_stores must have one entry per user ({self.n_users})")
        if n and (self.users.min() < 0 or self.users.max() >= self.n_users):
            raise ValueError("users holds an index outside user_ids")
        if n and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise ValueError("items holds an index outside item_ids")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.users)

    def item_text(self, i: int) -> str:
        """'Title. text. Categories: a, b' (empty parts skipped): one string a text encoder can embed."""
        parts = [self.titles[i], self.texts[i]]
        if self.categories[i]:
            parts.append("Categories: " + ", ".join(self.categories[i]))
        result = ""
        for part in (p.strip() for p in parts):
            if not part:
                continue
            if result:
                result += " " if result.endswith(SENTENCE_END) else ". "
            result += part
        return result


def _index_items(interactions: InteractionsTable, item_index: dict[str, int], items_path: Path) -> np.ndarray:
    indices = np.fromiter((item_index.get(i, -1) for i in interactions.item_ids), dtype=np.int64,
                          count=len(interactions.item_ids))
    unknown = np.flatnonzero(indices < 0)
    if unknown.size:
        row = int(unknown[0])
        raise DataError(interactions.path, f"item {interactions.item_ids[row]!r} is not in {items_path.name}",
                        line=interactions.lines[row], field="item_id")
    return indices


def _user_stores(users: UsersTable, user_ids: tuple[str, ...], interactions: InteractionsTable
                 ) -> tuple[str, ...]:
    """Store per interacting user; users.csv rows for users without interactions are ignored."""
    store_of = dict(zip(users.user_ids, users.stores, strict=True))
    missing = [user for user in user_ids if user not in store_of]
    if missing:
        row = interactions.user_ids.index(missing[0])
        raise DataError(users.path, f"no row for user {missing[0]!r}, who has interactions "
                                    f"({interactions.path.name} line {interactions.lines[row]})",
                        field="user_id")
    return tuple(store_of[user] for user in user_ids)


def load_dataset(directory: str | Path) -> Dataset:
    """Load interactions.csv, items.csv and optional users.csv from ``directory``, fully validated."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(root, "not a directory" if root.exists() else "directory not found")
    items = load_items_csv(root / ITEMS_FILE)
    interactions = load_interactions_csv(root / INTERACTIONS_FILE)
    users_path = root / USERS_FILE
    users = load_users_csv(users_path) if users_path.exists() else None

    item_ids = ordered_ids(items.item_ids)
    item_index = {item: i for i, item in enumerate(item_ids)}
    file_row = {item: row for row, item in enumerate(items.item_ids)}
    order = [file_row[item] for item in item_ids]
    item_codes = _index_items(interactions, item_index, items.path)

    user_ids = ordered_ids(interactions.user_ids)
    user_index = {user: u for u, user in enumerate(user_ids)}
    user_codes = np.fromiter((user_index[u] for u in interactions.user_ids), dtype=np.int64,
                             count=len(interactions.user_ids))
    stores = _user_stores(users, user_ids, interactions) if users is not None else None
    return Dataset(
        user_ids=user_ids,
        item_ids=item_ids,
        users=user_codes,
        items=item_codes,
        timestamps=interactions.timestamps,
        ratings=interactions.ratings,
        titles=tuple(items.titles[row] for row in order),
        texts=tuple(items.texts[row] for row in order),
        categories=tuple(items.categories[row] for row in order),
        user_stores=stores,
        source=str(root),
    )
