"""The trace format round-trips, and bad files fail with their line number."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmigdb import trace
from vmigdb.errors import TraceFormatError


def _sample() -> list[trace.Event]:
    return [
        trace.RomInit(0, base=0xC00C0000, batched=True),
        trace.RomCall(1, call="SetPxE", entry=0xC00C0400, site=0x101234,
                      args={"pte": 0x1003, "ptep": 0xC0400000, "flags": 0x31}),
        trace.RomReturn(2, call_seq=1, call="SetPxE"),
        trace.BatchFlush(3, batch=1, count=1, trigger="SetLazyMode", tlb_action="INVLPG",
                         entries=[[0xC0400000, 0x31, 0x1003, 0]]),
        trace.PteWrite(4, ptep=0xC0400000, old=0, new=0x1003, flags=0x31, deferred=True, batch=1),
    ]


def _text(events: list[trace.Event]) -> str:
    buf = io.StringIO()
    trace.write_trace(buf, events, guest="guest.elf")
    return buf.getvalue()


def test_round_trip() -> None:
    events = _sample()
    t = trace.read_trace(io.StringIO(_text(events)))
    assert t.events == events
    assert t.meta["guest"] == "guest.elf" and t.meta["version"] == trace.FORMAT_VERSION
    assert not t.truncated


def test_cut_last_line_is_a_truncated_prefix() -> None:
    text = _text(_sample())
    t = trace.read_trace(io.StringIO(text[:-7]))
    assert t.truncated
    assert t.events == _sample()[:-1]


@pytest.mark.parametrize(
    ("mangle", "line"),
    [
        (lambda s: "", 1),
        (lambda s: "hello\n" + s, 1),
        (lambda s: s.replace('"version": 1', '"version": 99'), 1),
        (lambda s: s.replace('"type":"call"', '"type":"bogus"'), 3),
        (lambda s: s.replace('"call":"SetPxE",', "", 1).replace('"site"', '"x"', 1)
            .replace('"type":"call"', '"type":"call","seq2":1').replace('"seq":1,', ""), 3),
        (lambda s: s.replace('{"seq":2', '{"seq":2,,', 1), 4),
    ],
)
def test_corrupt_files_name_the_line(mangle, line: int) -> None:
    with pytest.raises(TraceFormatError) as e:
        trace.read_trace(io.StringIO(mangle(_text(_sample()))))
    assert e.value.line == line
    assert f"line {line}:" in str(e.value)


@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(junk: str) -> None:
    try:
        trace.read_trace(io.StringIO(_text(_sample()) + junk))
    except TraceFormatError as e:
        assert e.line is not None


@pytest.mark.parametrize("line", [
    '{"seq":' + "9" * 5000 + ',"type":"lazy","old":0,"new":1}',  # past int's 4,300 digits
    '{"seq":3,"type":"lazy","old":' + "[" * 100_000 + "]" * 100_000 + "}",  # past recursion
])
def test_numbers_and_nesting_json_cannot_hold_are_bad_lines(line: str) -> None:
    with pytest.raises(TraceFormatError) as e:
        trace.read_trace(io.StringIO(_text(_sample()) + line + "\n"))
    assert e.value.line == 7 and "not a JSON object" in str(e.value)
