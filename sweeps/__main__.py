"""Several experiments as one sweep: their union plan, deduplicated by run id, run or budgeted at once.

    python -m sweeps --all --preset paper --dry-run        # each sweep's trials and GPU-hours, and their union
    python -m sweeps main_results low_data --preset smoke  # two experiments as one Ray Tune run
    python -m sweeps status --storage ./tamt-runs           # where every sweep of a storage stands
    python -m sweeps compact --storage ./tamt-runs          # merge the table's row files into parts now
    python -m sweeps prefetch --all --preset paper --cache /shared/hf   # hub models and data, for offline nodes
"""

from __future__ import annotations

import sys

from sweeps import SWEEPS, presets_of


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:  # reads the storage only: no training code is imported
        from orchestrator import status

        return status.main(argv[1:])
    if argv[:1] == ["compact"]:
        from orchestrator import compaction

        return compaction.main(argv[1:])
    prefetch = argv[:1] == ["prefetch"]
    if prefetch:
        argv = argv[1:]
    from orchestrator.cli import union

    everything = "--all" in argv
    rest = [arg for arg in argv if arg != "--all"]
    names = []
    while rest and not rest[0].startswith("-"):  # sweep names come first, then the sweep flags
        names.append(rest.pop(0))
    unknown = [name for name in names if name not in SWEEPS]
    if unknown or not (everything or names) and not {"-h", "--help"} & set(rest):
        print(f"error: name sweeps from {', '.join(SWEEPS)} before the flags, or pass --all (or: status, compact, "
              "prefetch)" + (f" (unknown: {', '.join(unknown)})" if unknown else ""), file=sys.stderr)
        return 2
    names = list(SWEEPS if everything or not names else dict.fromkeys(names))
    parts = {name: presets_of(name) for name in names}
    if prefetch:
        from orchestrator import prefetch as prefetching

        return prefetching.main(rest, union(parts), sweeps="--all" if everything else " ".join(names))
    from sweeps.common import sweep_main

    return sweep_main("all" if everything else "+".join(names), union(parts), rest, parts=parts,
                      description="several sweeps as one: " + ", ".join(names))


if __name__ == "__main__":
    raise SystemExit(main())
