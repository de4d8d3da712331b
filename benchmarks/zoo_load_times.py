"""Cold and warm `selfens_core.load` times of a zoo entry, measured side by side in one run.

Three ways to get the same entry, each timed after the imports are done:
- bundled: HF_HUB_OFFLINE=1 and an empty cache, so the copy in zoo/ is hashed and loaded;
- hub, cold: published on a local Hub-compatible server (olah, as in the tests) and downloaded into an empty cache;
- hub, warm: the same, served from the cache filled by the cold load.
Plus a fresh interpreter doing `import selfens_core; selfens_core.load(NAME)` offline (imports included).

    python benchmarks/zoo_load_times.py [NAME] [--rounds 3]      # needs git and olah-cli (the test extra)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="hne-mobilenetv2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import json
    import shutil

    from hub_server import HubServer, _free_port, _olah_cli

    import selfens_core
    from selfens_core.plugins import registries
    from selfens_core.registry import Registry
    from selfens_core.zoo import MANIFEST_FILE, resolve

    entry = resolve(args.name)
    size = sum(f["size"] for f in entry.files.values()) / 2**20
    tmp = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "empty-cache")}
    fresh = [float(subprocess.run(
        [sys.executable, "-c", "import time; t = time.perf_counter(); import selfens_core; "
         f"selfens_core.load({args.name!r}); print(time.perf_counter() - t)"],
        env=env, check=True, capture_output=True, text=True).stdout.split()[-1]) for _ in range(args.rounds)]

    published = tmp / "zoo" / entry.directory.name  # the entry without its files, pinned to a commit on the server
    published.mkdir(parents=True)
    server = HubServer(root=tmp / "hub", port=_free_port(), olah_cli=_olah_cli())
    server.start()
    try:
        revision = server.create_repo("bench/entry", {f: entry.directory / f for f in entry.files})
        (published / MANIFEST_FILE).write_text(json.dumps({**entry.to_manifest(), "repo_id": "bench/entry",
                                                           "revision": revision}))
        hub_sources = Registry("zoo source")
        hub_sources.add("bench", published.parent, plugin="bench")
        bundled_sources = registries().zoo_sources
        os.environ.update(HF_ENDPOINT=server.endpoint, HF_HUB_DISABLE_TELEMETRY="1")
        rows: dict[str, list[float]] = {"bundled (offline, empty cache)": [], "hub, cold (empty cache)": [],
                                        "hub, warm (cached)": []}
        for r in range(args.rounds):  # interleaved, so machine noise hits every way alike
            os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp / f"bundled-{r}"))
            registries().zoo_sources = bundled_sources
            rows["bundled (offline, empty cache)"].append(timed(lambda: selfens_core.load(args.name)))
            os.environ.update(HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp / f"cache-{r}"))
            registries().zoo_sources = hub_sources
            rows["hub, cold (empty cache)"].append(timed(lambda: selfens_core.load(entry.full_name)))
            rows["hub, warm (cached)"].append(timed(lambda: selfens_core.load(entry.full_name)))
        registries().zoo_sources = bundled_sources
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{entry.full_name}: {size:.1f} MiB in {len(entry.files)} files; median of {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs")
    rows["fresh interpreter, offline (imports included)"] = fresh
    base = statistics.median(rows["hub, warm (cached)"])
    for what, seconds in rows.items():
        median = statistics.median(seconds)
        print(f"  {what:<46} {median:6.2f} s   {median / base:5.2f}x warm")


if __name__ == "__main__":
    main()
