"""Input validation: every bad input gives one message naming file, line, column, value and expectation."""

import numpy as np
import pytest

from alliancemeta.core import inputs as io

GOOD = "study,r,n,year\nA,0.3,50,2001\nB,0.1,80,2005\nC,-0.2,30,1999\n"


def write(tmp_path, text, name="x.csv", raw=False):
    path = tmp_path / name
    if raw:
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def error(tmp_path, text, **kw):
    with pytest.raises(io.InputError) as info:
        io.read_studies(write(tmp_path, text), **kw)
    return str(info.value)


def test_good_file_gives_fisher_z(tmp_path):
    frame = io.read_studies(write(tmp_path, GOOD))
    np.testing.assert_allclose(frame["yi"], np.arctanh([0.3, 0.1, -0.2]))
    np.testing.assert_allclose(frame["vi"], 1 / (np.array([50, 80, 30]) - 3))
    assert list(frame.columns[:3]) == ["study", "yi", "vi"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("study,r,n\nA,0.3,50\nB,1.7,50\n", "x.csv line 3, column r: 1.7 is outside [-1, 1]"),
        ("study,r,n\nA,1,50\n", "line 2, column r: 1 is exactly ±1"),
        ("study,r,n\nA,-1.0,50\n", "line 2, column r: -1.0 is exactly ±1"),
        ("study,r,n\nA,0.3,3\n", "line 2, column n: 3 is below 4"),
        ("study,r,n\nA,0.3,-5\n", "line 2, column n: -5 is below 4"),
        ("study,r,n\nA,0.3,50.5\n", "line 2, column n: 50.5 is not a whole number"),
        ("study,r,n\nA,abc,50\n", "line 2, column r: 'abc' is not a number"),
        ("study,r,n\nA,,50\n", "line 2, column r: value is blank"),
        ("study,r,n\nA,NaN,50\n", "line 2, column r: value is blank"),
        ("study,r,n\nA,0.3,50\nA,0.2,40\n", "line 3, column study: 'A' repeats the label on line 2"),
        ("study,yi,vi\nA,0.3,0\n", "line 2, column vi: 0 is not > 0"),
        ("study,yi,vi\nA,0.3,-0.1\n", "line 2, column vi: -0.1 is not > 0"),
        ("studie,r,n\nA,0.3,50\n", "required column 'study' is missing (did you mean 'studie'?)"),
        ("study,rr,n\nA,0.3,50\n", "required column 'r' is missing (did you mean 'rr'?)"),
        ("study,r,n\n", "header but no data rows"),
        ("", "the file is empty"),
        ("study;r;n\nA;0,3;50\n", "line 1: the file looks semicolon-delimited"),
        ("study,r,n\nA,0,3,50\n", "line 2: 4 fields, but the header has 3; decimal commas"),
        ('study,r,n\nA,"0,3",50\n', "line 2, column r: '0,3' uses a decimal comma"),
        ("study,r,n\n,0.3,50\n", "line 2, column study: value is blank"),
    ],
)
def test_study_errors(tmp_path, text, expected):
    assert expected in error(tmp_path, text)


def test_line_numbers_count_blank_lines_and_multiline_fields(tmp_path):
    text = 'study,r,n\n\n"A\nlong label",0.3,50\nB,2,50\n'
    assert "line 5, column r: 2 is outside" in error(tmp_path, text)


def test_bom_and_crlf_are_accepted(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfstudy,r,n\r\nA,0.3,50\r\nB,0.2,40\r\n", raw=True)
    frame = io.read_studies(path)
    assert list(frame["study"]) == ["A", "B"]
    table = io.read_table(path)
    assert any("byte-order" in n for n in table.notes) and any("Windows" in n for n in table.notes)


def test_missing_file(tmp_path):
    with pytest.raises(io.InputError, match="does not exist"):
        io.read_studies(tmp_path / "nope.csv")


def test_moderator_typo(tmp_path):
    msg = error(tmp_path, "study,r,n,rater\nA,0.3,50,client\n", moderators=["ratr"])
    assert "moderator column 'ratr'" in msg and "did you mean 'rater'" in msg


def test_moderators_numeric_or_categorical_with_blanks(tmp_path):
    frame = io.read_studies(write(tmp_path, "study,r,n,age,rater\nA,0.3,50,30,client\nB,0.2,40,,\n"),
                            moderators=["age", "rater"])
    assert frame["age"].dtype == float and np.isnan(frame["age"][1])
    assert frame["rater"][0] == "client" and frame["rater"].isna()[1]


SESSIONS = "client,session,alliance,outcome,therapist\nc1,1,4.0,20,t1\nc1,2,4.2,18,t1\nc2,1,3.5,25,t1\n"


def test_sessions_good(tmp_path):
    data = io.read_sessions(write(tmp_path, SESSIONS))
    assert len(data.frame) == 3
    assert any("single session" in n for n in data.notes)


def test_sessions_blank_alliance_and_outcome_are_missing(tmp_path):
    """A blank (or NA) alliance or outcome cell is a missing measurement: the row stays, the value is NaN."""
    text = ("client,session,alliance,outcome\n"
            "c1,1,4.0,20\nc1,2,,18\nc1,3,4.4,NA\nc1,4,,\nc2,1,3.5,25\nc2,2,3.6,24\n")  # fmt: skip
    data = io.read_sessions(write(tmp_path, text))
    frame = data.frame
    assert len(frame) == 6
    assert frame["alliance"].isna().tolist() == [False, True, False, True, False, False]
    assert frame["outcome"].isna().tolist() == [False, False, True, True, False, False]
    assert any("2 blank alliance cell(s) (first on line 3)" in n for n in data.notes)
    assert any("2 blank outcome cell(s) (first on line 4)" in n for n in data.notes)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("client,session,alliance,outcome\nc1,0,4,20\n", "line 2, column session: 0 is below 1"),
        ("client,session,alliance,outcome\nc1,1,4,20\nc1,1,4,21\n", "line 3, column session: client 'c1' session 1 "
         "repeats line 2"),
        ("client,session,alliance\nc1,1,4\n", "required column 'outcome' is missing"),
        ("client,session,alliance,outcome\nc1,1,x,20\n", "line 2, column alliance: 'x' is not a number"),
        ("client,session,alliance,outcome\nc1,1,4,20\nc1,2,,19\nc1,3,4,abc\n",
         "line 4, column outcome: 'abc' is not a number"),
        ("client,session,alliance,outcome\nc1,1,4,20\nc1,2,\"4,5\",19\n",
         "line 3, column alliance: '4,5' uses a decimal comma"),
        ("client,session,alliance,outcome\nc1,1,inf,20\n", "line 2, column alliance: 'inf' is not a number"),
        ("client,session,alliance,outcome,case\nc1,1,4,20,k1\nc1,2,4,20,k2\n",
         "line 3, column case: client 'c1' appears under case 'k2' and 'k1'"),
        ("client,session,alliance,outcome,therapist\nc1,1,4,20,t1\nc1,2,4,20,t2\n",
         "line 3, column therapist: client 'c1' appears under therapist 't2' and 't1'"),
    ],
)
def test_session_errors(tmp_path, text, expected):
    with pytest.raises(io.InputError) as info:
        io.read_sessions(write(tmp_path, text))
    assert expected in str(info.value)
