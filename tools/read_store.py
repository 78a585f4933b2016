#!/usr/bin/env python3
"""Read a burn-influence store with pyarrow alone and print a JSON summary of it.

    python3 tools/read_store.py runs/tiny-gpt/store

Checks every file's SHA-256 and row count against manifest.json, decodes every sketch column
(f32, f16, bf16 stored as uint16 bit patterns, or i8 codes times their row's scale) and every factor file. The summary (rows, sums,
the first row's sketches, factor shapes) is what the Rust test `pyarrow_reads_the_store` compares
with the Rust reader.
"""
import hashlib
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc


def read_verified(store, entry):
    data = open(f"{store}/{entry['file']}", "rb").read()
    assert len(data) == entry["bytes"], f"{entry['file']}: size"
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{entry['file']}: checksum"
    return data


def sketch_values(table, name, dtype):
    """The sketches of layer `name` as a float32 array of shape (rows, k_g * k_a)."""
    column = table.column(f"sketch.{name}")
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if dtype == "bf16":  # uint16 bit patterns: the high half of a float32
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    values = flat.astype(np.float32).reshape(len(column), -1)
    if dtype == "i8":  # codes times the row's scale (store version 3)
        scale = table.column(f"scale.{name}").to_numpy().astype(np.float32)
        values = values * scale[:, None]
    return values


def main(store):
    m = json.load(open(f"{store}/manifest.json"))
    assert m["store_version"] in (1, 2, 3), m["store_version"]
    layers = [l["name"] for l in m["run"]["layers"]]
    out = {"rows": 0, "shards": 0, "doc_id_sum": 0, "step_sum": 0, "sources": {},
           "layer_sums": {name: 0.0 for name in layers}, "first_row": None, "factors": []}
    # Per (window, layer): sum of squares and rows, to check the stored second moments.
    squares = {}
    for s in m["shards"]:
        table = ipc.open_file(pa.BufferReader(read_verified(store, s))).read_all()
        assert table.num_rows == s["rows"], f"{s['file']}: rows"
        steps = table.column("step").to_numpy()
        assert steps.min() >= s["first_step"] and steps.max() <= s["last_step"]
        out["rows"] += table.num_rows
        out["shards"] += 1
        out["doc_id_sum"] += int(table.column("doc_id").to_numpy().sum())
        out["step_sum"] += int(steps.sum())
        for src in table.column("source").to_pylist():
            out["sources"][src] = out["sources"].get(src, 0) + 1
        for name in layers:
            values = sketch_values(table, name, m["dtype"])
            out["layer_sums"][name] += float(values.astype(np.float64).sum())
            sq, n = squares.get((s["window"], name), (0.0, 0))
            squares[(s["window"], name)] = (sq + (values.astype(np.float64) ** 2).sum(axis=0),
                                            n + len(values))
            if out["first_row"] is None or name not in out["first_row"]["sketches"]:
                if out["first_row"] is None:
                    out["first_row"] = {"doc_id": int(table.column("doc_id")[0].as_py()),
                                        "step": int(steps[0]), "sketches": {}}
                out["first_row"]["sketches"][name] = values[0].tolist()
    for w in m["windows"]:
        table = ipc.open_file(pa.BufferReader(read_verified(store, w["factors"]))).read_all()
        meta = json.loads(table.schema.metadata[b"burn_influence.window"])
        assert meta["window"] == w["window"]
        # Version 2: an eigenbasis window's second moment is the mean square of its rows
        # (f16 storage rounds the rows: 1e-2 relative).
        bases = 0
        if "basis_second_moment" in table.column_names:
            for name, moment in zip(table.column("layer").to_pylist(),
                                    table.column("basis_second_moment").to_pylist()):
                if moment is None or (w["window"], name) not in squares:
                    continue
                sq, n = squares[(w["window"], name)]
                mine = sq / n
                err = np.abs(mine - np.array(moment)).max() / max(np.abs(moment).max(), 1e-30)
                assert err < 1e-2, f"window {w['window']} {name}: second moment off by {err}"
                bases += 1
        out["factors"].append({
            "bases_checked": bases,
            "window": w["window"],
            "layers": table.column("layer").to_pylist(),
            "a_sum": float(sum(np.sum(a) for a in table.column("a").to_pylist())),
        })
        if w["checkpoint"] is not None:
            read_verified(store, w["checkpoint"])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
