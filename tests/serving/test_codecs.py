"""Codecs: table-driven decode/encode cases and hypothesis round trips."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serving import codecs, contract
from serving.errors import BadRequestError, NotAcceptableError, UnsupportedMediaTypeError


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"1,2,3\n4,5,6\n", contract.CSV, [[1, 2, 3], [4, 5, 6]]),
        (b"1,2,3", contract.CSV, [[1, 2, 3]]),
        (b"1,2,3\r\n4,5,6\r\n", contract.CSV, [[1, 2, 3], [4, 5, 6]]),
        (b"1,,3\n4,5,6", contract.CSV, [[1, np.nan, 3], [4, 5, 6]]),
        (b"1,2\n\n3,4\n", contract.CSV, [[1, 2], [3, 4]]),
        (b"-1.5e3, 2.25\n", contract.CSV, [[-1500, 2.25]]),
        (b'{"instances": [[1, 2], [3, 4]]}', contract.JSON, [[1, 2], [3, 4]]),
        (b"[[1, 2], [3, 4]]", contract.JSON, [[1, 2], [3, 4]]),
        (b"[1, 2]", contract.JSON, [1, 2]),
        (b'{"instances": [{"features": [1, 2]}, {"features": [3, 4]}]}', contract.JSON, [[1, 2], [3, 4]]),
        (b'{"features": [1, 2]}', contract.JSON, [[1, 2]]),
        (b'{"inputs": [[1, 2]]}', contract.JSON, [[1, 2]]),
        (b"[1, 2]\n[3, 4]\n", contract.JSONLINES, [[1, 2], [3, 4]]),
        (b'{"features": [1, 2]}\n{"features": [3, 4]}', contract.JSONLINES, [[1, 2], [3, 4]]),
        (_npy(np.array([[1, 2], [3, 4]], dtype=np.float32)), contract.NPY, [[1, 2], [3, 4]]),
    ],
)
def test_decode_table(body: bytes, content_type: str, expected: list) -> None:
    got = codecs.decode(body, content_type)
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))


def test_decode_named_inputs() -> None:
    got = codecs.decode(b'{"inputs": {"a": [[1, 2]], "b": [[3]]}}', contract.JSON)
    assert isinstance(got, dict)
    assert set(got) == {"a", "b"}
    np.testing.assert_array_equal(got["b"], [[3]])


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", contract.CSV, "empty CSV"),
        (b"1,2\n3", contract.CSV, "row 2 has 1 fields, expected 2"),
        # ragged rows whose field total still divides by the first row's: not silently re-aligned
        (b"1,2\n3,4,5\n6", contract.CSV, "row 2 has 3 fields, expected 2"),
        (b"1,2,3\n4\n5,6", contract.CSV, "row 2 has 1 fields, expected 3"),
        (b"1,abc\n", contract.CSV, "column 2: 'abc' is not a number"),
        (b"{not json", contract.JSON, "malformed JSON"),
        (b'{"rows": [[1]]}', contract.JSON, "JSON body must be"),
        (b"[[1, 2], [3]]", contract.JSON, "not a rectangular array"),
        (b'["a", "b"]', contract.JSON, "not a rectangular array"),
        (b"3", contract.JSON, "JSON body must be"),
        (b'{"instances": 3}', contract.JSON, "must be an array"),
        (b'{"inputs": {}}', contract.JSON, "'inputs' is empty"),
        (b'[1]\n{"x": 1}\n', contract.JSONLINES, "line 2: object without"),
        (b"[1]\n[oops\n", contract.JSONLINES, "line 2"),
        (b"\n\n", contract.JSONLINES, "empty JSON Lines"),
        (b"not npy at all", contract.NPY, "malformed NPY body: not a .npy file"),
        (b"", contract.NPY, "empty NPY"),
    ],
)
def test_decode_rejects_malformed(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(BadRequestError, match=message.replace("[", r"\[").replace("(", r"\(")):
        codecs.decode(body, content_type)


def test_decode_refuses_pickled_npy() -> None:
    body = _npy(np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadRequestError, match="malformed NPY"):
        codecs.decode(body, contract.NPY)


def test_decode_unknown_content_type() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="image/png"):
        codecs.decode(b"x", "image/png")


@pytest.mark.parametrize(
    ("accept", "default", "expected"),
    [
        (None, contract.JSON, contract.JSON),
        ("*/*", contract.CSV, contract.CSV),
        ("text/csv", contract.JSON, contract.CSV),
        ("text/csv; charset=utf-8", contract.JSON, contract.CSV),
        ("application/x-npy, application/json;q=0.5", contract.JSON, contract.NPY),
        ("application/json;q=0.2, text/csv;q=0.9", contract.JSON, contract.CSV),
        ("image/png, application/jsonlines", contract.JSON, contract.JSONLINES),
        ("application/x-jsonlines", contract.JSON, contract.JSONLINES),
        ("text/*", contract.JSON, contract.CSV),
        ("application/*", contract.CSV, contract.JSON),
        ("image/png, */*;q=0.1", contract.CSV, contract.CSV),
    ],
)
def test_choose_accept(accept: str | None, default: str, expected: str) -> None:
    assert codecs.choose_accept(accept, default) == expected


@pytest.mark.parametrize("accept", ["image/png", "text/html", "application/json;q=0"])
def test_choose_accept_unsatisfiable(accept: str) -> None:
    with pytest.raises(NotAcceptableError, match="cannot answer Accept"):
        codecs.choose_accept(accept, contract.JSON)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (np.array([1.5, 2.0], dtype=np.float32), b"1.5\n2.0\n"),
        (np.array([[1, 2], [3, 4]], dtype=np.int64), b"1,2\n3,4\n"),
        (np.array([], dtype=np.float32), b""),
        ([[0, 0.25, 0.75], ["a,b", 1, 2]], b'0,0.25,0.75\n"a,b",1,2\n'),
        ([1, 2], b"1\n2\n"),
    ],
)
def test_encode_csv_table(data: object, expected: bytes) -> None:
    assert codecs.encode_csv(data) == expected


def test_encode_json_and_jsonlines() -> None:
    assert orjson.loads(codecs.encode_json({"p": np.array([1, 2])})) == {"p": [1, 2]}
    assert codecs.encode_jsonlines([{"a": 1}, [2, 3]]) == b'{"a":1}\n[2,3]\n'
    assert codecs.encode_jsonlines([]) == b""


_floats = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=20),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(_floats)
def test_csv_round_trip(array: np.ndarray) -> None:
    np.testing.assert_array_equal(codecs.decode(codecs.encode_csv(array), contract.CSV), array)


@settings(max_examples=60, deadline=None)
@given(_floats)
def test_json_round_trip(array: np.ndarray) -> None:
    body = codecs.encode_json({"instances": array})
    np.testing.assert_array_equal(codecs.decode(body, contract.JSON), array)


@settings(max_examples=60, deadline=None)
@given(_floats)
def test_jsonlines_round_trip(array: np.ndarray) -> None:
    body = codecs.encode_jsonlines(list(array))
    np.testing.assert_array_equal(codecs.decode(body, contract.JSONLINES), array)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(max_dims=3, max_side=6)))
def test_npy_round_trip(array: np.ndarray) -> None:
    got = codecs.decode(codecs.encode_npy(array), contract.NPY)
    assert got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from(["<f4", "<f8", ">f8", "<f2", "<i8", ">i4", "|i1", "|u1", "<u2", "|b1"]),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_npy_fast_paths_match_numpy_save_and_load(array: np.ndarray) -> None:
    """The header written and read without numpy's dict repr/literal_eval is numpy.save's, byte for byte."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    assert codecs.encode_npy(array) == buffer.getvalue()
    got = codecs.decode_npy(buffer.getvalue())
    assert got.dtype == array.dtype and got.shape == array.shape and got.flags.writeable
    np.testing.assert_array_equal(got, array)


def test_npy_decoder_falls_back_to_numpy_for_what_it_does_not_read_itself() -> None:
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    for array in (fortran, np.array(["a", "bc"]), np.zeros(3, dtype=np.complex64)):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        np.testing.assert_array_equal(codecs.decode_npy(buffer.getvalue()), array)
    body = codecs.encode_npy(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(BadRequestError, match="malformed NPY body"):
        codecs.decode_npy(body[:-1])  # truncated data: numpy's own error, as before
    np.testing.assert_array_equal(
        codecs.decode_npy(body + b"\0" * 4), np.zeros((2, 2))
    )  # numpy ignores a tail


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_csv_decoder_never_crashes(body: bytes) -> None:
    try:
        out = codecs.decode(body, contract.CSV)
    except BadRequestError:
        return
    assert out.ndim == 2


_csv_number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda v: f"{v:.7g}"),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "-0", "-0.0", "-0.25", "1e5", "2E-3", "-0e1", "1.", ".5", "+1", "00", " 7", "8 "]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda width: st.lists(st.lists(_csv_number, min_size=width, max_size=width), min_size=2, max_size=6)
    ),
    st.sampled_from([np.float32, np.float64]),
)
def test_csv_tables_read_like_numpy_parses_each_field(rows: list[list[str]], dtype: type) -> None:
    """Multi-row tables of plain numbers are read as JSON rows (faster); every value must be the one
    numpy parses from the field's bytes, bit for bit (``-0`` stays negative zero)."""
    body = "\n".join(",".join(row) for row in rows).encode()
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf on either path
        expected = np.array([[field.encode() for field in row] for row in rows], dtype=dtype)
        got = codecs.decode_csv(body, dtype)
    assert got.dtype == dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda width: st.lists(st.lists(_csv_number, min_size=width, max_size=width), min_size=2, max_size=6)
    ),
    st.sampled_from([np.float32, np.float64]),
)
def test_csv_records_read_like_numpy_parses_each_field(rows: list[list[str]], dtype: type) -> None:
    """One-record bodies read together as one table: one row per record, every value the one numpy
    parses from the field's bytes, bit for bit."""
    records = [",".join(row).strip().encode() for row in rows]
    with np.errstate(over="ignore"):
        expected = np.array([[field.encode() for field in row] for row in rows], dtype=dtype)
        got = codecs.decode_csv_records(records, dtype)
    assert got is not None and got.dtype == dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    "records,expected",
    [
        ([b"1,2", b"3,4"], [[1, 2], [3, 4]]),
        ([b"-0,1", b"2,-0.5"], [[-0.0, 1], [2, -0.5]]),  # integer -0 stays negative zero
        ([b"1,,3", b"4,5,6"], [[1, np.nan, 3], [4, 5, 6]]),  # an empty field is NaN, as in decode_csv
        ([b"+1,.5", b"1.,2"], [[1, 0.5], [1, 2]]),  # numbers JSON does not know
    ],
)
def test_csv_records_table(records: list[bytes], expected: list[list[float]]) -> None:
    got = codecs.decode_csv_records(records)
    assert got is not None
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))
    assert np.signbit(got).tolist() == np.signbit(np.array(expected, dtype=np.float32)).tolist()


@pytest.mark.parametrize(
    "records",
    [
        [b"1,2", b""],  # an empty record is no row
        [b"1,2\n3,4", b"5,6"],  # two rows in one record
        [b"1,2\r3,4", b"5,6"],
        [b"1,2", b"3,4\n"],  # not stripped
    ],
)
def test_csv_records_that_are_not_one_row_each_are_refused(records: list[bytes]) -> None:
    assert codecs.decode_csv_records(records) is None


@pytest.mark.parametrize(
    "records,message",
    [
        ([b"1,2", b"3,x"], "row 2, column 2: 'x' is not a number"),
        ([b"1,2", b"3,4,5"], "row 2 has 3 fields, expected 2"),
    ],
)
def test_bad_csv_records_get_decode_csv_errors(records: list[bytes], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        codecs.decode_csv_records(records)
