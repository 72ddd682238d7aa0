"""The server's Python-side helper: everything dpms does *inside* the interpreter.

Embedded in the dpms binary (``include_str!``) and run once at start. It imports plugin modules
from source (never through the standard loader, so no stale ``.pyc`` can be used), introspects
them with :mod:`inspect` and describes them as JSON that maps onto Rust types, runs coroutines
on an asyncio loop, and routes ``print`` output into the server log. Everything else (HTTP,
routing, arguments, JSON) is Rust.
"""

import asyncio
import datetime
import difflib
import enum
import gc
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
import threading
import traceback
import types
import typing
import uuid

# Plugins run in this interpreter and may replace anything they can reach (``json.dumps``,
# ``builtins.compile``, ``open``, ``inspect.signature``…); a patch must not break reloading
# (SPEC §9). So what this helper uses is bound now, before any plugin runs: the builtins as
# globals of its own, the modules as copies of their namespaces as they are at this point.
from builtins import (  # noqa: E402,F401 - rebinding the builtins is the point
    BaseException,
    Exception,
    OSError,
    SyntaxError,
    TimeoutError,
    TypeError,
    ValueError,
    all,
    bytes,
    callable,
    compile,
    dict,
    eval,
    exec,
    getattr,
    globals,
    id,
    isinstance,
    len,
    list,
    next,
    open,
    repr,
    set,
    setattr,
    sorted,
    str,
    tuple,
    type,
    vars,
)


def _frozen(module):
    """``module``'s attributes as they are now: replacing one in the module later does not
    change the copy."""
    return types.SimpleNamespace(**vars(module))


difflib, inspect, json, traceback, types = map(_frozen, (difflib, inspect, json, traceback, types))
_get_origin, _get_args, _Literal, _Union = typing.get_origin, typing.get_args, typing.Literal, typing.Union
_UnionType = types.UnionType
_UUID, _Date, _DateTime, _Enum = uuid.UUID, datetime.date, datetime.datetime, enum.Enum
_machinery = _frozen(importlib.machinery)
_getframe = sys._getframe
_stdlib_module_names = sys.stdlib_module_names
#: The helper's JSON encoder (``json.dumps``'s defaults; objects JSON cannot hold as their repr).
_to_json = json.JSONEncoder(default=repr).encode
_os_path = _frozen(os.path)
_open = open
_gc_collect = gc.collect
_gc_freeze = gc.freeze
#: Whether the objects of the first load were moved out of the collector's sight.
_frozen_start = False

#: Rust callbacks (``log(stream, line)``), set by :func:`setup`.
_native = None
#: Plugin file stem -> path, as found by the server's own folder scan.
_plugin_files = {}
#: stem -> source bytes, when the server sends them (a tenant's sandbox; see set_files).
_plugin_sources = {}
#: Stems of modules this helper loaded (only those may be replaced).
_ours = set()
#: Modules being executed right now (innermost last), to record who imports whom.
_loading = []
#: Stem -> stems of plugin modules it imported while executing.
_imported = {}
#: Modules loaded during the current batch (so each file is one module object).
_batch = None
_loop = None
#: The captured ``stdout`` and ``stderr`` (plugins may rebind ``sys.stdout``).
_streams = ()
#: Call id -> its coroutine's task, while it runs (on ``_loop`` or a loop given up).
_tasks = {}

_OWN_GLOBALS = globals()

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional_only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional_or_keyword",
    inspect.Parameter.VAR_POSITIONAL: "var_positional",
    inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}


def install_packages(packages):
    """Registers the bundled packages (``dpms``, ``vyperlogix``…) from their sources.

    ``packages`` is a list of ``(name, is_package, filename, source)`` in execution order.
    """
    for name, is_package, filename, _ in packages:
        module = types.ModuleType(name)
        module.__file__ = filename
        module.__spec__ = _machinery.ModuleSpec(name, None, origin=filename, is_package=is_package)
        if is_package:
            module.__path__ = []
        sys.modules[name] = module
    for name, _, filename, source in packages:
        module = sys.modules[name]
        exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def _caller_module():
    """The module whose code is writing to a captured stream (the first frame outside this
    helper), so output from threads a plugin started, and from imports, names its module."""
    frame = _getframe(2)  # the caller of write() or flush()
    while frame is not None and frame.f_globals is _OWN_GLOBALS:
        frame = frame.f_back
    if frame is None:
        return "-"
    return frame.f_globals.get("__name__") or "-"


class _LogStream:
    """A text stream that sends each complete line to the server log."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, name):
        self.name = name
        self._local = threading.local()

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        before = getattr(self._local, "pending", "")
        pending = before + text
        *lines, rest = pending.split("\n")
        self._local.pending = rest
        if lines:
            module = _caller_module()
            for line in lines:
                _native.log(self.name, line, module)
        if rest and (lines or not before):
            # A line begun and not ended: the server calls drain() when the call that wrote
            # it ends, so it is logged with that call and not with whatever prints next.
            self._local.module = _caller_module()
            _native.partial()
        return len(text)

    def drain(self):
        """Logs this thread's unfinished line, if any, as the module that began it."""
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            _native.log(self.name, pending, getattr(self._local, "module", "-"))

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            _native.log(self.name, pending, _caller_module())

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def fileno(self):
        raise OSError("dpms captures this stream into its log; it has no file descriptor")


class _PluginFinder(importlib.abc.MetaPathFinder):
    """Finds sibling plugin modules and the packages of the plugin folders by the server's own
    scan (the standard ``FileFinder`` caches directory listings and would miss new files) and
    loads them from source. Nothing in a plugin folder is imported any other way (see
    :class:`_NothingHere`), so a helper deleted and re-created is always the new file."""

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        filename = _plugin_files.get(top)
        if filename is None:
            return None
        if _loading:
            _imported.setdefault(_loading[-1], set()).add(top)
        package_dir = _package_dir(filename)
        if fullname == top:
            if package_dir is None:
                if path is not None:
                    return None
                return _spec(fullname, filename, None)
            return _spec(fullname, filename, package_dir)
        if package_dir is None:
            return None
        base = _os_path.join(package_dir, *fullname.split(".")[1:])
        init = _os_path.join(base, "__init__.py")
        if _os_path.isfile(init):
            return _spec(fullname, init, base)
        if _os_path.isfile(base + ".py"):
            return _spec(fullname, base + ".py", None)
        return None


class _NothingHere:
    """The path-entry finder of a plugin folder: finds nothing, so that nothing in a plugin
    folder is imported behind dpms's back (a helper created after the last scan, a package's
    stale ``.pyc``)."""

    def find_spec(self, fullname, target=None):
        return None

    def invalidate_caches(self):
        pass


def _package_dir(filename):
    """The package folder when ``filename`` is a package's ``__init__.py``."""
    if _os_path.basename(filename) == "__init__.py":
        return _os_path.dirname(filename)
    return None


def _spec(fullname, filename, package_dir):
    spec = _machinery.ModuleSpec(
        fullname, _PluginLoader(filename), origin=filename, is_package=package_dir is not None
    )
    if package_dir is not None:
        spec.submodule_search_locations = [package_dir]
    spec.has_location = True  # so the import system sets ``__file__`` from ``origin``
    return spec


class _PluginLoader(importlib.abc.Loader):
    def __init__(self, filename):
        self.filename = filename

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source = _plugin_sources.get(module.__name__)
        if source is None:
            with _open(self.filename, "rb") as f:
                source = f.read()
        module.__file__ = self.filename
        _execute(module, source)
        if _batch is not None:
            _batch[module.__name__] = module


def setup(native, plugin_dirs, extra_paths, extra_env=()):
    """Runs once before the first plugin import.

    ``extra_env``: ``.env`` entries that are not dpms settings; plugins read them from
    ``os.environ`` as under the original framework (the process environment wins)."""
    global _native, _loop, _streams
    _native = native
    for key, value in extra_env:
        os.environ.setdefault(key, value)
    _streams = (_LogStream("stdout"), _LogStream("stderr"))
    sys.stdout, sys.stderr = _streams
    for folder in list(plugin_dirs) + list(extra_paths):
        if folder not in sys.path:
            sys.path.append(folder)
    # The plugin folders are on ``sys.path`` (SPEC §1), but the standard ``FileFinder`` never
    # looks in them: the finder below serves what dpms's scan found there, nothing else.
    for folder in plugin_dirs:
        sys.path_importer_cache[folder] = _NothingHere()
    sys.meta_path.insert(0, _PluginFinder())
    _start_loop()


def _start_loop():
    global _loop
    _loop = asyncio.new_event_loop()
    threading.Thread(target=_serve_loop, args=(_loop,), name="dpms-asyncio", daemon=True).start()


def _serve_loop(loop):
    """The event loop's thread. A plugin that stops the loop ends one ``run_forever`` only:
    it runs again, until :func:`replace_loop` gave this loop up and it wound down."""
    _native.loop_thread()
    asyncio.set_event_loop(loop)
    while True:
        try:
            loop.run_forever()
        except BaseException:  # noqa: BLE001 - a CallTimeout that landed between callbacks
            pass
        if _loop is not loop and loop._dpms_wound_down:
            break
    loop.close()
    _native.loop_exited()


def replace_loop():
    """The watchdog's last resort when the loop has run nothing for a while past a deadline
    (a coroutine that never awaits and swallowed its ``CallTimeout``, or one blocked in
    ``time.sleep``): new coroutines go to a new loop on a new thread; the old loop ends once it
    gets back and the coroutines it holds are done."""
    old = _loop
    old._dpms_wound_down = False
    _start_loop()
    old.call_soon_threadsafe(_wind_down, old)


def _wind_down(loop):
    if any(task.get_loop() is loop and not task.done() for task in list(_tasks.values())):
        loop.call_later(0.1, _wind_down, loop)
    else:
        loop._dpms_wound_down = True
        loop.stop()


def drain_output():
    """Logs what this thread printed without a final newline (called at the end of a job)."""
    for stream in _streams:
        stream.drain()


class ImportTimeout(TimeoutError):
    """Raised by the server's watchdog inside an import running past ``DPMS_LOAD_SECS``."""

    def __str__(self):
        return "the import did not finish within DPMS_LOAD_SECS"


class CallTimeout(TimeoutError):
    """Raised by the server's watchdog inside a call running past ``MAX_FUNCTION_SECS``."""

    def __str__(self):
        return "the call ran past MAX_FUNCTION_SECS"


def _execute(module, source):
    """Compiles ``source`` and runs it as ``module``, recording the plugin modules it imports.
    The watchdog times the execution (``DPMS_LOAD_SECS``) and fingerprints the source for the
    crash quarantine."""
    name = module.__name__
    _imported[name] = set()
    _loading.append(name)
    _native.import_started(name, source if isinstance(source, bytes) else source.encode())
    try:
        code = compile(source, module.__file__, "exec", dont_inherit=True)
        exec(code, module.__dict__)
    finally:
        _native.import_finished()
        _loading.pop()
    module.__dpms_source__ = source
    _ours.add(name)


def exception_line(exc):
    """``"ValueError: boom"``; for a syntax error also the line number."""
    if isinstance(exc, SyntaxError):
        where = f" (line {exc.lineno})" if exc.lineno else ""
        return f"{type(exc).__name__}: {exc.msg}{where}"
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def exception_text(exc):
    """The full traceback, for the log (without source lines if those cannot be read: a plugin
    may have replaced ``os.stat``, which :mod:`linecache` uses)."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # noqa: BLE001
        lines = ["Traceback (most recent call last):\n"]
        tb = exc.__traceback__
        while tb is not None and len(lines) < 1000:
            code = tb.tb_frame.f_code
            lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n')
            tb = tb.tb_next
        return "".join(lines) + exception_line(exc) + "\n"


def set_files(files):
    """Replaces the stem -> path map the finder uses. A value may be ``(path, source)``: in a
    tenant's sandbox, which cannot read the plugin folders, the server sends the bytes."""
    _plugin_files.clear()
    _plugin_sources.clear()
    for stem, entry in files.items():
        if isinstance(entry, tuple):
            _plugin_files[stem], _plugin_sources[stem] = entry
        else:
            _plugin_files[stem] = entry


def forget(name):
    """Drops a module whose file is gone, or a package (with its submodules) that changed."""
    prefix = name + "."
    for mod in [m for m in _ours if m == name or m.startswith(prefix)]:
        sys.modules.pop(mod, None)
        _ours.discard(mod)
        _imported.pop(mod, None)


def load_batch(requests):
    """Imports each ``(name, path, source)`` afresh and describes it.

    Every module of the batch is taken out of ``sys.modules`` first, so a module imported by
    another one of the batch is loaded once, from its new source, and both see the same object.
    A module that fails keeps its previous version in ``sys.modules``.
    Returns a list of ``(description_json, functions, module_or_None, converters)``.
    """
    global _batch
    previous = {}
    for name, _, _ in requests:
        if name in _ours and name in sys.modules:
            previous[name] = sys.modules.pop(name)
    if previous:
        # A module and its functions form a cycle (``f.__globals__`` is the module's dict), so
        # the versions earlier reloads replaced wait for the cyclic GC, which may not run for a
        # long while: a module with a large global then costs one copy per save. The version
        # replaced now is still in use by the route table until the new one is published; it
        # is collected at the next reload. The collection looks only at what was made since
        # the first load (see below), so it costs little however many modules there are.
        _gc_collect()
    _batch = {}
    results = []
    try:
        for name, path, source in requests:
            if name in _plugin_sources:
                _plugin_sources[name] = source
            results.append(_load_one(name, path, source, previous))
    finally:
        _batch = None
    global _frozen_start
    if not _frozen_start:
        # The interpreter, dpms and the first version of every plugin live for good (a
        # first version replaced later stays: one copy at most); freezing them keeps every
        # later collection, ours and Python's own, from walking them again.
        _frozen_start = True
        _gc_freeze()
    return results


def _refusal(name):
    if name in _stdlib_module_names:
        return f"`{name}` is the name of a standard-library module; rename the file"
    first = name.split(".", 1)[0]
    if first != name and first in _stdlib_module_names:
        # `http.client.py` would be found as the submodule `http.client` and break `urllib`.
        return f"`{name}` begins with `{first}.`, a standard-library package; rename the file"
    if name in sys.modules and name not in _ours:
        return f"`{name}` is the name of a module already imported (e.g. by dpms itself); rename the file"
    if name.startswith("__"):
        return f"`{name}` begins with `__`"
    return None


def _load_one(name, path, source, previous):
    refusal = _refusal(name)
    if refusal is not None:
        return _to_json({"kind": "refused", "error": refusal}), [], None, []
    module = _batch.get(name)
    if module is not None and module.__dpms_source__ == source:
        return _describe(module)
    module = types.ModuleType(name)
    module.__file__ = path
    module.__spec__ = _machinery.ModuleSpec(name, None, origin=path)
    sys.modules[name] = module
    try:
        _execute(module, source)
    except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, SystemExit included
        if name in previous:
            sys.modules[name] = previous[name]
        else:
            sys.modules.pop(name, None)
        error = {"kind": "import_error", "error": exception_line(exc), "traceback": exception_text(exc)}
        return _to_json(error), [], None, []
    _batch[name] = module
    return _describe(module)


def _first_doc_line(obj):
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _wrapped_objects(obj, limit=32):
    """``obj`` and what it wraps, nearest first: ``__wrapped__`` (``functools.wraps``,
    ``lru_cache``), ``__func__``, ``functools.partial.func`` and the callables a closure holds
    (a helper's decorator without ``functools.wraps``). Bounded, and safe against objects
    whose attribute access raises."""
    seen, queue, out = set(), [obj], []
    while queue and len(out) < limit:
        item = queue.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        out.append(item)
        for attr in ("__wrapped__", "__func__", "func"):
            try:
                inner = getattr(item, attr, None)
            except Exception:  # noqa: BLE001 - a hostile __getattr__
                inner = None
            if inner is not None and callable(inner):
                queue.append(inner)
        try:
            cells = getattr(item, "__closure__", None) or ()
        except Exception:  # noqa: BLE001
            cells = ()
        for cell in cells:
            try:
                inner = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if callable(inner) and not inspect.isclass(inner):
                queue.append(inner)
    return out


def _decorated_here(module):
    """The objects ``expose.endpoint`` decorated while ``module`` was executing, at module
    level (not inside a class or a function), in order."""
    registry = module.__dict__.get("__dpms_endpoints__")
    if not isinstance(registry, list):
        return []
    found = []
    for func in registry:
        if inspect.isclass(func):
            continue
        qualname = getattr(func, "__qualname__", "")
        if isinstance(qualname, str) and "." in qualname and "<locals>" not in qualname:
            continue  # a class's method: never routable (SPEC §1); a wrapper's closure is
        if all(f is not func for f in found):
            found.append(func)
    return found


def _describe(module):
    """Everything the server needs from a module, as JSON plus the endpoint functions."""
    name = module.__name__
    public, endpoints, functions, errors = [], [], [], []
    #: Function name -> the line its definition (its first decorator) starts on, for
    #: `dpms check` to say where a problem is.
    lines = {}
    #: Python callables that turn a string the server checked into an annotation's object
    #: (``uuid.UUID``, an Enum member…); a parameter's type names one by index.
    converters = []
    deps = set(_imported.get(name, ()))
    decorated = _decorated_here(module)
    wanted = {id(f) for f in decorated}
    #: id(decorated function) -> (attribute name, the object that attribute holds)
    reached = {}
    legacy = []
    for attr, obj in list(vars(module).items()):
        if isinstance(obj, types.ModuleType):
            top = obj.__name__.partition(".")[0] if isinstance(obj.__name__, str) else None
            if top in _plugin_files and top != name:
                deps.add(top)
            continue
        try:
            owner = getattr(obj, "__module__", None)
        except Exception:  # noqa: BLE001 - a hostile __getattr__
            continue
        if isinstance(owner, str) and owner.partition(".")[0] in _plugin_files:
            if owner.partition(".")[0] != name:
                deps.add(owner.partition(".")[0])
        if attr.startswith("__") or inspect.isclass(obj):
            if not attr.startswith("__") and owner == name:
                public.append(attr)
            continue
        hit = None
        if wanted and callable(obj):
            hit = next((inner for inner in _wrapped_objects(obj) if id(inner) in wanted), None)
        if hit is not None:
            reached.setdefault(id(hit), (attr, obj))
            public.append(attr)
            continue
        if owner != name or not inspect.isfunction(obj):
            continue
        public.append(attr)
        marker = getattr(obj, "__dpms_endpoint__", None)
        if isinstance(marker, dict) and "module" not in marker:
            legacy.append((attr, obj, obj))  # decorated by an expose that does not record
    targets = []
    for func in decorated:
        if id(func) in reached:
            attr, obj = reached[id(func)]
            targets.append((attr, obj, func))
            continue
        func_name = getattr(func, "__name__", "?")
        if isinstance(func_name, str) and not func_name.startswith("__"):
            _note_line(lines, func_name, func)
            errors.append(
                f"{func_name}: decorated with expose.endpoint, but no module-level name holds it "
                "(a decorator above it returned an object that does not keep it)"
            )
    seen = set()
    for attr, obj, func in targets + legacy:
        func_name = getattr(func, "__name__", attr)
        qualname = getattr(func, "__qualname__", "")
        if isinstance(qualname, str) and "<locals>" in qualname:
            # Made by a factory (a wrapper without functools.wraps is named ``inner``): the
            # module-level name is the one its author wrote.
            func_name = attr
        if not isinstance(func_name, str) or func_name.startswith("__") or id(obj) in seen:
            continue
        marker = getattr(func, "__dpms_endpoint__", None)
        if not isinstance(marker, dict):
            continue
        seen.add(id(obj))
        _note_line(lines, func_name, func)
        described = _describe_endpoint(obj, func, func_name, marker, converters)
        if "error" in described:
            errors.append(f"{func_name}: {described['error']}")
            continue
        described["index"] = len(functions)
        endpoints.append(described)
        functions.append(obj)
    alias = getattr(module, "__alias__", None)
    if alias is not None and not isinstance(alias, str):
        errors.append(f"__alias__ must be a string, not {type(alias).__name__}")
        alias = None
    owner_id = getattr(module, "__ID__", None)
    if owner_id is not None and not isinstance(owner_id, str):
        errors.append(f"__ID__ must be a string, not {type(owner_id).__name__}")
        owner_id = None
    description = {
        "kind": "ok",
        "alias": alias or None,
        "owner": owner_id,
        "public": public,
        "endpoints": endpoints,
        "errors": errors,
        "deps": sorted(deps),
        "lines": lines,
    }
    return _to_json(description), functions, module, converters


#: Keywords the decorator names itself; a near miss of one is an author's typo (SPEC §1).
_DECORATOR_KEYWORDS = ("method", "API")


def _misspelt_keyword(key):
    """The decorator keyword ``key`` looks like a misspelling of, or ``None``."""
    if not isinstance(key, str):
        return None
    lowered = key.lower()
    for wanted in _DECORATOR_KEYWORDS:
        if key == wanted:
            return None
        if lowered == wanted.lower() or lowered.rstrip("s") == wanted.lower():
            return wanted
        close = difflib.get_close_matches(lowered, [wanted.lower()], n=1, cutoff=0.8)
        if close:
            return wanted
    return None


def _describe_endpoint(target, func, func_name, marker, converters):
    """``target`` is what the server calls (the module attribute, perhaps a wrapper); ``func``
    is the function the decorator saw (its name and docstring are the endpoint's)."""
    meta = marker.get("meta") or {}
    if not isinstance(meta, dict):
        meta = {}
    for key in meta:
        wanted = _misspelt_keyword(key)
        if wanted is not None:
            return {"error": f"unknown keyword `{key}=` in expose.endpoint: did you mean `{wanted}=`?"}
    method = marker.get("method", "GET")
    if method is None:
        methods = ["GET"]
    elif isinstance(method, str):
        methods = [method]
    elif isinstance(method, (list, tuple)) and all(isinstance(m, str) for m in method):
        methods = list(method)
    else:
        return {"error": f"method must be a string or a list of strings, not {method!r}"}
    api = marker.get("API")
    if api is None:
        api = func_name
    if not isinstance(api, str):
        return {"error": f"API must be a string, not {api!r}"}
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError) as exc:
        return {"error": f"its signature cannot be read: {exc}"}
    params = []
    for p in signature.parameters.values():
        param = {"name": p.name, "kind": _KINDS[p.kind], "has_default": p.default is not inspect.Parameter.empty}
        ty = _param_type(_evaluated(p.annotation, target), converters)
        if ty is not None:
            param["type"] = ty
        if param["has_default"] and _plain(p.default):
            param["default"] = p.default
        params.append(param)
    doc = inspect.getdoc(func) or ""
    return {
        "func": func_name,
        "api": api,
        "methods": methods,
        "doc": _first_doc_line(func),
        "description": doc.strip() if isinstance(doc, str) else "",
        "signature": str(signature),
        "params": params,
        "meta": meta,
    }


def _evaluated(annotation, target):
    """``from __future__ import annotations`` leaves strings: what one names in the function's
    module is the type; one that does not evaluate is left alone (no conversion)."""
    if not isinstance(annotation, str):
        return annotation
    try:
        scope = getattr(inspect.unwrap(target), "__globals__", None)
        return eval(annotation, dict(scope) if isinstance(scope, dict) else {})
    except Exception:  # noqa: BLE001 - a name the module does not define, or worse
        return inspect.Parameter.empty


def _note_line(lines, name, func):
    try:
        code = getattr(inspect.unwrap(func), "__code__", None)
        line = getattr(code, "co_firstlineno", None)
    except Exception:  # noqa: BLE001 - a hostile wrapper
        return
    if isinstance(line, int):
        lines[name] = line


def _plain(value, depth=0):
    """Whether ``value`` is JSON as it stands (a default the API description can show)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if depth < 4 and isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    return False


def _converter(converters, func):
    converters.append(func)
    return len(converters) - 1


def _member(cls):
    return lambda name: cls[name]


def _param_type(ann, converters, depth=0):
    """An annotation as plain data the server converts query and URL strings by (SPEC §13), or
    ``None`` for one it leaves alone (no annotation, or a type it does not convert)."""
    if ann is inspect.Parameter.empty or depth > 3:
        return None
    if ann is bool:
        return {"type": "bool"}
    if ann is int:
        return {"type": "int"}
    if ann is float:
        return {"type": "float"}
    if ann is str:
        return {"type": "str"}
    if ann is _UUID:
        return {"type": "uuid", "conv": _converter(converters, _UUID)}
    if ann is _DateTime:
        return {"type": "datetime", "conv": _converter(converters, _DateTime.fromisoformat)}
    if ann is _Date:
        return {"type": "date", "conv": _converter(converters, _Date.fromisoformat)}
    if isinstance(ann, type) and issubclass(ann, _Enum):
        members = list(ann.__members__.items())
        return {
            "type": "enum",
            "name": ann.__name__,
            "names": [name for name, _ in members],
            "values": [m.value if _plain(m.value) and not isinstance(m.value, (list, tuple)) else str(m.value) for _, m in members],
            "conv": _converter(converters, _member(ann)),
        }
    origin, args = _get_origin(ann), _get_args(ann)
    if origin is _Literal:
        values = [v for v in args if v is None or isinstance(v, (bool, int, str))]
        return {"type": "literal", "values": values} if values and len(values) == len(args) else None
    if origin in (_Union, _UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _param_type(rest[0], converters, depth + 1)
            return {"type": "optional", "item": inner} if inner is not None else None
        return None
    if origin is list and len(args) == 1:
        inner = _param_type(args[0], converters, depth + 1)
        return {"type": "list", "item": inner} if inner is not None else None
    return None


async def _run(awaitable, done):
    # A BaseException (SystemExit, KeyboardInterrupt) escaping a task would stop the loop's
    # thread: every coroutine's outcome is handed to ``done`` as a value instead.
    try:
        value = await awaitable
    except BaseException as exc:  # noqa: BLE001
        ok, value = False, exc
    else:
        ok = True
    try:
        done(ok, value)
    except BaseException:  # noqa: BLE001 - the reply is lost; the server answers 500
        traceback.print_exc()


def _start(loop, ident, awaitable, done):
    # The loop keeps only weak references to tasks: hold each until it ends.
    task = loop.create_task(_run(awaitable, done))
    _tasks[ident] = task
    task.add_done_callback(lambda _: _tasks.pop(ident, None))


def submit(awaitable, done, ident):
    """Runs ``awaitable`` on the event loop; ``done(ok, value)`` is called on the loop thread.
    ``ident`` names it for :func:`cancel`.

    One hop onto the loop (``call_soon_threadsafe``) and one task: no ``concurrent.futures``
    future to chain back, since ``done`` replies to the server itself."""
    loop = _loop
    loop.call_soon_threadsafe(_start, loop, ident, awaitable, done)


def cancel(idents):
    """Called by the watchdog (on its own thread) for coroutines past their deadline; each
    loop tells it when it ran the cancellation (a loop that does not is stuck)."""
    for ident in idents:
        task = _tasks.get(ident)
        loop = task.get_loop() if task is not None else _loop
        loop.call_soon_threadsafe(_cancel, ident)


def _cancel(ident):
    task = _tasks.get(ident)
    if task is not None:
        task.cancel()
    _native.cancelled(ident)
