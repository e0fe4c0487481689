"""The PII policy: what of a tenant's inputs may reach disk (the `pii` field of `models.tenancy`).

    keep    the input as sent
    redact  e-mail addresses, phone numbers, Luhn-valid card numbers, IBANs (mod-97 checksum) and
            IPv4/IPv6 addresses replaced by <EMAIL>, <PHONE>, <CARD>, <IBAN>, <IP>
    hash    every text replaced by a keyed hash (HMAC-SHA256 under a per-home secret): equal texts
            still join, nobody without the secret can test a guess
    drop    no input at all

`Privacy` holds a home's secrets and applies a policy to JSON-like values (every string in them).
Secrets live in `<home>/secrets/` (mode 0600), never in the lake. Pending async-job inputs, which
a job needs verbatim to run, are sealed with the same home's Fernet key (`seal`/`unseal`).

No dictionary or NER: a small set of patterns, each candidate checked (Luhn, mod 97, `ipaddress`)
so that near-misses (a 16-digit number failing Luhn, a date, an invalid IP) stay as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from models.errors import TandemModelError

__all__ = [
    "PII_PLACEHOLDERS",
    "Privacy",
    "SealError",
    "apply_policy",
    "home_secret",
    "iban_ok",
    "luhn_ok",
    "redact",
]

PII_PLACEHOLDERS = ("<EMAIL>", "<PHONE>", "<CARD>", "<IBAN>", "<IP>")


class SealError(TandemModelError):
    """A sealed value cannot be opened (another home's key, or tampered with)."""


_EMAIL = r"(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"
_IBAN = r"(?P<iban>\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b)"
_CARD = r"(?P<card>(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w]|[ -]\d))"
_IPV4 = r"(?P<ipv4>(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d))"
_IPV6 = r"(?P<ipv6>(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]))"
# A phone number: an optional +country, then groups of digits (one may be in parentheses) separated by
# single spaces, dots or dashes; 9-15 digits in all, or 7-15 after a "+". Not part of a longer number.
_PHONE = r"(?P<phone>(?<![\w+(])(?<!\d[ .-])\+?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?(?:\(\d{1,5}\)|\d{1,5})){1,6}(?![\w]|[ .-]\d))"
_PATTERN = re.compile(f"{_EMAIL}|{_IBAN}|{_CARD}|{_IPV4}|{_IPV6}|{_PHONE}")
# The e-mail and IPv6 alternatives are tried at nearly every position: left out when the text has no
# '@' or no ':' (a 20-word text with digits but no PII: ~55 us with all of them, ~30 us without).
_PATTERNS = {(at, colon): re.compile("|".join(
    p for p, keep in ((_EMAIL, at), (_IBAN, True), (_CARD, True), (_IPV4, True), (_IPV6, colon), (_PHONE, True))
    if keep)) for at in (False, True) for colon in (False, True)}
_HINT = re.compile(r"[\d@:]")  # no digit, '@' or ':' => nothing to find


def luhn_ok(digits: str) -> bool:
    """True when `digits` (digits only) passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """True when `iban` (spaces allowed) has a valid length and mod-97 checksum."""
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _replace(m: re.Match) -> str:
    kind = m.lastgroup
    text = m.group()
    if kind == "email":
        return "<EMAIL>"
    if kind == "iban":
        return "<IBAN>" if iban_ok(text) else text
    if kind == "card":
        digits = re.sub(r"\D", "", text)
        if luhn_ok(digits):
            return "<CARD>"
        return "<PHONE>" if len(digits) <= 15 and _phone_ok(text) else text
    if kind in ("ipv4", "ipv6"):
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return _phone(text) if kind == "ipv4" else text
        return "<IP>"
    return _phone(text)


def _phone_ok(text: str) -> bool:
    n = sum(c.isdigit() for c in text)
    return 7 <= n <= 15 if text.startswith("+") else 9 <= n <= 15


def _phone(text: str) -> str:
    return "<PHONE>" if _phone_ok(text) and text.count(".") != 3 else text


def redact(text: str) -> str:
    """`text` with e-mails, phones, Luhn-valid cards, valid IBANs and IP addresses replaced by placeholders."""
    if not _HINT.search(text):
        return text
    return _PATTERNS["@" in text, ":" in text].sub(_replace, text)


def _walk(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, fn) for v in value]
    return value


def apply_policy(policy: str, value: Any, hash_key: bytes) -> Any:
    """`value` (JSON-like) as `policy` lets it be stored: every string kept, redacted or hashed; None for drop."""
    if policy == "keep":
        return value
    if policy == "redact":
        return _walk(value, redact)
    if policy == "hash":
        return _walk(value, lambda s: keyed_hash(s, hash_key))
    if policy == "drop":
        return None
    raise ValueError(f"unknown PII policy {policy!r}; use keep, redact, hash or drop")


def keyed_hash(text: str, key: bytes) -> str:
    """`hmac:` and the first 32 hex digits of HMAC-SHA256(key, text)."""
    return "hmac:" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]


def home_secret(home: Path, name: str, make: Callable[[], bytes]) -> bytes:
    """The secret `<home>/secrets/<name>`, created (mode 0600, by `make`) on first use.

    Written whole to a file of its own, then linked into place (`os.link` fails if the name exists):
    processes racing to create it all end with the one that won, and none ever reads it half written.
    """
    folder = Path(home).absolute() / "secrets"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / name
    if not path.exists():
        tmp = folder / f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(make())
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: its secret is the one
                os.link(tmp, path)
        finally:
            tmp.unlink()
    return path.read_bytes().strip()


class Privacy:
    """A home's PII secrets: the HMAC key (`hash` policy, `input_hash`) and the job-input sealing key."""

    def __init__(self, hash_key: bytes, seal_key: bytes):
        self.hash_key = hash_key
        self._fernet = Fernet(seal_key)

    @classmethod
    def for_home(cls, home: Path) -> Privacy:
        return cls(home_secret(home, "pii-hmac.key", lambda: os.urandom(32).hex().encode()),
                   home_secret(home, "job-inputs.key", Fernet.generate_key))

    def apply(self, policy: str, value: Any) -> Any:
        return apply_policy(policy, value, self.hash_key)

    def input_hash(self, value: bytes) -> str:
        """The keyed hash of a raw input's canonical bytes (joins equal inputs, reveals nothing)."""
        return hmac.new(self.hash_key, value, hashlib.sha256).hexdigest()

    def scrub(self, policy: str, text: str | None) -> str | None:
        """An error message or other free text as a non-`keep` policy may store it: redacted."""
        if text is None or policy == "keep":
            return text
        return redact(text)

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def unseal(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SealError("a sealed job input cannot be opened with this home's key "
                            "(secrets/job-inputs.key was replaced, or the lake belongs to another home)") from None
