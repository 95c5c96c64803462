"""The response cache store: the key's parts, LRU eviction bounded in bytes, private
copies, the counters behind the nv_cache_* gauges, and --cache-config sizing."""

import numpy as np
import pytest

from llmserve.core.errors import InvalidArgument
from llmserve.core.types import InferenceResponse, RequestedOutput, Tensor
from llmserve.scheduling.response_cache import Inserted, ResponseCache, cache_size, request_key


def _t(name, data, datatype=None):
    data = np.asarray(data)
    return Tensor(name, datatype or {"f": "FP32", "i": "INT32", "O": "BYTES"}[data.dtype.kind], data)


def _key(model="m", version=1, inputs=None, requested=None):
    if inputs is None:
        inputs = {"A": _t("A", np.array([[1, 2]], np.float32))}
    return request_key(model, version, inputs, requested)


def test_key_covers_every_part_of_the_request():
    a = np.array([[1, 2]], np.float32)
    base = _key()
    assert _key() == base and len(base) == 16
    variants = [
        _key(model="n"), _key(version=2),
        _key(inputs={"B": _t("B", a)}),  # input name
        _key(inputs={"A": _t("A", a.view(np.int32), "INT32")}),  # datatype, same bytes
        _key(inputs={"A": _t("A", a.reshape(2, 1))}),  # shape, same bytes
        _key(inputs={"A": _t("A", a + 1)}),  # bytes
        _key(requested=[RequestedOutput("X")]),
        _key(inputs={"A": _t("A", a), "C": _t("C", np.array([[b"x"]], np.object_))}),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # inputs are hashed in name order; requested outputs in the order asked for
    two = {"A": _t("A", a), "C": _t("C", np.array([[b"x"]], np.object_))}
    assert _key(inputs=two) == _key(inputs=dict(reversed(list(two.items()))))
    assert _key(requested=[RequestedOutput("X"), RequestedOutput("Y")]) != \
        _key(requested=[RequestedOutput("Y"), RequestedOutput("X")])
    # BYTES contents, not just lengths, count
    assert _key(inputs={"C": _t("C", np.array([b"ab"], np.object_))}) != \
        _key(inputs={"C": _t("C", np.array([b"ba"], np.object_))})


def _response(n_floats, value=1.0, params=None):
    return InferenceResponse("m", 1, "", [_t("OUT", np.full((1, n_floats), value, np.float32))],
                             dict(params or {}))


def test_lru_eviction_is_bounded_in_bytes():
    one = ResponseCache(1 << 20)
    one.insert(b"k", _response(250))
    entry_bytes = one.used_bytes()
    assert 1000 < entry_bytes < 1200  # 1000 data bytes plus the layout
    cache = ResponseCache(3 * entry_bytes)
    for key in (b"a", b"b", b"c"):
        assert cache.insert(key, _response(250)) is Inserted.NEW
    assert cache.lookup(b"a") is not None  # a becomes the most recent
    assert cache.insert(b"d", _response(250)) is Inserted.NEW
    assert cache.lookup(b"b") is None  # the least recently used went
    assert all(cache.lookup(k) is not None for k in (b"a", b"c", b"d"))
    assert cache.used_bytes() == 3 * entry_bytes
    snap = cache.snapshot()
    assert snap["nv_cache_num_entries"] == 3 and snap["nv_cache_num_evictions"] == 1
    assert snap["nv_cache_num_lookups"] == 5
    assert (snap["nv_cache_num_hits"], snap["nv_cache_num_misses"]) == (4, 1)
    assert snap["nv_cache_util"] == 1.0
    assert cache.insert(b"big", _response(1000)) is Inserted.TOO_LARGE
    assert cache.lookup(b"big") is None and cache.used_bytes() == 3 * entry_bytes
    assert cache.insert(b"a", _response(250, 9.0)) is Inserted.EXISTS
    assert cache.lookup(b"a").outputs[0].data[0, 0] == 1.0


def test_entries_are_private_copies():
    cache = ResponseCache(1 << 16)
    original = _response(4, params={"nonce": "7"})
    cache.insert(b"k", original)
    original.outputs[0].data[:] = 5  # the producer reuses its buffer
    hit = cache.lookup(b"k").response("m", 1, "id-2")
    assert hit.id == "id-2" and hit.final and hit.parameters == {"nonce": "7"}
    np.testing.assert_array_equal(hit.outputs[0].data, np.ones((1, 4), np.float32))
    hit.outputs[0].data[:] = 3  # a BLS caller writes into its result
    again = cache.lookup(b"k").response("m", 1, "")
    np.testing.assert_array_equal(again.outputs[0].data, np.ones((1, 4), np.float32))


@pytest.mark.parametrize("config, expected", [
    ({}, None),
    ({"cache": "local", "size": "1048576"}, 1048576),
    ({"cache": "local", "size": "0"}, 0),
])
def test_cache_size(config, expected):
    assert cache_size(config) == expected


@pytest.mark.parametrize("config, message", [
    ({"cache": "redis", "host": "h"}, "unable to find cache 'redis'"),
    ({"cache": "local"}, "didn't contain a valid 'size' field"),
    ({"cache": "local", "size": "lots"}, "non-negative number of bytes"),
])
def test_bad_cache_config(config, message):
    with pytest.raises(InvalidArgument, match=message):
        cache_size(config)
