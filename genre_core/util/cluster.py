"""Which process of a multi-machine run this is, from TF_CONFIG (no TensorFlow import needed).

Several machines run the same command with TF_CONFIG naming every worker (README, "Several machines"); the
chief (task "chief", or worker 0 when there is none) is the one that writes the run folder and its logs.
"""

from __future__ import annotations

import json
import os


def cluster_spec() -> dict:
    """Return TF_CONFIG as a dict ({} when unset); ValueError naming the problem when it is malformed."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc.msg})") from None
    if not isinstance(spec, dict) or "cluster" not in spec or "task" not in spec:
        raise ValueError('TF_CONFIG must hold {"cluster": {...}, "task": {"type": ..., "index": ...}}')
    return spec


def worker_count() -> int:
    """How many training processes TF_CONFIG names (1 without TF_CONFIG)."""
    spec = cluster_spec()
    if not spec:
        return 1
    cluster = spec["cluster"]
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def is_chief() -> bool:
    """True for the process that writes the run folder: task "chief", or worker 0 when there is no chief."""
    spec = cluster_spec()
    if not spec:
        return True
    task = spec["task"]
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and not spec["cluster"].get("chief")
