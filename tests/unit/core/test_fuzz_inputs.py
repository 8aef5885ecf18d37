"""Fuzz the ingest step: random malformed CSV files give an InputError (a message), never a crash."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alliancemeta.core import inputs as io

HEADERS = ["study", "r", "n", "yi", "vi", "study_id", "year", "client", "session", "alliance", "outcome",
           "therapist", "rater", "stduy", ""]
CELLS = st.one_of(
    st.sampled_from(["", "0.3", "-0.2", "1", "-1", "1.7", "50", "3", "4.5", "-7", "NaN", "inf", "abc", "0,3",
                     '"x"', "1e400", "２", "\u00a0", " 12 ", "TRUE"]),
    st.text(alphabet=string.printable, max_size=6),
)


@st.composite
def csv_text(draw):
    header = draw(st.lists(st.sampled_from(HEADERS), min_size=0, max_size=6))
    n_rows = draw(st.integers(0, 5))
    sep = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    rows = [sep.join(header)]
    for _ in range(n_rows):
        width = len(header) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        rows.append(sep.join(draw(CELLS) for _ in range(max(width, 0))))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = newline.join(rows) + draw(st.sampled_from(["", newline]))
    prefix = draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe"]))
    return prefix + text.encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(csv_text(), st.sampled_from(["studies", "sessions"]))
def test_ingest_never_crashes(tmp_path, content, kind):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(content)
    try:
        if kind == "studies":
            frame = io.read_studies(path)
            assert {"study", "yi", "vi"} <= set(frame.columns)
            assert (frame["vi"] > 0).all()
        else:
            data = io.read_sessions(path)
            assert (data.frame["session"] >= 1).all()
    except io.InputError as err:
        message = str(err)
        assert message.startswith("fuzz.csv") or "fuzz.csv" in message
        assert "\n" not in message
