"""``StreamRelay.feed`` (and its ``_rewrite``) on one 178-byte stream chunk, for an ASCII and a non-ASCII
model name: this tree's ``gateway/stream.py`` and a base tree's, loaded side by side in one process and
alternated run by run (min of 201 runs of 20k feeds; the rest of kvgate from PYTHONPATH). Review s21-gw
L3: a non-ASCII name paid six ``bytes.replace`` a chunk.

    PYTHONPATH=src python scripts/relay_spellings_cost.py BASE_SRC   (e.g. /work/main/src)
"""

from __future__ import annotations

import importlib.util
import sys
import timeit
from pathlib import Path
from types import ModuleType


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stdout if sys.argv[1:2] in (["-h"], ["--help"]) else sys.stderr)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    here = Path(__file__).resolve().parent.parent / "src/kvgate/gateway/stream.py"
    mods = {
        "base": load("stream_base", Path(sys.argv[1]) / "kvgate/gateway/stream.py"),
        "this": load("stream_this", here),
    }
    for model in ("meta-llama/Llama-3.1-8B-Instruct", "mod\u00e8le-8b"):
        chunk = (
            b'data: {"id":"cmpl-1","object":"chat.completion.chunk","created":1,"model":"%b",'
            b'"choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}\n\n'
        ) % model.encode()
        for what in ("feed", "_rewrite"):
            relays = {n: m.StreamRelay(model, "alias", strip_usage=False) for n, m in mods.items()}
            best: dict[str, float] = {}
            for _ in range(201):
                for n, relay in relays.items():
                    f = getattr(relay, what)
                    t = (
                        timeit.timeit("f(chunk)", globals={"f": f, "chunk": chunk}, number=20_000)
                        / 20_000
                        * 1e6
                    )
                    best[n] = min(best.get(n, 1e9), t)
            print(f"{model[:12]:12s} {what:8s} " + "  ".join(f"{n} {t:.3f}" for n, t in best.items()) + " us")


if __name__ == "__main__":
    main()
