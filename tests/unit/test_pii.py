"""The PII policy: each kind redacted, near-misses kept, keyed hashes join, drop stores nothing."""

from __future__ import annotations

import stat

import pytest

from models.pii import Privacy, SealError, apply_policy, home_secret, iban_ok, luhn_ok, redact


@pytest.mark.parametrize(("text", "expected"), [
    ("mail jane.doe+x@example.co.uk now", "mail <EMAIL> now"),
    ("call +44 20 7946 0958 today", "call <PHONE> today"),
    ("call (555) 123-4567 today", "call <PHONE> today"),
    ("call 555-123-4567.", "call <PHONE>."),
    ("card 4111 1111 1111 1111 ok", "card <CARD> ok"),
    ("card 4111-1111-1111-1111", "card <CARD>"),
    ("card 5500005555555559", "card <CARD>"),
    ("iban GB82 WEST 1234 5698 7654 32 paid", "iban <IBAN> paid"),
    ("iban DE89370400440532013000", "iban <IBAN>"),
    ("from 192.168.10.254 in", "from <IP> in"),
    ("from 2001:db8::8a2e:370:7334 in", "from <IP> in"),
    ("from ::1 in", "from <IP> in"),
])
def test_redact_replaces_each_kind_with_its_placeholder(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 fails Luhn",  # 16 digits, Luhn fails: stays
    "number 4111111111111112",
    "iban GB82 WEST 1234 5698 7654 33 bad checksum",
    "on 2024-01-15 at 10:30",  # a date and a time
    "version 1.2.3.4000 of it",  # not an IP: an octet over 255
    "ip 999.1.1.1 no",
    "order 12345 shipped",
    "ratio 3:4 and 1:2:3",
    "price 1,299.99 USD",
    "plain words only here",
])
def test_redact_keeps_near_misses(text):
    assert redact(text) == text


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def test_every_kind_in_one_text():
    text = "Jane (jane@example.com, +1 415 555 2671) paid with 4111111111111111 from DE89370400440532013000 at 10.0.0.7"
    out = redact(text)
    assert out == "Jane (<EMAIL>, <PHONE>) paid with <CARD> from <IBAN> at <IP>"


def test_hash_policy_joins_equal_texts_and_depends_on_the_key():
    a = apply_policy("hash", {"text": "jane@example.com", "n": 3}, b"k1")
    b = apply_policy("hash", {"text": "jane@example.com", "n": 3}, b"k1")
    c = apply_policy("hash", {"text": "jane@example.com", "n": 3}, b"k2")
    assert a == b and a["n"] == 3 and a["text"].startswith("hmac:") and "jane" not in a["text"]
    assert c["text"] != a["text"]


def test_keep_and_drop_and_nested_values():
    value = {"query": "ip 10.0.0.7", "documents": ["mail a@b.io", "nothing"]}
    assert apply_policy("keep", value, b"k") == value
    assert apply_policy("drop", value, b"k") is None
    assert apply_policy("redact", value, b"k") == {"query": "ip <IP>", "documents": ["mail <EMAIL>", "nothing"]}
    with pytest.raises(ValueError, match="unknown PII policy"):
        apply_policy("shred", value, b"k")


def test_home_secrets_are_private_stable_and_outside_the_lake(tmp_path):
    p1 = Privacy.for_home(tmp_path)
    p2 = Privacy.for_home(tmp_path)
    assert p1.hash_key == p2.hash_key
    for f in (tmp_path / "secrets").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert home_secret(tmp_path, "x.key", lambda: b"abc") == b"abc"
    assert home_secret(tmp_path, "x.key", lambda: b"other") == b"abc"


def test_sealed_job_inputs_open_only_with_their_home_key(tmp_path):
    mine, other = Privacy.for_home(tmp_path / "a"), Privacy.for_home(tmp_path / "b")
    token = mine.seal('{"text": "jane@example.com"}')
    assert "jane" not in token
    assert mine.unseal(token) == '{"text": "jane@example.com"}'
    with pytest.raises(SealError, match="cannot be opened"):
        other.unseal(token)


def test_creators_racing_for_a_secret_all_read_the_winners_whole(tmp_path):
    # The first creator is slow to produce its secret: a racer must never read the file half written
    # (two gateways started at once on a fresh home: one had read an empty key and failed to start).
    import threading
    import time

    def slow() -> bytes:
        time.sleep(0.3)
        return b"first"

    got: dict[str, bytes] = {}
    first = threading.Thread(target=lambda: got.__setitem__("first", home_secret(tmp_path, "k.key", slow)))
    first.start()
    time.sleep(0.1)  # the first is inside `slow` now
    got["second"] = home_secret(tmp_path, "k.key", lambda: b"second")
    first.join()
    assert got["first"] == got["second"] and got["first"] in (b"first", b"second")
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["k.key"]  # no temporary file left
