"""rev-b36 F2: ``ends_typed`` per chunk (rev-b36's ``rb36_bench.py``, ``rb36_bench3.py``), three versions in
one run: two ``sse.py`` paths (``git show bc11c251^:src/kvgate/openai/sse.py``, before small36, and
``git show 37567ae6:...``, small36's) and ``src``'s. Best of 5 repeats, ns per call. Not a test (rule 7).

Usage: PYTHONPATH=src python scripts/typed_end_bench_revb36.py BEFORE_SMALL36_SSE_PY SMALL36_SSE_PY"""

import importlib.util
import sys
import timeit
import types

import orjson

from kvgate.openai import sse as new


def load(path: str, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def best(f: object, n: int) -> float:
    return min(timeit.repeat(f, number=n, repeat=5)) / n * 1e9  # type: ignore[arg-type]


old, mid = load(sys.argv[1], "sse_before_small36"), load(sys.argv[2], "sse_small36")
delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0}
delta |= {"delta": " hello", "sequence_number": 5}
named = b"event: response.output_text.delta\ndata: " + orjson.dumps(delta) + b"\n\n"
pydantic = dict(sorted(delta.items()))  # (``type`` last, as vLLM's pydantic events)
donly = b"data: " + orjson.dumps(pydantic) + b"\n\n"
anth = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta"'
)
anth += b',"text":" hi"}}\n\n'
echo = {"type": "response.output_text.delta", "delta": "the response.completed event", "sequence_number": 5}
mention = b"data: " + orjson.dumps(echo) + b"\n\n"
big = b"data: " + orjson.dumps({"type": "response.output_text.delta", "delta": "x" * 60000}) + b"\n\n"
many = donly * (4000 // len(donly))
done = {"response": {"id": "r", "output": [{"type": "message", "text": "hi"}]}, "sequence_number": 9}
last = b"data: " + orjson.dumps({**done, "type": "response.completed"}) + b"\n\n"
for m in (old, mid, new):
    assert not m.ends_typed(donly) and not m.ends_typed(many) and not m.ends_typed(named)
assert mid.ends_typed(last) and new.ends_typed(last)
print(f"{'chunk':26} {'bytes':>6}  {'before small36':>14} {'small36':>8} {'src':>8}  (ns per ends_typed)")
rows = [("named delta", named, 40000), ("data-only delta", donly, 40000), ("anthropic named", anth, 40000),
        ("data-only, text names one", mention, 40000), ("data-only last (pydantic)", last, 40000),
        ("4 KB of data-only deltas", many, 10000), ("60 KB data-only", big, 400)]  # fmt: skip
for name, c, n in rows:
    t = [best(lambda m=m, c=c: m.ends_typed(c), n) for m in (old, mid, new)]
    print(f"{name:26} {len(c):6}  {t[0]:14.0f} {t[1]:8.0f} {t[2]:8.0f}")
for name, c in [("data-only", donly), ("named", named)]:
    t = [
        best(lambda e=m.EventEdge(typed=typed), c=c: e.feed(c), 40000) for m in (mid, new) for typed in (0, 1)
    ]
    print(
        f"EventEdge.feed {name:9} small36: untyped {t[0]:5.0f} typed {t[1]:5.0f};",
        f"src: untyped {t[2]:5.0f} typed {t[3]:5.0f}",
    )
