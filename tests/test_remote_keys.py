"""The remote tier's pure parts, no server: URLs, layouts, chained keys, the value codec, the backoff."""

from __future__ import annotations

import subprocess
import sys
from array import array

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prefixcache.kv import LayerSpec
from prefixcache.remote import ChunkError, ChunkLayout, parse_redis_url
from prefixcache.remote.backoff import Backoff
from prefixcache.remote.codec import CHECKSUM_SIZE, HEADER_SIZE, decode, encode
from prefixcache.remote.keys import KEY_PREFIX, chunk_digests, redis_key, root_digest
from prefixcache.remote.known import KnownChunks

LAYERS = [LayerSpec(2, 4, 4), LayerSpec(1, 8, 4)]
LAYOUT = ChunkLayout(LAYERS, torch.float32, chunk_tokens=4)


def rows_for(layout: ChunkLayout, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layout.chunk_tokens, layout.width, generator=g).to(layout.dtype)


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("redis://localhost", (False, "localhost", 6379, 0, None, None)),
        ("redis://h:7000/3", (False, "h", 7000, 3, None, None)),
        ("REDIS://h/", (False, "h", 6379, 0, None, None)),
        ("rediss://u:p@h:6380/1", (True, "h", 6380, 1, "u", "p")),
        ("redis://:only-pass@h", (False, "h", 6379, 0, None, "only-pass")),
        ("redis://user@h", (False, "h", 6379, 0, "user", None)),
        ("redis://u:p%40ss%2Fw%3A@h", (False, "h", 6379, 0, "u", "p@ss/w:")),
        ("redis://[::1]:6379/0", (False, "::1", 6379, 0, None, None)),
    ],
)
def test_url_parts(url: str, want: tuple[object, ...]) -> None:
    assert tuple(parse_redis_url(url)) == want


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://h", "scheme must be redis or rediss"),
        ("unix:///tmp/redis.sock", "scheme must be redis or rediss"),
        ("localhost:6379", "scheme must be redis or rediss"),
        ("redis://", "names no host"),
        ("redis://h:0", "port must be a number"),
        ("redis://h:70000", "port must be a number"),
        ("redis://h:abc", "port must be a number"),
        ("redis://h/x", "path must be /db"),
        ("redis://h/1/2", "path must be /db"),
        ("redis://h/-1", "path must be /db"),
        ("redis://h/0?ssl_cert_reqs=none", "options after"),
        ("redis://h/0#frag", "options after"),
        ("redis://h /0", "whitespace"),
    ],
)
def test_bad_url_names_argument_value_and_what_is_accepted(url: str, what: str) -> None:
    with pytest.raises(ValueError, match=what) as info:
        parse_redis_url(url, name="remote")
    message = str(info.value)
    assert message.startswith("remote: ")
    assert "expected redis://[[user]:password@]host[:port][/db]" in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:s3cret@h:notaport",
        "redis://:s3cret@h/x",
        "rediss://u:s3cret@h/0?x=1",
        "redis://u:s3/cret@h",  # an unescaped '/' breaks the URL apart; still masked
        "ftp://u:s3cret@h",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    assert "s3cret" not in str(info.value) and "cret" not in str(info.value)
    assert "***" in str(info.value)


def test_url_repr_masks_the_password() -> None:
    url = parse_redis_url("redis://app:hunter2@h:1/2")
    assert "hunter2" not in repr(url) and "hunter2" not in url.masked()
    assert parse_redis_url(url.masked().replace("***", "hunter2")) == url


def test_url_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="url: expected a Redis URL as a str"):
        parse_redis_url(b"redis://h")


# -- layouts and keys -------------------------------------------------------------------------


def test_layout_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="dtype: expected a floating-point"):
        ChunkLayout(LAYERS, torch.int32)
    for bad in (0, -1, 1.5, True, 2**21):
        with pytest.raises(ValueError, match="chunk_tokens: expected an int in"):
            ChunkLayout(LAYERS, torch.float32, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layers\[0\]"):
        ChunkLayout([(0, 1, 1)], torch.float32)  # type: ignore[list-item]


def test_layout_digest_tells_layouts_apart() -> None:
    variants = [
        LAYOUT,
        ChunkLayout(LAYERS, torch.float16, 4),
        ChunkLayout(LAYERS, torch.bfloat16, 4),
        ChunkLayout(LAYERS, torch.float32, 8),
        ChunkLayout(LAYERS[::-1], torch.float32, 4),  # same width, layers in another order
        ChunkLayout([LayerSpec(2, 4, 4)], torch.float32, 4),
        ChunkLayout([LayerSpec(4, 2, 4), LayerSpec(1, 8, 4)], torch.float32, 4),
    ]
    assert len({v.digest for v in variants}) == len(variants)
    assert ChunkLayout(tuple(LAYERS), torch.float32, 4).digest == LAYOUT.digest


def test_root_separates_models_namespaces_and_layouts() -> None:
    roots = {
        root_digest("fp-a", None, LAYOUT),
        root_digest("fp-b", None, LAYOUT),
        root_digest("fp-a", "tenant", LAYOUT),
        root_digest("fp-a", ("tenant",), LAYOUT),
        root_digest("fp-a", 1, LAYOUT),
        root_digest("fp-a", True, LAYOUT),
        root_digest("fp-a", "1", LAYOUT),
        root_digest("fp-a", None, ChunkLayout(LAYERS, torch.float16, 4)),
    }
    assert len(roots) == 8


def test_root_refuses_what_it_cannot_hash_stably() -> None:
    with pytest.raises(ValueError, match=r"namespace: .* cannot be shared through a remote tier"):
        root_digest("fp", 1.5, LAYOUT)
    with pytest.raises(ValueError, match="namespace"):
        root_digest("fp", ("a", frozenset()), LAYOUT)
    for bad in ("", None, b"fp"):
        with pytest.raises(TypeError, match="fingerprint: expected"):
            root_digest(bad, None, LAYOUT)  # type: ignore[arg-type]


@given(
    st.lists(st.integers(0, 2**31 - 1), max_size=40),
    st.lists(st.integers(0, 2**31 - 1), max_size=40),
    st.integers(1, 6),
)
def test_chunk_i_keys_agree_exactly_when_the_first_i_plus_1_chunks_agree(a: list[int], b: list[int], c: int) -> None:
    root = root_digest("fp", None, LAYOUT)
    da, db = chunk_digests(root, array("i", a), c), chunk_digests(root, array("i", b), c)
    assert len(da) == len(a) // c and len(db) == len(b) // c
    for i in range(min(len(da), len(db))):
        same_prefix = a[: (i + 1) * c] == b[: (i + 1) * c]
        assert (da[i] == db[i]) == same_prefix


def test_chunk_digests_count_and_keys() -> None:
    root = root_digest("fp", None, LAYOUT)
    tokens = array("i", range(11))
    full = chunk_digests(root, tokens, 4)
    assert len(full) == 2
    assert chunk_digests(root, tokens, 4, 1) == full[:1]
    assert chunk_digests(root, tokens, 4, 99) == full
    assert chunk_digests(root, tokens[:3], 4) == []
    key = redis_key(full[0])
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 64
    with pytest.raises(TypeError, match="tokens: expected an array"):
        chunk_digests(root, array("q", range(8)), 4)


_STABLE_KEY_SCRIPT = """
import torch
from array import array
from prefixcache.kv import LayerSpec
from prefixcache.remote import ChunkLayout
from prefixcache.remote.keys import chunk_digests, redis_key, root_digest
layout = ChunkLayout([LayerSpec(2, 4, 4), LayerSpec(1, 8, 4)], torch.float32, chunk_tokens=4)
print(redis_key(chunk_digests(root_digest("fp", ("t", 1, None, True), layout), array("i", range(9)), 4)[-1]).decode())
"""


def test_keys_are_the_same_in_another_process() -> None:
    # Hash randomisation (PYTHONHASHSEED) or anything else process-local must not enter a key.
    ours = redis_key(chunk_digests(root_digest("fp", ("t", 1, None, True), LAYOUT), array("i", range(9)), 4)[-1])
    out = subprocess.run(
        [sys.executable, "-c", _STABLE_KEY_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == ours.decode()


def test_importing_prefixcache_does_not_import_redis() -> None:
    code = "import sys, prefixcache, prefixcache.remote; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_codec_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    layout = ChunkLayout(LAYERS, dtype, chunk_tokens=4)
    rows = rows_for(layout, 1)
    rows[0, 0] = float("nan")
    rows[1, 1] = -0.0
    digest = bytes(range(32))
    value = encode(rows, digest=digest, layout=layout)
    assert len(value) == HEADER_SIZE + layout.chunk_bytes + CHECKSUM_SIZE
    back = decode(value, digest=digest, layout=layout)
    assert back.dtype == dtype and torch.equal(back.view(torch.uint8), rows.view(torch.uint8))
    out = torch.full_like(rows, 7)
    assert decode(value, digest=digest, layout=layout, out=out) is out
    assert torch.equal(out.view(torch.uint8), rows.view(torch.uint8))


def test_codec_refuses_every_single_byte_change() -> None:
    digest = bytes(32)
    value = encode(rows_for(LAYOUT, 2), digest=digest, layout=LAYOUT)
    for at in range(len(value)):
        damaged = bytearray(value)
        damaged[at] ^= 0x01
        with pytest.raises(ChunkError):
            decode(bytes(damaged), digest=digest, layout=LAYOUT)


def test_codec_reasons() -> None:
    digest = bytes(32)
    value = encode(rows_for(LAYOUT, 3), digest=digest, layout=LAYOUT)

    def reason(v: bytes, layout: ChunkLayout = LAYOUT, d: bytes = digest) -> str:
        with pytest.raises(ChunkError) as info:
            decode(v, digest=d, layout=layout)
        return info.value.reason

    assert reason(b"") == "truncated"
    assert reason(value[:50]) == "truncated"
    assert reason(value[:-1]) == "truncated"
    assert reason(value + b"\0") == "truncated"
    assert reason(b"x" * len(value)) == "header"
    payload_byte = bytearray(value)
    payload_byte[HEADER_SIZE + 5] ^= 0x80
    assert reason(bytes(payload_byte)) == "checksum"
    assert reason(value, d=bytes([1]) + bytes(31)) == "key"
    for other in (
        ChunkLayout(LAYERS, torch.float16, 8),  # the same bytes per chunk, another dtype
        ChunkLayout(LAYERS[::-1], torch.float32, 4),  # the same width, another layer layout
        ChunkLayout(LAYERS, torch.float32, 8),
    ):
        assert reason(value, layout=other) == "layout"


def test_encode_checks_its_rows() -> None:
    with pytest.raises(ValueError, match=r"rows: expected a CPU tensor \[4, 28\]"):
        encode(torch.zeros(3, LAYOUT.width), digest=bytes(32), layout=LAYOUT)
    with pytest.raises(ValueError, match="rows: expected"):
        encode(torch.zeros(4, LAYOUT.width, dtype=torch.float64), digest=bytes(32), layout=LAYOUT)
    with pytest.raises(ValueError, match="out: expected"):
        value = encode(rows_for(LAYOUT, 0), digest=bytes(32), layout=LAYOUT)
        decode(value, digest=bytes(32), layout=LAYOUT, out=torch.zeros(4, LAYOUT.width, dtype=torch.float64))


# -- backoff and memory ---------------------------------------------------------------------------


def test_backoff_doubles_caps_jitters_and_admits_one_probe() -> None:
    now = [100.0]
    gate = Backoff(0.5, 4.0, probe_window=1.0, clock=lambda: now[0], jitter=lambda: 0.5)
    assert gate.admit() and gate.admit()
    delays = [gate.failed() for _ in range(6)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert not gate.admit()
    now[0] += 1.99
    assert not gate.admit()
    now[0] += 0.02
    assert gate.admit()  # the probe
    assert not gate.admit() and not gate.admit()
    now[0] += 1.0  # the probe never reported: another caller may try
    assert gate.admit()
    assert gate.succeeded() is True and gate.succeeded() is False
    assert gate.admit() and gate.admit()
    with pytest.raises(ValueError, match="initial: expected a number > 0"):
        Backoff(0, 1, probe_window=1)
    with pytest.raises(ValueError, match="maximum: expected at least initial"):
        Backoff(2, 1, probe_window=1)


def test_known_chunks_is_a_bounded_lru() -> None:
    known = KnownChunks(3)
    for d in (b"a", b"b", b"c"):
        known.stored(d)
    assert known.is_stored(b"a")
    known.bad(b"a")  # most recent now
    known.stored(b"d")  # evicts b"b"
    assert not known.is_stored(b"b") and known.is_bad(b"a") and not known.is_stored(b"a")
    assert known.is_stored(b"c") and known.is_stored(b"d")
    known.forget(b"c")
    assert not known.is_stored(b"c")
    known.clear()
    assert not known.is_stored(b"d") and not known.is_bad(b"a")
