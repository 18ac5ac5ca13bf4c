"""Write a Plumber `exec` step in Python.

A step file::

    import plumber_step

    def on_start():              # optional: runs once, before the first value
        global model
        model = load_model()

    @plumber_step.step
    def handle(value):           # one value in, one value out
        return model.predict(value)

and the node that runs it (``"procs": 4`` runs four copies)::

    {"id": "score", "coroutine": "exec", "procs": 4,
     "params": {"command": ["python3", "score.py"]}}

With ``@plumber_step.step(batch=True)``, ``handle`` takes the list of values of
a batch (the node's ``batch_size``) and returns one result per value, in order.

The file runs the step when it is executed (``python3 score.py``) or with
``python3 -m plumber_step score.py``. Standard library only.

Protocol (docs/graph-format.md, "exec"): the program writes ``{"ready": true}``
(or ``{"error": "..."}``) once ``on_start`` is done, then answers each request
line ``{"id": N, "values": [...]}`` with ``{"id": N, "results": [...]}``, one
entry a value: its result, or ``{"error": "..."}`` when ``handle`` raised for
it. ``print`` goes to stderr, which the host logs; stdout carries only the
protocol.
"""

import atexit
import json
import os
import sys
import traceback

__all__ = ["step", "serve", "StepError"]
__version__ = "0.1.0"


class StepError(Exception):
    """Raised by serve() for a misconfigured step."""


_registered = None  # (handle, batch, module name)
_served = False


def step(function=None, *, batch=False):
    """Marks ``handle`` as the step: ``@step`` or ``@step(batch=True)``."""

    def register(handle):
        global _registered
        _registered = (handle, batch, handle.__module__)
        if handle.__module__ == "__main__":
            # `python3 step.py`: serve once the file has run to its end (so that
            # an on_start defined below handle is seen).
            atexit.register(_serve_at_exit)
        return handle

    if function is not None:
        return register(function)
    return register


def _serve_at_exit():
    if _served or hasattr(sys, "last_value"):  # already served, or the file raised
        return
    code = serve()
    if code:
        sys.stdout.flush()
        os._exit(code)


def _error_text(exc):
    text = str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def serve(handle=None, *, batch=None, on_start=None, stdin=None, stdout=None):
    """Runs the step until the end of stdin; returns the exit code.

    Without arguments, serves the function marked with @step and the
    ``on_start`` of its module, if any.
    """
    global _served
    _served = True
    if handle is None:
        if _registered is None:
            raise StepError("no step: mark a function with @plumber_step.step")
        handle, registered_batch, module_name = _registered
        if batch is None:
            batch = registered_batch
        if on_start is None:
            module = sys.modules.get(module_name)
            on_start = getattr(module, "on_start", None)
    batch = bool(batch)

    # The protocol owns the real stdout; print() and stray writes go to stderr.
    if stdout is None:
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", newline="\n")
        sys.stdout.flush()
        sys.stdout = sys.stderr
    if stdin is None:
        stdin = sys.stdin.buffer

    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    loads = json.loads

    def write(obj):
        try:
            line = dumps(obj)
        except (TypeError, ValueError) as exc:  # a result that is not JSON
            line = dumps({"id": obj.get("id"), "error": "result is not JSON: " + _error_text(exc)})
        stdout.write(line)
        stdout.write("\n")
        stdout.flush()

    try:
        if on_start is not None:
            on_start()
    except BaseException as exc:  # noqa: B902 - reported to the host, then exit
        traceback.print_exc(file=sys.stderr)
        write({"error": "on_start failed: " + _error_text(exc)})
        return 1
    write({"ready": True})

    for raw in stdin:
        if not raw.strip():
            continue
        request = loads(raw)
        request_id = request["id"]
        values = request["values"]
        if batch:
            try:
                results = handle(values)
                results = list(results)
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                write({"id": request_id, "error": _error_text(exc)})
                continue
            if len(results) != len(values):
                write({"id": request_id,
                       "error": "handle returned %d results for %d values" % (len(results), len(values))})
                continue
        else:
            results = []
            for value in values:
                try:
                    results.append(handle(value))
                except Exception as exc:
                    results.append({"error": _error_text(exc)})
        write({"id": request_id, "results": results})
    return 0
