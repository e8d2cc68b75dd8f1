# ruff: noqa: E741, SIM115, B007  (a frozen one-off analysis script, kept as run)
import collections
import re
import sys

samples = open(sys.argv[1]).read().split("\n\n")
own = collections.Counter()
kern = collections.Counter()
via = collections.defaultdict(collections.Counter)
tot = 0
for s in samples:
    lines = [l.strip() for l in s.strip().split("\n") if l.strip()]
    if not lines:
        continue
    tot += 1
    frames = []
    for l in lines:
        m = re.match(r"\S+ (.*) \((.*)\)$", l)
        if m:
            frames.append((m.group(1), m.group(2)))
    leaf_kernel = frames and "kernel" in frames[0][1]
    owner = None
    leafc = None
    for i, (sym, dso) in enumerate(frames):
        if sym.startswith("CPyDef_") or sym.startswith("CPyDunder"):
            owner = sym
            break
        if "kernel" not in dso and leafc is None:
            leafc = sym
        if sym.startswith("__pyx_f_6uvloop") and owner is None:
            owner = "uvloop:" + sym.replace("__pyx_f_6uvloop_4loop_", "")
            break
        if sym == "_PyEval_EvalFrameDefault":
            owner = "interp"
            break
        if sym == "task_step_impl":
            owner = "asyncio task"
            break
    owner = owner or (frames[-1][0] if frames else "?")
    own[owner] += 1
    if leaf_kernel:
        kern[owner] += 1
    via[owner][leafc] += 1
print("samples", tot)
for k, n in own.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 45):
    top = ", ".join(f"{a}:{b}" for a, b in via[k].most_common(4))
    print(f"{100 * n / tot:5.1f}% (kernel {100 * kern[k] / tot:4.1f}%) {k[:75]}  | {top[:160]}")
