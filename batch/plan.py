"""Planning a job: which objects, which parts, and what a previous run already finished (resume).

State layout under the job's state location (a directory or an ``s3://`` prefix)::

    plan.json                      fingerprint of the request + the objects and their part ranges
    parts/<file>/<part>.part       staged output of a finished part (written atomically)
    parts/<file>/<part>.json       its completion record (written after the .part)
    done/<file>.json               the object's .out is complete (written after the .out)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from batch import storage
from batch.errors import InputError
from batch.request import TransformSpec
from batch.storage import ObjectInfo
from batch.transform import PartSpec

#: smallest part worth a task of its own
MIN_PART_BYTES = 256 * 1024


@dataclass
class FilePlan:
    """One input object, its output URI and its parts."""

    index: int
    info: ObjectInfo
    out_uri: str
    parts: list[PartSpec] = field(default_factory=list)


@dataclass
class JobPlan:
    """Every object of the job, in key order."""

    files: list[FilePlan]
    fingerprint: str

    @property
    def parts(self) -> list[PartSpec]:
        """All parts in file order."""
        return [part for plan in self.files for part in plan.parts]

    def to_json(self) -> bytes:
        """The plan as stored in ``plan.json``."""
        return orjson.dumps(
            {
                "fingerprint": self.fingerprint,
                "files": [
                    {
                        "uri": f.info.uri,
                        "rel": f.info.rel,
                        "size": f.info.size,
                        "version": f.info.version,
                        "out": f.out_uri,
                        "parts": [[p.start, p.end] for p in f.parts],
                    }
                    for f in self.files
                ],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> JobPlan:
        """Read a stored plan back."""
        raw = orjson.loads(data)
        files = []
        for index, entry in enumerate(raw["files"]):
            info = ObjectInfo(entry["uri"], entry["rel"], entry["size"], entry["version"])
            plan = FilePlan(index, info, entry["out"])
            for part_index, (start, end) in enumerate(entry["parts"]):
                size = (end if end is not None else info.size) - start
                plan.parts.append(PartSpec(index, part_index, info.uri, start, end, size))
            files.append(plan)
        return cls(files, raw["fingerprint"])


def read_manifest(uri: str) -> list[ObjectInfo]:
    """The objects a ManifestFile lists: ``[{"prefix": "s3://b/p/"}, "rel/key1", ...]``."""
    try:
        entries = orjson.loads(storage.read_bytes(uri))
    except orjson.JSONDecodeError as exc:
        raise InputError(f"manifest {uri} is not valid JSON: {exc}") from None
    if (
        not isinstance(entries, list)
        or not entries
        or not isinstance(entries[0], dict)
        or not isinstance(entries[0].get("prefix"), str)
    ):
        raise InputError(
            f'manifest {uri} must be a JSON array starting with {{"prefix": "s3://bucket/prefix/"}}'
        )
    prefix = entries[0]["prefix"]
    if not storage.is_uri(prefix):
        raise InputError(f"manifest {uri}: prefix {prefix!r} must be an s3:// or file:// URI")
    infos = []
    for rel in entries[1:]:
        if not isinstance(rel, str) or not rel:
            raise InputError(f"manifest {uri}: entries after the prefix must be relative keys (strings)")
        info = storage.stat(storage.join_uri(prefix, rel) if not prefix.endswith("/") else prefix + rel)
        infos.append(ObjectInfo(info.uri, rel, info.size, info.version))
    return infos


def list_inputs(spec: TransformSpec) -> list[ObjectInfo]:
    """The job's input objects (InputError when there are none)."""
    infos = (
        read_manifest(spec.input_uri)
        if spec.data_type == "ManifestFile"
        else storage.list_prefix(spec.input_uri)
    )
    if not infos:
        raise InputError(f"no input objects found at {spec.input_uri}")
    return infos


def splittable(spec: TransformSpec) -> bool:
    """True when objects may be cut into byte ranges (uncompressed, newline-delimited)."""
    return spec.split_type == "Line" and spec.compression == "None"


def make_plan(spec: TransformSpec, infos: list[ObjectInfo], *, part_bytes: int, workers: int) -> JobPlan:
    """Cut the objects into parts: ranges of about ``part_bytes``, enough to keep every worker busy."""
    total = sum(i.size for i in infos)
    target = int(part_bytes)
    if splittable(spec) and total:
        # at least ~4 parts per worker when the data allows, never tiny parts
        target = max(min(MIN_PART_BYTES, target), min(target, -(-total // (4 * workers))))
    files = []
    for index, info in enumerate(infos):
        out_uri = storage.join_uri(spec.output_path, info.rel + ".out")
        plan = FilePlan(index, info, out_uri)
        if splittable(spec) and info.size > target:
            starts = list(range(0, info.size, target))
            for part_index, start in enumerate(starts):
                end = start + target if part_index < len(starts) - 1 else None
                size = (end if end is not None else info.size) - start
                plan.parts.append(PartSpec(index, part_index, info.uri, start, end, size))
        else:
            plan.parts.append(PartSpec(index, 0, info.uri, 0, None, info.size))
        files.append(plan)
    fingerprint = hashlib.sha256(
        orjson.dumps(
            {"spec": spec.fingerprint(), "inputs": [[i.uri, i.rel, i.size, i.version] for i in infos]},
            option=orjson.OPT_SORT_KEYS,
        )
    ).hexdigest()
    return JobPlan(files, fingerprint)


def plan_uri(state: str) -> str:
    """Where the plan is stored."""
    return storage.join_uri(state, "plan.json")


def done_uri(state: str, file_index: int) -> str:
    """The completion marker of an object's ``.out``."""
    return storage.join_uri(state, f"done/{file_index:06d}.json")


def load_progress(state: str) -> tuple[dict[int, dict[str, Any]], dict[tuple[int, int], dict[str, Any]]]:
    """``({finished object: counts}, {(file, part): counts})`` recorded under ``state``."""
    done: dict[int, dict[str, Any]] = {}
    parts: dict[tuple[int, int], dict[str, Any]] = {}
    names = set(storage.list_names(state))
    for name in names:
        if name.startswith("done/") and name.endswith(".json"):
            done[int(name[5:-5])] = orjson.loads(storage.read_bytes(storage.join_uri(state, name)))
        elif name.startswith("parts/") and name.endswith(".json"):
            _, file_part, part_name = name.split("/")
            key = (int(file_part), int(part_name[:-5]))
            if f"parts/{file_part}/{part_name[:-5]}.part" in names:
                parts[key] = orjson.loads(storage.read_bytes(storage.join_uri(state, name)))
    return done, parts
