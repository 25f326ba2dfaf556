"""Slices of a sweep: `--shard I/N` trains block I of N of a spec's members as its own run.

A spec is a config and a members table. Slice I holds the members `distributed.member_block(E,
I, N)` of it, each with its own seeds, learning rate, arm and task parameters (so its keys,
batches and updates are exactly those it has in the whole ensemble), and writes `shard.json`
beside its config: the slice's place (`index`, `count`, the global ids of its members `first`
.. `first + n - 1`), the spec's whole members table and its digest. `merge.py` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import re

from induction_jax.config import ConfigError, RunConfig
from induction_jax.distributed import member_block
from induction_jax.files import RunDirError, write_json_atomic
from induction_jax.members import Members

SHARD_FILE = "shard.json"
_FORM = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ConfigError):
    """A --shard that names no slice of the spec (one-line message)."""


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 0 <= I < N (0-based, as SLURM_ARRAY_TASK_ID with --array=0-(N-1))."""
    m = _FORM.match(text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ShardError(f"--shard {text}: names no slice; allowed: I/N with N >= 1 and 0 <= I < N "
                         f"(0-based: 0/4, 1/4, 2/4, 3/4 are the four slices of --shard ?/4)")
    return int(m.group(1)), int(m.group(2))


def spec_digest(cfg: RunConfig, members: Members) -> str:
    """sha256 of the spec: the whole config and the whole members table, canonical JSON."""
    text = json.dumps({"config": cfg.to_dict(), "members": members.table()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def select(members: Members, index: int, count: int) -> tuple[Members, slice]:
    """Slice `index` of `count` of the whole `members`, and which members it holds."""
    block = member_block(len(members), index, count)
    if block.stop == block.start:
        raise ShardError(f"--shard {index}/{count}: {count} slices of {len(members)} members leave slice "
                         f"{index} empty; allowed: N <= {len(members)}")
    return members.select(block), block


def record(cfg: RunConfig, members: Members, index: int, count: int) -> dict:
    """What `shard.json` holds for slice `index` of `count` of the spec (`cfg`, whole `members`)."""
    block = member_block(len(members), index, count)
    return {"kind": "induction-jax slice", "index": index, "count": count, "first": block.start,
            "n_members": block.stop - block.start, "spec_digest": spec_digest(cfg, members),
            "spec_members": members.table()}


def write(run, shard: dict) -> None:
    write_json_atomic(run.output(SHARD_FILE), shard)


def read(run) -> dict | None:
    """A slice's `shard.json`, or None for a run that is not a slice."""
    path = run.path / SHARD_FILE
    if not path.is_file():
        return None
    try:
        shard = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: unreadable ({e})") from None
    if not isinstance(shard, dict) or shard.get("kind") != "induction-jax slice":
        raise RunDirError(f"{path}: not a slice record written by induction-jax")
    return shard
