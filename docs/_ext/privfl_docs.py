"""Sphinx extension of the privfl docs: executed examples and generated references.

Directives (usable from MyST as ```` ```{name} ````):

``example-output PATH``
    Runs the Python script ``PATH`` (relative to the docs folder) with the Python that
    runs Sphinx, in a subprocess whose working folder is the docs folder, and inserts
    its standard output as a literal block. A script that fails or runs past
    ``:timeout:`` seconds (default 120) fails the build with its output in the error.
``privfl-cli-help [COMMAND]``
    The ``--help`` text of ``privfl COMMAND`` (or of ``privfl``), from
    :func:`privfl.cli.main.build_parser`.
``privfl-config-keys``
    A table of every key of :class:`privfl.app.config.RunConfig`: key, flag, type,
    default, help.
``privfl-component-options``
    A table of the options the built-in components declare, the keys of their
    ``[NAME]`` tables, with their flags.

The ``render_*`` functions return the reStructuredText the directives insert, so the
tests can check them without building the docs.

Two kinds of references that Sphinx leaves unresolved are resolved here: privfl objects
named as the code names them (see :func:`_public_target`), and the standard library,
which cannot resolve offline (intersphinx is off): such references are linked to
docs.python.org when, and only when, the named object exists.
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import Parser as RstParser
from docutils.parsers.rst import directives
from docutils.utils import new_document
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

HELP_WIDTH = 88
"""Width of the generated ``--help`` texts, independent of the terminal."""

PYTHON_DOCS = "https://docs.python.org/3/library/"


# -- rendering functions (pure: no Sphinx needed) -----------------------------------


def subcommands() -> list[str]:
    """Return the names of the ``privfl`` subcommands, in parser order."""
    from privfl.cli.main import build_parser

    return list(_subparsers(build_parser()))


def render_cli_help(command: str | None = None) -> str:
    """Return the ``--help`` text of ``privfl COMMAND`` (``None``: of ``privfl``)."""
    from privfl.cli.main import build_parser

    parser = build_parser()
    if command is not None:
        choices = _subparsers(parser)
        if command not in choices:
            raise ValueError(f"privfl has no subcommand {command!r}; it has {sorted(choices)}")
        parser = choices[command]
    formatter_class = parser.formatter_class
    parser.formatter_class = lambda prog: formatter_class(prog, width=HELP_WIDTH)
    return parser.format_help().rstrip() + "\n"


def flag_of(spec: dataclasses.Field) -> str:
    """Return the command-line flag of a config key (as ``privfl.cli.main`` derives it)."""
    return spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")


def config_rows() -> list[dict[str, str]]:
    """Return one row per config key: key, flag, type, default (as TOML), help."""
    from privfl.app.config import config_fields

    rows = []
    for spec in config_fields():
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:  # pragma: no cover - every key has a default today
            default = None
        rows.append(
            {
                "key": spec.name,
                "flag": flag_of(spec),
                "type": spec.type if isinstance(spec.type, str) else spec.type.__name__,
                "default": _toml_value(default),
                "help": spec.metadata.get("help", ""),
            }
        )
    return rows


def render_config_reference() -> str:
    """Return a reST list-table of every config key."""
    body = [
        [_literal(r["key"]), _literal(r["flag"]), _literal(r["type"]), r["default"], r["help"]]
        for r in config_rows()
    ]
    return _list_table(["key", "flag", "type", "default", "meaning"], body, widths="2 3 2 2 6")


def component_option_rows() -> list[dict[str, str]]:
    """Return the declared options of every built-in component, by kind and name.

    Only built-in plugins are listed (entry points are not loaded), so the page does
    not depend on what happens to be installed where the docs are built.
    """
    from privfl.options import declared_options
    from privfl.plugins import get_plugin_manager
    from privfl.registry import KINDS

    registry = get_plugin_manager(autoload=False).components
    rows = []
    for kind in KINDS:
        for name, entry in registry.entries(kind).items():
            for spec in declared_options(entry.cls):
                rows.append(
                    {
                        "kind": kind,
                        "name": name,
                        "class": f"{entry.cls.__module__}.{entry.cls.__qualname__}",
                        "option": spec.name,
                        "default": "" if spec.required else _toml_value(spec.default),
                        "flag": spec.flag or "",
                        "help": spec.help,
                    }
                )
    return rows


def render_component_options() -> str:
    """Return a reST list-table of the built-in components' options."""
    body = [
        [
            f"{r['kind']} ``{r['name']}``",
            _literal(r["option"]),
            r["default"],
            _literal(r["flag"]) if r["flag"] else "",
            r["help"],
        ]
        for r in component_option_rows()
    ]
    return _list_table(
        ["component", "option", "default", "flag", "meaning"], body, widths="3 3 2 3 6"
    )


def run_example(script: Path, *, cwd: Path, timeout: float) -> str:
    """Run ``script`` with this Python and return its standard output.

    :raises RuntimeError: when the script fails or runs past ``timeout`` seconds; the
        message holds the exit status and the script's output.
    """
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{script} ran past its timeout of {timeout:g} s") from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"{script} exited with status {done.returncode}\n"
            f"--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}"
        )
    return done.stdout


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public accessor for subcommands; its subparsers action holds them.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _toml_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, dict) and not value:
        return "none"
    if isinstance(value, tuple):
        value = list(value)
    import tomli_w

    return _literal(tomli_w.dumps({"v": value}, multiline_strings=False).split("=", 1)[1].strip())


def _literal(text: str) -> str:
    return f"``{text}``" if text else ""


def _list_table(header: list[str], body: list[list[str]], *, widths: str) -> str:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *body]:
        for position, cell in enumerate(row):
            bullet = "   * - " if position == 0 else "     - "
            lines.append(bullet + _inline(cell))
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Turn Markdown-style `code` in help texts into reST ``code``; keep the rest."""
    text = " ".join(str(text).split())
    return re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)


# -- directives ----------------------------------------------------------------------


class _RstDirective(SphinxDirective):
    """Base of the directives that insert generated reStructuredText."""

    def render(self) -> str:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        # Parse as reStructuredText whatever the page's own markup (MyST pages would
        # read a nested parse as Markdown).
        document = new_document(f"<{self.name}>", self.state.document.settings)
        RstParser().parse(self.render(), document)
        return list(document.children)


class ConfigKeys(_RstDirective):
    def render(self) -> str:
        return render_config_reference()


class ComponentOptions(_RstDirective):
    def render(self) -> str:
        return render_component_options()


class CliHelp(SphinxDirective):
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        command = self.arguments[0] if self.arguments else None
        try:
            text = render_cli_help(command)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        self.set_source_info(block)
        return [block]


class ExampleOutput(SphinxDirective):
    required_arguments = 1
    option_spec: ClassVar[dict[str, Any]] = {"timeout": directives.positive_int}

    def run(self) -> list[nodes.Node]:
        srcdir = Path(self.env.srcdir)
        script = (srcdir / self.arguments[0]).resolve()
        if not script.is_file():
            raise self.error(f"example-output: no script {self.arguments[0]} under {srcdir}")
        self.env.note_dependency(str(script))
        try:
            output = run_example(script, cwd=srcdir, timeout=self.options.get("timeout", 120))
        except RuntimeError as exc:
            raise self.error(f"example-output: {exc}") from None
        block = nodes.literal_block(output, output)
        block["language"] = "text"
        self.set_source_info(block)
        return [block]


# -- references that Sphinx cannot resolve on its own ---------------------------------


def _stdlib_url(target: str) -> str | None:
    """Return the docs.python.org URL of ``target`` if it names an existing stdlib object."""
    if hasattr(builtins, target):
        return f"{PYTHON_DOCS}functions.html#{target}"
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        if module_name.split(".")[0] not in sys.stdlib_module_names:
            return None
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                return None
            obj = getattr(obj, attribute)
        return f"{PYTHON_DOCS}{module_name}.html#{target}"
    return None


def _public_target(target: str, module: str | None) -> str | None:
    """Return the documented ``privfl.NAME...`` spelling of a privfl object, if any.

    Docstrings name objects as the code does: ``PluginError`` in a module that imports
    it, ``Federation`` imported only for type checking, or a defining module's path
    (``privfl.records.RoundRecord.to_json``). The API reference documents them under
    their public names in :mod:`privfl`; this maps one to the other when (and only
    when) both name the same object.
    """
    parts = target.split(".")
    obj: Any = None
    if module and module.startswith("privfl"):
        try:
            obj = getattr(importlib.import_module(module), parts[0], None)
        except ImportError:
            obj = None
        rest = parts[1:]
    if obj is None and parts[0] == "privfl":
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            rest = parts[cut:]
            while rest and inspect.ismodule(obj):
                obj, rest = getattr(obj, rest[0], None), rest[1:]
            break
    if obj is None:
        import privfl

        # Names imported only under TYPE_CHECKING mean privfl's public objects.
        return f"privfl.{target}" if parts[0] in privfl.__all__ else None
    import privfl

    name = getattr(obj, "__name__", None)
    if name and getattr(privfl, name, None) is obj:
        return ".".join(["privfl", name, *rest])
    return None


def _documented_alias(target: str, module: str | None, env: Any) -> str | None:
    """Return where an object without ``__name__`` is documented, found by identity.

    ``privfl.hookimpl`` (or ``hookimpl`` in :mod:`privfl`'s docstring) is an instance
    re-exported from :mod:`privfl.plugins`, where it is documented; instances carry no
    name of their own, so compare the documented objects of that name with it.
    """
    import privfl

    parts = target.split(".")
    if len(parts) == 2 and parts[0] == "privfl":
        owner: Any = privfl
    elif len(parts) == 1 and module in sys.modules and module.startswith("privfl"):
        owner = sys.modules[module]
    else:
        return None
    obj = getattr(owner, parts[-1], None)
    if obj is None:
        return None
    for fullname in env.get_domain("py").objects:
        where, _, name = fullname.rpartition(".")
        if (
            name == parts[-1]
            and where.startswith("privfl")
            and getattr(sys.modules.get(where), name, None) is obj
        ):
            return fullname
    return None


def _resolve_missing(
    app: Sphinx, env: Any, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module = node.get("py:module")
    for public in (_public_target(target, module), _documented_alias(target, module, env)):
        if public is not None and public != target:
            found = env.get_domain("py").resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], public, node, contnode
            )
            if found is not None:
                return found
    url = _stdlib_url(target)
    if url is None:
        return None
    reference = nodes.reference("", "", internal=False, refuri=url, reftitle=target)
    reference.append(contnode)
    return reference


def _drop_data_typehints(app: Sphinx, domain: str, objtype: str, content: Any) -> None:
    """Keep autodoc from giving data a "Return type" because the value is callable.

    ``privfl.hookimpl`` is a callable marker object; autodoc records the signature of
    any callable and would list pluggy's internal type variables as its return type.
    Runs before autodoc merges the recorded hints into the description.
    """
    if domain != "py" or objtype not in ("data", "attribute"):
        return
    signature = content.parent[0]
    module, fullname = signature.get("module"), signature.get("fullname")
    if fullname:
        key = f"{module}.{fullname}" if module else fullname
        app.env.current_document.autodoc_annotations.pop(key, None)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("example-output", ExampleOutput)
    app.add_directive("privfl-cli-help", CliHelp)
    app.add_directive("privfl-config-keys", ConfigKeys)
    app.add_directive("privfl-component-options", ComponentOptions)
    app.connect("missing-reference", _resolve_missing)
    app.connect("object-description-transform", _drop_data_typehints, priority=400)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
