"""Editing a checkpoint file's requests and outcome record as plain Python values, for
tests that forge checkpoints (a format 2 file stores them as base64 columns:
``capsched.checkpoint.REQUEST_COLUMNS``). Re-sign the document after editing."""

from __future__ import annotations

import base64
from typing import Any, Callable

import numpy as np

from capsched.checkpoint import REQUEST_COLUMNS


def _array(obj: dict[str, str]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(obj["base64"]), dtype=np.dtype(obj["dtype"]))


def _column(values: Any, dtype: str) -> dict[str, str]:
    return {"base64": base64.b64encode(np.asarray(values, dtype=np.dtype(dtype)).tobytes()).decode(), "dtype": dtype}


def request_rows(core: dict[str, Any]) -> list[dict[str, Any]]:
    """The requests of a format 2 core state (as in the file) as one dict per request,
    with the format 1 keys (``waits_on`` a list of ids, ``batchable`` a bool)."""
    cols = {name: _array(obj).tolist() for name, obj in core["requests"]["columns"].items()}
    rows, at = [], 0
    for i in range(core["requests"]["count"]):
        row = {name: cols[name][i] for name in REQUEST_COLUMNS if name not in ("waits_on", "waits_on_count")}
        n = cols["waits_on_count"][i]
        row["waits_on"], at = cols["waits_on"][at : at + n], at + n
        row["batchable"] = bool(row["batchable"])
        rows.append(row)
    return rows


def set_request_rows(core: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The inverse of :func:`request_rows`: the columns written from ``rows``."""
    columns = {}
    for name, dtype in REQUEST_COLUMNS.items():
        if name == "waits_on":
            values = [d for r in rows for d in r["waits_on"]]
        elif name == "waits_on_count":
            values = [len(r["waits_on"]) for r in rows]
        else:
            values = [r[name] for r in rows]
        columns[name] = _column(values, dtype)
    core["requests"] = {"count": len(rows), "columns": columns}


def edit_rows(core: dict[str, Any], edit: Callable[[list[dict[str, Any]]], None]) -> None:
    """Apply ``edit`` to the requests as rows and write them back."""
    rows = request_rows(core)
    edit(rows)
    set_request_rows(core, rows)


def outcomes(core: dict[str, Any]) -> list[int]:
    return [int(v) for v in _array(core["outcomes"])]


def set_outcomes(core: dict[str, Any], values: list[int]) -> None:
    core["outcomes"] = _column(values, "<u8")
