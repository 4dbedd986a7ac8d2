"""Every ```python block of every docs page and of the README runs as written.

The blocks of one docs page share a namespace, in order, as a reader would run them; each README
block runs on its own, as a reader copying one of them would.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def test_block_extraction_finds_fenced_python_only():
    text = 'intro\n```python\na = 1\n```\n```bash\nexit 1\n```\n```python title="x"\nb = a + 1\n```\n'
    assert BLOCK.findall(text) == ["a = 1\n", "b = a + 1\n"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_code_runs(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no python blocks")
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(blocks, 1):
        exec(compile(code, f"{page.relative_to(ROOT)} (python block {i})", "exec"), namespace)


def test_the_methods_page_is_the_registry():
    from scoreflow.methods.table import methods_page

    page = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    assert page == methods_page(), "docs/methods.md is stale: run python -m scoreflow.methods > docs/methods.md"


@pytest.mark.parametrize("front_end, kinds", [("sample_ode", ("ode",)), ("sample_sde", ("sde",)),
                                              ("sample_pc", ("predictor", "corrector")), ("inpaint", ("conditional",))])
def test_the_readme_lists_exactly_the_registered_methods(front_end, kinds):
    import scoreflow as sf

    row = next(line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
               if line.startswith(f"| `{front_end}`"))
    names = set(re.findall(r"`([a-z0-9_]+)`", row)) & {m.name for m in sf.list_methods()}
    assert names == {m.name for kind in kinds for m in sf.list_methods(kind)}, row


def _api_page_names() -> tuple[set[str], set[str]]:
    """The dotted paths of docs/api.md's ``:::`` directives (with their ``members``), and every name it shows in backticks."""
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    paths = set()
    for block in re.finditer(r"^::: (\S+)\n((?:[ \t]+\S.*\n)*)", text, re.MULTILINE):
        members = re.search(r"members: \[(.*)\]", block.group(2))
        if members:
            paths |= {f"{block.group(1)}.{m.strip()}" for m in members.group(1).split(",")}
        else:
            paths.add(block.group(1))
    quoted = {part for code in re.findall(r"`([^`]+)`", text) for part in re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", code)}
    return paths, quoted


def test_the_api_page_lists_every_public_name():
    """Every name in the ``__all__`` of scoreflow and of its public modules is on docs/api.md: as a ``:::`` directive
    (or a member of one), inside a module directive that shows all its members, or named in backticks."""
    import importlib
    import inspect
    import pkgutil

    import scoreflow

    paths, quoted = _api_page_names()
    shown = set()
    for path in paths:
        module, _, name = path.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            obj = importlib.import_module(path)
        if inspect.ismodule(obj):  # a module directive without members shows every name of its __all__
            shown |= {id(getattr(obj, n)) for n in getattr(obj, "__all__", ())}
        shown.add(id(obj))
    modules = ["scoreflow"] + [f"scoreflow.{m.name}" for m in pkgutil.iter_modules(scoreflow.__path__) if not m.name.startswith("_")]
    missing = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or id(obj) in shown or f"{module_name}.{name}" in quoted or name in quoted:
                continue
            missing.append(f"{module_name}.{name}")
    assert not missing, f"public names missing from docs/api.md: {missing}"


def test_the_api_page_says_where_each_entry_is_imported_from():
    """docs/api.md's headings show bare names; its opening paragraph says where each lives: in ``scoreflow``, in the
    submodule its section names, or in the module the paragraph names beside it."""
    import importlib

    import scoreflow

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    intro = text.split("\n## ", 1)[0]
    wrong = []
    for section in text.split("\n## ")[1:]:
        named = re.search(r"\(`(scoreflow\.[a-z_.]+)`\)", section.splitlines()[0])
        home = importlib.import_module(named.group(1)) if named else scoreflow
        for block in re.finditer(r"^::: (\S+)\n((?:[ \t]+\S.*\n)*)", section, re.MULTILINE):
            members = re.search(r"members: \[(.*)\]", block.group(2))
            paths = [f"{block.group(1)}.{m.strip()}" for m in members.group(1).split(",")] if members else [block.group(1)]
            for path in paths:
                module, name = path.rsplit(".", 1)
                if hasattr(home, name) or hasattr(scoreflow, name):
                    continue
                if not re.search(rf"`{re.escape(module)}`[^;]*?`{name}`|`{name}`[^;]*?`{re.escape(module)}`", intro):
                    wrong.append(path)
    assert not wrong, f"docs/api.md shows these without saying where to import them from: {wrong}"


README_BLOCKS = python_blocks(ROOT / "README.md")


@pytest.mark.parametrize("index", range(len(README_BLOCKS)), ids=lambda i: f"README block {i + 1}")
def test_each_readme_block_runs_on_its_own(index, tmp_path, monkeypatch, capsys):
    """A reader copies one block, not the page: every README block runs in a fresh namespace and prints something."""
    monkeypatch.chdir(tmp_path)
    exec(compile(README_BLOCKS[index], f"README.md (python block {index + 1}, alone)", "exec"), {"__name__": "readme_block"})
    assert capsys.readouterr().out.strip(), f"README python block {index + 1} prints nothing"
