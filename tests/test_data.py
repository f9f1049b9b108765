"""Specification of shared/data.py: what a valid bring-your-own dataset is, and how bad input is reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data import DataError, Dataset, load_dataset, ordered_ids

ITEMS = (
    "item_id,title,text,categories\n"
    "1,Toy Story (1995),A toy comes alive.,Animation|Comedy\n"
    "2,Heat (1995),,Action\n"
    "10,Up (2009),,\n"
)
INTERACTIONS = (
    "user_id,item_id,timestamp,rating\n"
    "1,1,100,5\n"
    "1,2,200,3\n"
    "2,10,150,4\n"
    "10,1,120,1\n"
)
USERS = "user_id,store\n1,north\n2,south\n10,north\n"


def make_dir(tmp_path: Path, interactions: str | None = INTERACTIONS, items: str | None = ITEMS,
             users: str | None = None) -> Path:
    """Write the given file contents (None: leave the file out) and return the directory."""
    for name, text in (("interactions.csv", interactions), ("items.csv", items), ("users.csv", users)):
        if text is not None:
            (tmp_path / name).write_bytes(text.encode("utf-8"))
    return tmp_path


def load_error(directory: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(directory)
    return info.value


def assert_located(error: DataError, file: str, line: int | None, field: str | None, fragment: str) -> None:
    """The message names the file, the line and the field, and says what is wrong."""
    assert Path(error.path).name == file
    assert error.line == line
    assert error.field == field
    location = f"{file}:{line}" if line is not None else file
    assert location in str(error)
    if field is not None:
        assert f": {field}: " in str(error)
    assert fragment in str(error)


# ------------------------------------------------------------------------------------------ valid data


def test_loads_counts_and_raw_ids(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 3, 4)
    assert ds.user_ids == ("1", "2", "10")
    assert ds.item_ids == ("1", "2", "10")


def test_integer_ids_are_ordered_numerically_not_lexicographically(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path))
    assert ds.user_ids.index("10") == 2
    assert ds.item_ids.index("10") == 2


def test_non_integer_ids_are_ordered_lexicographically() -> None:
    assert ordered_ids(["b", "10", "a", "9"]) == ("10", "9", "a", "b")
    assert ordered_ids(["10", "9", "-1"]) == ("-1", "9", "10")


def test_interactions_are_mapped_to_internal_indices_in_file_order(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path))
    np.testing.assert_array_equal(ds.users, [0, 0, 1, 2])
    np.testing.assert_array_equal(ds.items, [0, 1, 2, 0])
    np.testing.assert_array_equal(ds.timestamps, [100, 200, 150, 120])
    assert ds.ratings is not None
    np.testing.assert_array_equal(ds.ratings, np.array([5, 3, 4, 1], dtype=np.float32))


def test_array_dtypes(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path))
    assert ds.users.dtype == ds.items.dtype == ds.timestamps.dtype == np.int64
    assert ds.ratings is not None and ds.ratings.dtype == np.float32


def test_arrays_are_read_only(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path))
    with pytest.raises(ValueError):
        ds.users[0] = 1


def test_ratings_are_none_without_a_rating_column(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, interactions="user_id,item_id,timestamp\n1,1,5\n"))
    assert ds.ratings is None


def test_columns_may_come_in_any_order(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, interactions="timestamp,item_id,user_id\n7,2,1\n"))
    assert ds.item_ids[int(ds.items[0])] == "2"
    assert int(ds.timestamps[0]) == 7


def test_items_without_interactions_stay_in_the_catalog(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, interactions="user_id,item_id,timestamp\n1,1,5\n"))
    assert ds.n_items == 3


def test_item_metadata_follows_the_item_order(tmp_path: Path) -> None:
    items = "item_id,title,categories\n10,Up (2009),Animation\n2,Heat (1995),Action| Crime |\n"
    ds = load_dataset(make_dir(tmp_path, interactions="user_id,item_id,timestamp\n1,2,1\n", items=items))
    assert ds.item_ids == ("2", "10")
    assert ds.titles == ("Heat (1995)", "Up (2009)")
    assert ds.categories == (("Action", "Crime"), ("Animation",))
    assert ds.texts == ("", "")


def test_item_text_joins_title_text_and_categories(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path))
    assert ds.item_text(0) == "Toy Story (1995). A toy comes alive. Categories: Animation, Comedy"
    assert ds.item_text(1) == "Heat (1995). Categories: Action"
    assert ds.item_text(2) == "Up (2009)"


def test_user_stores_follow_the_user_order(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, users="user_id,store\n10,east\n2,south\n1,north\n"))
    assert ds.user_stores == ("north", "south", "east")


def test_user_stores_are_none_without_users_csv(tmp_path: Path) -> None:
    assert load_dataset(make_dir(tmp_path)).user_stores is None


def test_users_csv_rows_without_interactions_are_ignored(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, users=USERS + "99,west\n"))
    assert ds.n_users == 3
    assert "99" not in ds.user_ids


def test_source_is_the_directory(tmp_path: Path) -> None:
    assert load_dataset(make_dir(tmp_path)).source == str(tmp_path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    directory = make_dir(tmp_path)
    (directory / "interactions.csv").write_bytes(b"\xef\xbb\xbf" + INTERACTIONS.encode("utf-8"))
    assert load_dataset(directory).n_interactions == 4


def test_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, interactions=INTERACTIONS.replace("\n", "\r\n"),
                               items=ITEMS.replace("\n", "\r\n")))
    assert ds.n_interactions == 4
    assert ds.titles[0] == "Toy Story (1995)"


def test_quoted_newline_in_a_title_is_kept(tmp_path: Path) -> None:
    items = 'item_id,title\n1,"Two\nLines"\n2,Heat\n10,Up\n'
    assert load_dataset(make_dir(tmp_path, items=items)).titles[0] == "Two\nLines"


def test_quoted_comma_in_a_title_is_kept(tmp_path: Path) -> None:
    items = 'item_id,title\n1,"Usual Suspects, The (1995)"\n2,Heat\n10,Up\n'
    assert load_dataset(make_dir(tmp_path, items=items)).titles[0] == "Usual Suspects, The (1995)"


def test_fields_are_whitespace_stripped(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, interactions="user_id, item_id, timestamp\n 1 , 10 , 5\n"))
    assert ds.user_ids == ("1",)
    assert ds.item_ids[int(ds.items[0])] == "10"


def test_integral_float_timestamps_are_accepted(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, interactions="user_id,item_id,timestamp\n1,1,123.0\n1,2,1e3\n"))
    np.testing.assert_array_equal(ds.timestamps, [123, 1000])


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, interactions="user_id,item_id,timestamp\n1,1,5\n\n1,2,6\n\n"))
    assert ds.n_interactions == 2


def test_dataset_rejects_inconsistent_arrays() -> None:
    with pytest.raises(ValueError, match="items"):
        Dataset(user_ids=("a",), item_ids=("x",), users=np.array([0]), items=np.array([0, 0]),
                timestamps=np.array([1]), ratings=None, titles=("X",), texts=("",), categories=((),),
                user_stores=None, source="memory")


# --------------------------------------------------------------------------------------- error format


def test_data_error_str_is_path_line_field_message() -> None:
    assert str(DataError("d/x.csv", "bad", line=3, field="timestamp")) == "d/x.csv:3: timestamp: bad"
    assert str(DataError("d/x.csv", "bad", line=3)) == "d/x.csv:3: bad"
    assert str(DataError("d/x.csv", "bad", field="user_id")) == "d/x.csv: user_id: bad"
    assert str(DataError("d/x.csv", "bad")) == "d/x.csv: bad"


def test_data_error_keeps_its_parts() -> None:
    error = DataError(Path("x.csv"), "bad", line=2, field="f")
    assert (error.path, error.message, error.line, error.field) == ("x.csv", "bad", 2, "f")
    assert isinstance(error, ValueError)


# ------------------------------------------------------------------------------------- whole-file errors


def test_missing_directory(tmp_path: Path) -> None:
    assert "directory not found" in str(load_error(tmp_path / "nope"))


@pytest.mark.parametrize("missing", ["interactions.csv", "items.csv"])
def test_missing_file(tmp_path: Path, missing: str) -> None:
    directory = make_dir(tmp_path)
    (directory / missing).unlink()
    assert_located(load_error(directory), missing, None, None, "file not found")


def test_empty_file(tmp_path: Path) -> None:
    assert_located(load_error(make_dir(tmp_path, interactions="")), "interactions.csv", None, None, "empty")


def test_header_only(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, interactions="user_id,item_id,timestamp\n"))
    assert_located(error, "interactions.csv", 1, None, "no data rows")


def test_missing_required_column(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, interactions="user_id,item_id\n1,1\n"))
    assert_located(error, "interactions.csv", 1, "timestamp", "missing required column")


def test_missing_title_column(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, items="item_id,text\n1,x\n"))
    assert_located(error, "items.csv", 1, "title", "missing required column")


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_wrong_delimiter(tmp_path: Path, delimiter: str) -> None:
    text = delimiter.join(["user_id", "item_id", "timestamp"]) + "\n" + delimiter.join("115") + "\n"
    error = load_error(make_dir(tmp_path, interactions=text))
    assert_located(error, "interactions.csv", 1, None, "wrong delimiter? expected ','")


def test_unknown_column_is_named(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, interactions="user_id,item_id,timestamp,score\n1,1,5,1\n"))
    assert_located(error, "interactions.csv", 1, "score", "unknown column 'score'")


def test_duplicate_column(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, interactions="user_id,item_id,timestamp,item_id\n1,1,5,1\n"))
    assert_located(error, "interactions.csv", 1, "item_id", "duplicate column")


def test_invalid_utf8(tmp_path: Path) -> None:
    directory = make_dir(tmp_path)
    (directory / "items.csv").write_bytes(b"item_id,title\n1,Caf\xe9\n")
    assert_located(load_error(directory), "items.csv", 2, None, "not valid UTF-8")


# -------------------------------------------------------------------------------------------- row errors


@pytest.mark.parametrize("row", ["1,1", "1,1,5,1,9"])
def test_wrong_number_of_fields(tmp_path: Path, row: str) -> None:
    error = load_error(make_dir(tmp_path, interactions=INTERACTIONS + row + "\n"))
    assert_located(error, "interactions.csv", 6, None, "expected 4 fields")


def test_line_numbers_count_physical_lines_after_a_quoted_newline(tmp_path: Path) -> None:
    items = 'item_id,title\n1,"Two\nLines"\n2,Heat\n,Up\n'
    assert_located(load_error(make_dir(tmp_path, items=items)), "items.csv", 5, "item_id", "empty item_id")


def test_line_number_is_where_a_multiline_record_starts(tmp_path: Path) -> None:
    items = 'item_id,title,text\n1,Toy,ok\n2,Heat,"a\nb"\n2,Dup,x\n'
    error = load_error(make_dir(tmp_path, items=items))
    assert_located(error, "items.csv", 5, "item_id", "first seen on line 3")


@pytest.mark.parametrize(("row", "field"), [(",1,5", "user_id"), ("1,,5", "item_id"), ("  ,1,5", "user_id")])
def test_empty_id(tmp_path: Path, row: str, field: str) -> None:
    error = load_error(make_dir(tmp_path, interactions="user_id,item_id,timestamp\n1,1,5\n" + row + "\n"))
    assert_located(error, "interactions.csv", 3, field, f"empty {field}")


@pytest.mark.parametrize("value", ["abc", "", "-5", "nan", "inf", "12.5", "99999999999999999999"])
def test_bad_timestamp(tmp_path: Path, value: str) -> None:
    error = load_error(make_dir(tmp_path, interactions=f"user_id,item_id,timestamp\n1,1,5\n1,2,{value}\n"))
    assert_located(error, "interactions.csv", 3, "timestamp", "bad timestamp")


@pytest.mark.parametrize("value", ["abc", "", "nan", "-1", "inf"])
def test_bad_rating(tmp_path: Path, value: str) -> None:
    text = f"user_id,item_id,timestamp,rating\n1,1,5,4\n1,2,6,{value}\n"
    error = load_error(make_dir(tmp_path, interactions=text))
    assert_located(error, "interactions.csv", 3, "rating", "bad rating")


def test_duplicate_row_names_the_earlier_line(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, interactions=INTERACTIONS + "1,2,200,3\n"))
    assert_located(error, "interactions.csv", 6, "item_id", "duplicate row; first seen on line 3")


def test_duplicate_user_item_pair_names_the_earlier_line(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, interactions=INTERACTIONS + "1,2,999,5\n"))
    assert_located(error, "interactions.csv", 6, "item_id", "duplicate (user_id, item_id) pair (1, 2)")
    assert "first seen on line 3" in str(error)


def test_interaction_with_an_item_missing_from_items_csv(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, interactions=INTERACTIONS + "2,77,5,1\n"))
    assert_located(error, "interactions.csv", 6, "item_id", "item '77' is not in items.csv")


def test_duplicate_item_id(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, items=ITEMS + "2,Heat again,,\n"))
    assert_located(error, "items.csv", 5, "item_id", "duplicate item_id '2'; first seen on line 3")


def test_empty_title(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, items=ITEMS + "11, ,,\n"))
    assert_located(error, "items.csv", 5, "title", "empty title")


def test_users_csv_duplicate_user(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, users=USERS + "2,west\n"))
    assert_located(error, "users.csv", 5, "user_id", "duplicate user_id '2'; first seen on line 3")


def test_users_csv_empty_store(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, users="user_id,store\n1,north\n2,\n10,x\n"))
    assert_located(error, "users.csv", 3, "store", "empty store")


def test_users_csv_missing_an_interacting_user(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, users="user_id,store\n1,north\n10,north\n"))
    assert_located(error, "users.csv", None, "user_id", "no row for user '2'")
    assert "interactions.csv line 4" in str(error)


def test_users_csv_wrong_delimiter(tmp_path: Path) -> None:
    error = load_error(make_dir(tmp_path, users="user_id;store\n1;north\n"))
    assert_located(error, "users.csv", 1, None, "wrong delimiter")


# ------------------------------------------------------------------------------------------ performance


def test_100k_rows_load_in_well_under_two_seconds(tmp_path: Path) -> None:
    import time

    rng = np.random.default_rng(0)
    n_users, n_items = 1000, 1700
    items = "item_id,title,categories\n" + "".join(f"{i},Movie {i},Drama|Comedy\n" for i in range(n_items))
    pairs = rng.choice(n_users * n_items, size=100_000, replace=False)
    rows = "".join(f"{p // n_items},{p % n_items},{880000000 + p % 9999},{1 + p % 5}\n"
                   for p in pairs.tolist())
    directory = make_dir(tmp_path, interactions="user_id,item_id,timestamp,rating\n" + rows, items=items)
    start = time.perf_counter()
    ds = load_dataset(directory)
    elapsed = time.perf_counter() - start
    assert ds.n_interactions == 100_000
    assert elapsed < 2.0
