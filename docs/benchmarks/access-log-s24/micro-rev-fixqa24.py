import asyncio, logging, timeit, time
from kvgate.gateway import access
fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
F = "%s %s %s %d model=%s endpoint=%s attempts=%d ms=%.1f bytes=%d"
args = ("6e1f758a-1", "POST", "/v1/completions", 200, "m", "127.0.0.1:18001", 1, 2.2, 215)
lg = logging.getLogger("x"); lg.propagate = False; lg.setLevel(logging.INFO)
h = logging.FileHandler("/tmp/fixqa24b/m-a.log"); h.setFormatter(fmt); lg.addHandler(h)
N = 50000
print("logging.info to a FileHandler (f29693d1's line)   %.2f us/line" % (min(timeit.repeat(lambda: lg.info(F, *args), number=N, repeat=3)) / N * 1e6))
async def main():
    lines = access.Lines(open("/tmp/fixqa24b/m-b.log", "a", buffering=1 << 17), own=True)
    def one():
        lines.add(access._FORMAT % ((lines.stamp(),) + args))
    print("access.Lines: stamp + %%-format + add (this)      %.2f us/line" % (min(timeit.repeat(one, number=N, repeat=3)) / N * 1e6))
    lines.close()
asyncio.run(main())
