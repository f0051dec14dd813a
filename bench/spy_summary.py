"""Self and inclusive time per function from a py-spy raw (collapsed stacks) recording.

    .venv/bin/py-spy record -r 200 -f raw -o /tmp/spy.txt -- \\
        .venv/bin/python -m bench.pipeline --vms 1000 --no-ceilings --no-report
    .venv/bin/python -m bench.spy_summary /tmp/spy.txt > docs/performance/pipeline-py-spy.txt

py-spy samples from outside the process, so unlike pyinstrument it barely slows the run and
hides no library frames (asyncpg's, aiormq's and asyncio's own time shows up by name).
"""

from __future__ import annotations

import collections
import re
import sys

_LINE = re.compile(r":\d+\)$")


def summarise(lines, top: int = 40) -> str:
    own: collections.Counter[str] = collections.Counter()
    within: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")]  # by function, not by line
        own[frames[-1]] += n
        for frame in set(frames):  # a recursive frame counts once per sample
            within[frame] += n
    out = [f"{total} samples", "", "self time (the function itself):"]
    out += [f"{100 * n / total:5.1f} %  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive time (the function and what it called):"]
    out += [f"{100 * n / total:5.1f} %  {f}" for f, n in within.most_common(top)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        sys.stdout.write(summarise(handle))
