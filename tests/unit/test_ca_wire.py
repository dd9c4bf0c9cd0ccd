"""The CA wire layer (ioc/protocols/ca/wire.py), read back by an independent implementation: caproto's
client-side message and DBR decoding. Every DBR type a client can request, from every element type the
IOC serves (DOUBLE, FLOAT and LONG values and arrays, ENUM, STRING)."""

from __future__ import annotations

import ctypes
import math

import caproto as ca
import numpy as np
import pytest
from caproto._commands import read_from_bytestream  # noqa: PLC2701 - caproto's reader of a server's stream
from caproto._dbr import DBR_TYPES  # noqa: PLC2701 - the ctypes layouts, as reference
from hypothesis import given
from hypothesis import strategies as st

from ioc.protocols.ca import wire

META = wire.Meta(units="mm", precision=3, limits=(10.0, -10.0, 9.0, 8.0, -8.0, -9.0, 5.0, -5.0),
                 enum_strings=("Off", "On", "Tripped"), record_type="ai")
TS = 1_700_000_000.25


def as_client_sees(dbr_type: int, count: int, payload: bytes, subid: int = 7):
    """The EVENT_ADD message carrying ``payload``, decoded by caproto as a client does."""
    message = wire.header(wire.EVENT_ADD, len(payload), dbr_type, count, wire.ECA_NORMAL, subid) + payload
    rest, command, _ = read_from_bytestream(bytearray(message), ca.SERVER)
    assert not rest and command.subscriptionid == subid and command.data_count == count
    return command


def test_metadata_layouts_match_db_access():
    for dbr_type in range(35):
        fam, el = divmod(dbr_type, 7)
        if fam == wire.PLAIN:
            continue
        layout = wire.META_STRUCTS[fam, el]
        # caproto maps DBR_CTRL_STRING to the TIME layout; EPICS' db_access.h: dbr_ctrl_string == dbr_sts_string.
        reference = DBR_TYPES[wire.STS * 7] if dbr_type == 28 else DBR_TYPES[dbr_type]
        assert layout.size == ctypes.sizeof(reference), DBR_TYPES[dbr_type].__name__


def test_status_codes_are_the_ones_clients_decode():
    for name in ("ECA_NORMAL", "ECA_BADTYPE", "ECA_PUTFAIL", "ECA_BADCOUNT", "ECA_NOWTACCESS", "ECA_NORDACCESS",
                 "ECA_GETFAIL", "ECA_BADCHID", "ECA_INTERNAL", "ECA_BADMASK"):
        assert getattr(wire, name) == getattr(ca.CAStatus, name).value.code_with_severity, name


NUMBER_TYPES = [t for t in range(35) if t % 7 != wire.STRING]


@pytest.mark.parametrize("dbr_type", NUMBER_TYPES)
def test_a_double_read_as_any_numeric_type(dbr_type):
    cmd = as_client_sees(dbr_type, 1, wire.encode(wire.DOUBLE, dbr_type, 1, 7.75, 1, 4, TS, META))
    fam, el = divmod(dbr_type, 7)
    expected = 7.75 if el in (wire.DOUBLE, wire.FLOAT) else 7
    assert cmd.data[0] == pytest.approx(expected)
    md = cmd.metadata
    if fam >= wire.STS:
        assert (md.status, md.severity) == (4, 1)
    if fam == wire.TIME:
        assert md.timestamp == pytest.approx(TS, abs=1e-6)
    if fam >= wire.GR and el != wire.ENUM:
        assert md.units == b"mm"
        limits = (md.upper_disp_limit, md.lower_disp_limit, md.upper_alarm_limit, md.upper_warning_limit)
        if el == wire.CHAR:  # unsigned: negatives clip to 0
            assert [ord(v) for v in limits] == [10, 0, 9, 8]
        else:
            assert tuple(limits) == (10, -10, 9, 8)
        if el in (wire.DOUBLE, wire.FLOAT):
            assert md.precision == 3
    if fam == wire.CTRL and el not in (wire.ENUM, wire.CHAR):
        assert (md.upper_ctrl_limit, md.lower_ctrl_limit) == (5, -5)
    if fam >= wire.GR and el == wire.ENUM:
        assert md.enum_strings == (b"Off", b"On", b"Tripped")


@pytest.mark.parametrize("dbr_type", [0, 7, 14, 21, 28])
def test_a_double_read_as_a_string_uses_its_precision(dbr_type):
    payload = wire.encode(wire.DOUBLE, dbr_type, 1, 2.0 / 3.0, 0, 0, TS, META)
    if dbr_type == 28:  # caproto decodes DBR_CTRL_STRING with the TIME layout; db_access.h: the STS layout
        assert payload[4:].split(b"\0")[0] == b"0.667"
        return
    cmd = as_client_sees(dbr_type, 1, payload)
    assert cmd.data == [b"0.667"]


@pytest.mark.parametrize("dbr_type", range(35))
def test_an_enum_read_as_any_type(dbr_type):
    if dbr_type == 28:
        pytest.skip("caproto decodes DBR_CTRL_STRING with the TIME layout")
    cmd = as_client_sees(dbr_type, 1, wire.encode(wire.ENUM, dbr_type, 1, 2, 2, 7, TS, META))
    el = dbr_type % 7
    assert cmd.data[0] == (b"Tripped" if el == wire.STRING else 2)
    if dbr_type in (24, 31):  # GR_ENUM, CTRL_ENUM
        assert cmd.metadata.enum_strings == (b"Off", b"On", b"Tripped")


@pytest.mark.parametrize("dbr_type", [0, 7, 14, 21, 6, 20, 5])
def test_a_string_read(dbr_type):
    cmd = as_client_sees(dbr_type, 1, wire.encode(wire.STRING, dbr_type, 1, "serving v12", 0, 0, TS))
    el = dbr_type % 7
    assert cmd.data[0] == (b"serving v12" if el == wire.STRING else 0)


def test_a_string_longer_than_39_characters_is_cut_and_terminated():
    payload = wire.encode(wire.STRING, 0, 1, "x" * 60, 0, 0, TS)
    assert len(payload) == 40 and payload[39] == 0 and as_client_sees(0, 1, payload).data == [b"x" * 39]


@pytest.mark.parametrize("src", [wire.DOUBLE, wire.FLOAT, wire.LONG])
@pytest.mark.parametrize("dbr_type", [wire.DOUBLE, wire.FLOAT, wire.LONG, wire.SHORT, wire.CHAR, 20, 19, 34, 33])
def test_arrays_of_every_served_element_type(src, dbr_type):
    values = np.array([1.0, -2.0, 3.5, 300.0, 0.0])
    count = 7  # two more than the array holds: zeros, as an IOC fills them
    cmd = as_client_sees(dbr_type, count, wire.encode(src, dbr_type, count, values, 0, 0, TS, META))
    el = dbr_type % 7
    if el in (wire.DOUBLE, wire.FLOAT):
        expected = [1.0, -2.0, 3.5, 300.0, 0.0, 0.0, 0.0]
    elif el == wire.CHAR:
        expected = [1, 0, 3, 255, 0, 0, 0]  # unsigned, clipped
    else:
        expected = [1, -2, 3, 300, 0, 0, 0]
    assert list(cmd.data) == pytest.approx(expected)


def test_an_array_read_with_fewer_elements_is_cut():
    values = np.arange(100, dtype=np.float64)
    cmd = as_client_sees(wire.DOUBLE, 3, wire.encode(wire.DOUBLE, wire.DOUBLE, 3, values, 0, 0, TS))
    assert list(cmd.data) == [0.0, 1.0, 2.0]


def test_non_finite_values_read_as_integers_are_zero():
    for value in (math.nan, math.inf):
        cmd = as_client_sees(wire.LONG, 1, wire.encode(wire.DOUBLE, wire.LONG, 1, value, 3, 17, TS))
        assert cmd.data[0] == 0
    cmd = as_client_sees(wire.DOUBLE, 1, wire.encode(wire.DOUBLE, wire.DOUBLE, 1, math.nan, 3, 17, TS))
    assert math.isnan(cmd.data[0])


def test_gr_double_reports_a_disabled_alarm_limit_as_nan_and_int_types_as_zero():
    meta = wire.Meta(limits=(1.0, 0.0, math.nan, 0.5, math.nan, math.nan, 1.0, 0.0))
    md = as_client_sees(27, 1, wire.encode(wire.DOUBLE, 27, 1, 0.1, 0, 0, TS, meta)).metadata
    assert math.isnan(md.upper_alarm_limit) and md.upper_warning_limit == 0.5
    md = as_client_sees(26, 1, wire.encode(wire.DOUBLE, 26, 1, 0.1, 0, 0, TS, meta)).metadata
    assert md.upper_alarm_limit == 0


def test_stsack_string_and_class_name():
    cmd = as_client_sees(37, 1, wire.encode(wire.DOUBLE, 37, 1, 1.5, 2, 3, TS, META, ack=(1, 2)))
    md = cmd.metadata
    assert (md.status, md.severity, md.ackt, md.acks, md.value) == (3, 2, 1, 2, b"1.500")
    cmd = as_client_sees(38, 1, wire.encode(wire.DOUBLE, 38, 1, 1.5, 0, 0, TS, META))
    assert cmd.metadata.value == b"ai"


def test_put_types_cannot_be_read():
    for dbr_type in (wire.PUT_ACKT, wire.PUT_ACKS, 39, -1):
        with pytest.raises(ValueError):
            wire.encode(wire.DOUBLE, dbr_type, 1, 1.0, 0, 0, TS)
        assert not wire.readable(dbr_type)


def test_time_stamps_before_the_epics_epoch_are_zero():
    assert wire.epics_time(0.0) == (0, 0) and wire.epics_time(math.nan) == (0, 0)
    assert wire.epics_time(wire.EPICS_EPOCH + 1.5) == (1, 500_000_000)


# ----------------------------------------------------------------------------- messages and framing

def _request_bytes(*commands) -> bytes:
    return b"".join(bytes(c) for c in commands)


def test_client_requests_are_framed_as_caproto_sends_them():
    big = np.arange(100_000, dtype=np.float64)  # > 0xFFFF bytes: the extended header
    data = _request_bytes(ca.VersionRequest(0, 13), ca.CreateChanRequest("A:B.EGU", 4, 13),
                          ca.WriteNotifyRequest(big, ca.ChannelType.DOUBLE, 100_000, 9, 3),
                          ca.EventAddRequest(ca.ChannelType.TIME_DOUBLE, 0, 9, 5, 0, 0, 0, 5))
    framer = wire.Framer(max_payload=1 << 20)
    messages = []
    for i in range(0, len(data), 1000):  # as TCP delivers it: in pieces
        messages += framer.feed(data[i:i + 1000])
    assert [m.command for m in messages] == [wire.VERSION, wire.CREATE_CHAN, wire.WRITE_NOTIFY, wire.EVENT_ADD]
    assert wire.payload_text(messages[1].payload) == "A:B.EGU" and messages[1].p1 == 4
    write = messages[2]
    assert (write.data_type, write.data_count, write.p1, write.p2) == (wire.DOUBLE, 100_000, 9, 3)
    np.testing.assert_array_equal(wire.decode(write.data_type, write.data_count, write.payload), big)
    assert wire.event_mask(messages[3].payload) == 5 and messages[3].p2 == 5
    assert framer.buffered == 0


def test_a_message_larger_than_the_limit_is_refused_before_it_is_buffered():
    framer = wire.Framer(max_payload=1024)
    with pytest.raises(wire.FramingError):
        framer.feed(wire.header(wire.WRITE, 1 << 30, wire.DOUBLE, 1 << 27, 1, 1))


def test_server_messages_decode_as_caproto_reads_them():
    big = wire.encode(wire.DOUBLE, wire.DOUBLE, 70_000, np.ones(70_000), 0, 0, TS)
    stream = (wire.version_message() + wire.header(wire.CREATE_CHAN, 0, wire.DOUBLE, 70_000, 4, 1)
              + wire.header(wire.READ_NOTIFY, len(big), wire.DOUBLE, 70_000, wire.ECA_NORMAL, 8) + big
              + wire.header(wire.WRITE_NOTIFY, 0, wire.DOUBLE, 1, wire.ECA_PUTFAIL, 9)
              + wire.error_message(wire.Message(wire.WRITE, 6, 1, 1, 3, b""), 4, wire.ECA_NOWTACCESS, "no"))
    buf = bytearray(stream)
    commands = []
    while buf:
        buf, command, _ = read_from_bytestream(buf, ca.SERVER)
        commands.append(command)
    version, create, read, write, error = commands
    assert version.version == 13 and (create.data_count, create.cid, create.sid) == (70_000, 4, 1)
    assert len(read.data) == 70_000 and read.ioid == 8
    assert write.status.name == "ECA_PUTFAIL" and write.ioid == 9
    assert error.status.code_with_severity == wire.ECA_NOWTACCESS and error.cid == 4
    assert bytes(error.error_message).rstrip(b"\0") == b"no"


@given(st.lists(st.tuples(st.integers(0, 27), st.binary(max_size=100)), max_size=20), st.integers(1, 64))
def test_any_stream_cut_anywhere_gives_back_the_same_messages(items, chunk):
    data = b"".join(wire.message(command, payload, 1, 2, 3, 4) for command, payload in items)
    framer = wire.Framer(max_payload=1 << 10)
    got = []
    for i in range(0, len(data), chunk):
        got += framer.feed(data[i:i + chunk])
    padded = [(command, payload + bytes(wire.pad8(len(payload)) - len(payload))) for command, payload in items]
    assert [(m.command, bytes(m.payload)) for m in got] == padded
    assert all((m.data_type, m.data_count, m.p1, m.p2) == (1, 2, 3, 4) for m in got) and framer.buffered == 0


def test_search_replies_decode_as_caproto_reads_them():
    from caproto._commands import read_datagram  # noqa: PLC2701

    data = wire.version_message() + wire.search_reply(5064, 17) + wire.not_found_reply(wire.DO_REPLY, 13, 18)
    version, found, missing = read_datagram(data, ("127.0.0.1", 5064), ca.SERVER)
    assert found.port == 5064 and found.cid == 17 and found.ip == "255.255.255.255"  # "the sender's address"
    assert missing.cid == 18


# ----------------------------------------------------------------------------- puts

def test_one_string_cut_after_its_terminator_as_libca_sends_it():
    assert wire.decode(wire.STRING, 1, b"abc\0\0\0\0\0") == ["abc"]


@pytest.mark.parametrize("dbr_type", [wire.SHORT, wire.FLOAT, wire.ENUM, wire.CHAR, wire.LONG, wire.DOUBLE])
def test_numeric_puts_decode_to_their_values(dbr_type):
    values = np.array([1, 2, 3], dtype=wire.NUMPY_TYPES[dbr_type])
    decoded = wire.decode(dbr_type, 3, values.tobytes() + bytes(8))
    assert list(decoded) == [1, 2, 3]


def test_a_put_with_fewer_bytes_than_its_count_says_is_refused():
    with pytest.raises(wire.BadPut) as err:
        wire.decode(wire.DOUBLE, 3, bytes(16))
    assert err.value.status == wire.ECA_BADCOUNT
    with pytest.raises(wire.BadPut) as err:
        wire.decode(20, 1, bytes(24))  # a TIME type is not something a client writes
    assert err.value.status == wire.ECA_BADTYPE


def test_format_double_follows_prec():
    assert wire.format_double(1.23456, 2) == "1.23"
    assert wire.format_double(12.0, 0) == "12"
    assert wire.format_double(1.5e9, 3) == "1.500e+09"
    assert wire.format_double(math.nan, 2) == "nan"
