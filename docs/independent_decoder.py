#!/usr/bin/env python3
"""An independent decoder for credvault format v1, written from docs/format.md alone.

It reads the `vectors` blocks of docs/format.md, then, using only the rules in that document:
derives the local master key id, unwraps both example data keys, opens both example
envelopes, decodes their plaintexts, checks that opening fails under another tenant, name
or wrap context, and checks that every `reject.*` vector is rejected for the documented
reason. It exits 0 only if every check passes.

Requires Python 3.11 and the `cryptography` package (`pip install cryptography`).
XChaCha20-Poly1305 is built from HChaCha20 (implemented here) and `cryptography`'s
ChaCha20Poly1305, as draft-irtf-cfrg-xchacha-03 describes.

Run: python3 docs/independent_decoder.py [path/to/format.md]
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

TAG_LEN = 16
NONCE_LEN = {0x01: 12, 0x02: 24}  # suite id -> nonce length (section 1)
SECRET_LABEL = b"credvault/v1/secret"
WRAP_LABEL = b"credvault/v1/dek-wrap"
ID_LABEL = b"credvault/v1/master-key-id"


class FormatError(Exception):
    """A parse failure; `reason` is one of the section 8 names in snake case."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecryptionError(Exception):
    pass


# ---------------------------------------------------------------- vectors (section 9)


def read_vectors(doc: str) -> dict[str, bytes]:
    vectors: dict[str, bytes] = {}
    in_block = False
    for line in doc.splitlines():
        stripped = line.strip()
        if not in_block:
            in_block = stripped == "```vectors"
            continue
        if stripped == "```":
            in_block = False
            continue
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValueError(f"bad vector line: {line!r}")
        if name in vectors:
            raise ValueError(f"duplicate vector name: {name}")
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise ValueError(f"bad string value for {name}")
            vectors[name] = value[1:-1].encode("utf-8")
        else:
            vectors[name] = bytes.fromhex(value)
    return vectors


# ---------------------------------------------------------------- primitives (section 1)


def lp32(x: bytes) -> bytes:
    return struct.pack(">I", len(x)) + x


def _rotl(v: int, n: int) -> int:
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha-03, section 2.2): 32-byte key, 16-byte nonce."""
    assert len(key) == 32 and len(nonce16) == 16
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        _quarter(state, 0, 4, 8, 12)
        _quarter(state, 1, 5, 9, 13)
        _quarter(state, 2, 6, 10, 14)
        _quarter(state, 3, 7, 11, 15)
        _quarter(state, 0, 5, 10, 15)
        _quarter(state, 1, 6, 11, 12)
        _quarter(state, 2, 7, 8, 13)
        _quarter(state, 3, 4, 9, 14)
    return struct.pack("<8I", *(state[0:4] + state[12:16]))


def xchacha_parts(key: bytes, nonce24: bytes) -> tuple[bytes, bytes]:
    """The ChaCha20-Poly1305 subkey and 12-byte nonce for an XChaCha20-Poly1305 operation."""
    return hchacha20(key, nonce24[:16]), b"\x00\x00\x00\x00" + nonce24[16:]


def aead_open(suite: int, key: bytes, nonce: bytes, aad: bytes, sealed: bytes) -> bytes:
    try:
        if suite == 0x01:
            return AESGCM(key).decrypt(nonce, sealed, aad)
        if suite == 0x02:
            subkey, nonce12 = xchacha_parts(key, nonce)
            return ChaCha20Poly1305(subkey).decrypt(nonce12, sealed, aad)
    except InvalidTag:
        raise DecryptionError() from None
    raise FormatError("unsupported_suite")


# ---------------------------------------------------------------- parsing helpers


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise FormatError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def i64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise FormatError("trailing_bytes")


# ---------------------------------------------------------------- section 4: wrapped keys


def local_master_key_id(master_key: bytes) -> str:
    mac = hmac.new(master_key, ID_LABEL, hashlib.sha256).digest()
    return "local-" + mac[:8].hex()


def wrap_context(tenant: bytes, dek_version: int, suite: int, master_key_id: bytes) -> bytes:
    return (
        lp32(WRAP_LABEL)
        + lp32(tenant)
        + struct.pack(">I", dek_version)
        + bytes([suite])
        + lp32(master_key_id)
    )


def parse_wrapped(data: bytes) -> tuple[bytes, bytes, bytes]:
    r = Reader(data)
    if r.take(4) != b"CVWK":
        raise FormatError("bad_magic")
    if r.u8() != 0x01:
        raise FormatError("unsupported_version")
    if r.u8() != 0x02:
        raise FormatError("unsupported_suite")
    nonce, encrypted, tag = r.take(24), r.take(32), r.take(16)
    r.finish()
    return nonce, encrypted, tag


def unwrap(master_key: bytes, wrapped: bytes, context: bytes) -> bytes:
    nonce, encrypted, tag = parse_wrapped(wrapped)
    aad = lp32(wrapped[0:6]) + context
    return aead_open(0x02, master_key, nonce, aad, encrypted + tag)


# ---------------------------------------------------------------- section 3: envelopes


def parse_envelope(data: bytes) -> dict:
    r = Reader(data)
    if r.take(4) != b"CVSE":
        raise FormatError("bad_magic")
    if r.u8() != 0x01:
        raise FormatError("unsupported_version")
    suite = r.u8()
    if suite not in NONCE_LEN:
        raise FormatError("unsupported_suite")
    kind = r.u8()
    if kind not in (0x01, 0x02, 0x03):
        raise FormatError("invalid_field")
    dek_version = r.u32()
    if dek_version == 0:
        raise FormatError("invalid_field")
    nonce = r.take(NONCE_LEN[suite])
    sealed = r.take(r.u32())
    r.finish()
    if len(sealed) < TAG_LEN:
        raise FormatError("invalid_field")
    return {"header": data[0:11], "suite": suite, "kind": kind, "dek_version": dek_version,
            "nonce": nonce, "sealed": sealed}


def secret_aad(header: bytes, tenant: bytes, name: bytes) -> bytes:
    return lp32(SECRET_LABEL) + lp32(header) + lp32(tenant) + lp32(name)


def open_envelope(dek: bytes, envelope: bytes, tenant: bytes, name: bytes) -> tuple[dict, bytes]:
    env = parse_envelope(envelope)
    aad = secret_aad(env["header"], tenant, name)
    return env, aead_open(env["suite"], dek, env["nonce"], aad, env["sealed"])


# ---------------------------------------------------------------- section 5: plaintexts


def _text(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("invalid_field") from None


def _version(r: Reader) -> None:
    if r.u8() != 0x01:
        raise FormatError("unsupported_version")


def decode_api_key(p: bytes) -> str:
    r = Reader(p)
    _version(r)
    return _text(r.take(r.remaining()))


def decode_oauth_token(p: bytes) -> dict:
    r = Reader(p)
    _version(r)

    def flag() -> bool:
        b = r.u8()
        if b not in (0, 1):
            raise FormatError("invalid_field")
        return b == 1

    out: dict = {"access_token": _text(r.take(r.u32()))}
    out["refresh_token"] = _text(r.take(r.u32())) if flag() else None
    out["token_type"] = _text(r.take(r.u16()))
    if len(out["token_type"].encode()) > 255:
        raise FormatError("invalid_field")
    out["expires_at"] = r.i64() if flag() else None
    count = r.u16()
    if count > 1024 or count > r.remaining() // 2:
        raise FormatError("invalid_field")
    scopes = []
    for _ in range(count):
        scope = _text(r.take(r.u16()))
        if len(scope.encode()) > 1024:
            raise FormatError("invalid_field")
        scopes.append(scope)
    out["scopes"] = scopes
    r.finish()
    return out


# ---------------------------------------------------------------- checks


class Checker:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def eq(self, what: str, got: object, want: object) -> None:
        if got == want:
            self.passed += 1
        else:
            self.failed += 1
            show = lambda v: v.hex() if isinstance(v, bytes) else repr(v)  # noqa: E731
            print(f"FAIL {what}: got {show(got)}, document says {show(want)}")

    def fails(self, what: str, expected: str, action) -> None:
        try:
            action()
        except FormatError as e:
            got = e.reason
        except DecryptionError:
            got = "decryption"
        else:
            got = "success"
        self.eq(what, got, expected)


def main() -> int:
    here = Path(__file__).resolve().parent
    doc_path = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "format.md"
    v = read_vectors(doc_path.read_text(encoding="utf-8"))
    c = Checker()

    # HChaCha20 self-test, draft-irtf-cfrg-xchacha-03 section 2.2.1.
    c.eq("hchacha20 draft test vector",
         hchacha20(bytes(range(32)), bytes.fromhex("000000090000004a0000000031415927")),
         bytes.fromhex("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"))

    master = v["master_key"]
    tenant = v["tenant"]
    mac = hmac.new(master, ID_LABEL, hashlib.sha256).digest()
    c.eq("master_key_id.hmac", mac, v["master_key_id.hmac"])
    c.eq("master_key_id", local_master_key_id(master).encode(), v["master_key_id"])
    mk_id = v["master_key_id"]

    for ex in ("ex1", "ex2"):
        version = struct.unpack(">I", v[f"{ex}.dek_version"])[0]
        suite = v[f"{ex}.suite"][0]
        ctx = wrap_context(tenant, version, suite, mk_id)
        c.eq(f"{ex}.wrap_context", ctx, v[f"{ex}.wrap_context"])
        wrapped = v[f"{ex}.wrapped_dek"]
        c.eq(f"{ex}.wrap_aad", lp32(wrapped[0:6]) + ctx, v[f"{ex}.wrap_aad"])
        wrap_nonce, encrypted, tag = parse_wrapped(wrapped)
        c.eq(f"{ex}.wrap_nonce", wrap_nonce, v[f"{ex}.wrap_nonce"])
        c.eq(f"{ex}.wrapped_dek.ciphertext", encrypted, v[f"{ex}.wrapped_dek.ciphertext"])
        c.eq(f"{ex}.wrapped_dek.tag", tag, v[f"{ex}.wrapped_dek.tag"])
        c.eq(f"{ex}.wrap_subkey", xchacha_parts(master, wrap_nonce)[0], v[f"{ex}.wrap_subkey"])
        dek = unwrap(master, wrapped, ctx)
        c.eq(f"{ex}.dek (unwrapped)", dek, v[f"{ex}.dek"])
        other = wrap_context(b"acme2", version, suite, mk_id)
        c.fails(f"{ex}.wrapped_dek under tenant acme2", "decryption", lambda: unwrap(master, wrapped, other))
        other = wrap_context(tenant, version + 1, suite, mk_id)
        c.fails(f"{ex}.wrapped_dek under version+1", "decryption", lambda: unwrap(master, wrapped, other))
        other = wrap_context(tenant, version, 3 - suite, mk_id)
        c.fails(f"{ex}.wrapped_dek under the other suite", "decryption", lambda: unwrap(master, wrapped, other))

        name = v[f"{ex}.secret_name"]
        envelope = v[f"{ex}.envelope"]
        env, plaintext = open_envelope(dek, envelope, tenant, name)
        c.eq(f"{ex}.header", env["header"], v[f"{ex}.header"])
        c.eq(f"{ex}.kind", bytes([env["kind"]]), v[f"{ex}.kind"])
        c.eq(f"{ex} envelope suite", bytes([env["suite"]]), v[f"{ex}.suite"])
        c.eq(f"{ex} envelope DEK version", env["dek_version"], version)
        c.eq(f"{ex}.nonce", env["nonce"], v[f"{ex}.nonce"])
        c.eq(f"{ex}.aad", secret_aad(env["header"], tenant, name), v[f"{ex}.aad"])
        c.eq(f"{ex}.envelope.sealed_len", struct.pack(">I", len(env["sealed"])), v[f"{ex}.envelope.sealed_len"])
        c.eq(f"{ex}.envelope.ciphertext", env["sealed"][:-TAG_LEN], v[f"{ex}.envelope.ciphertext"])
        c.eq(f"{ex}.envelope.tag", env["sealed"][-TAG_LEN:], v[f"{ex}.envelope.tag"])
        c.eq(f"{ex}.plaintext", plaintext, v[f"{ex}.plaintext"])
        c.fails(f"{ex}.envelope as tenant acme2", "decryption", lambda: open_envelope(dek, envelope, b"acme2", name))
        c.fails(f"{ex}.envelope as name gitlab", "decryption", lambda: open_envelope(dek, envelope, tenant, b"gitlab"))

    c.eq("ex2.subkey", xchacha_parts(v["ex2.dek"], v["ex2.nonce"])[0], v["ex2.subkey"])
    c.eq("ex1.api_key", decode_api_key(v["ex1.plaintext"]).encode(), v["ex1.api_key"])
    token = decode_oauth_token(v["ex2.plaintext"])
    c.eq("ex2.access_token", token["access_token"].encode(), v["ex2.access_token"])
    c.eq("ex2.refresh_token", token["refresh_token"].encode(), v["ex2.refresh_token"])
    c.eq("ex2.token_type", token["token_type"].encode(), v["ex2.token_type"])
    c.eq("ex2.expires_at", struct.pack(">q", token["expires_at"]), v["ex2.expires_at"])
    c.eq("ex2 scopes", [s.encode() for s in token["scopes"]], [v["ex2.scope.0"], v["ex2.scope.1"]])

    ex1_ctx = v["ex1.wrap_context"]
    ex1_dek = v["ex1.dek"]
    actions = {
        "envelope": lambda b: open_envelope(ex1_dek, b, tenant, v["ex1.secret_name"]),
        "wrapped_dek": lambda b: unwrap(master, b, ex1_ctx),
        "api_key": decode_api_key,
        "oauth_token": decode_oauth_token,
    }
    rejects = 0
    for name, data in v.items():
        if not name.startswith("reject."):
            continue
        rejects += 1
        _, structure, expected, *_ = name.split(".")
        c.fails(name, expected, lambda: actions[structure](data))

    print(f"independent decoder: {rejects} reject vectors, {c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
