"""service.core.limits.single_headers: the fast paths' read of single-valued headers."""

from service.core.limits import single_headers

NAMES = frozenset((b"authorization", b"if-none-match"))


def test_present_named_headers_only():
    headers = [(b"authorization", b"Bearer t"), (b"accept", b"*/*"), (b"accept", b"x")]
    assert single_headers(headers, NAMES) == {b"authorization": b"Bearer t"}


def test_a_named_header_twice_is_none():
    headers = [(b"authorization", b"Bearer t"), (b"if-none-match", b'"a"'), (b"if-none-match", b'"a"')]
    assert single_headers(headers, NAMES) is None


def test_no_headers():
    assert single_headers([], NAMES) == {}
