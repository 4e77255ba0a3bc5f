"""Package layout: the core (`videococa/` outside `videococa/projects/`) never imports a project.

Projects plug into the core through registration points (`videococa/extensions.py`); a config
names their modules as strings in `config.extensions`. These tests parse every core module with
`ast` (no import, so they run in milliseconds and see imports inside functions too).
"""
from __future__ import annotations

import ast
import os
from typing import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "videococa")
PROJECTS = os.path.join(PACKAGE, "projects")
FORBIDDEN = "videococa.projects"
# Words of the shapes project that core code (outside docstrings and comments) must not use.
PROJECT_WORDS = ("motion", "shapes_video")
# Names of the shapes project that no core module may import.
PROJECT_MODULE_WORDS = ("shapes_video", "motion")


def core_modules() -> list[str]:
  """Paths of every .py file under videococa/, excluding videococa/projects/."""
  found = []
  for root, dirs, files in os.walk(PACKAGE):
    dirs[:] = sorted(d for d in dirs
                     if os.path.join(root, d) != PROJECTS and d != "__pycache__")
    found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".py")]
  return found


def _package_of(path: str) -> str:
  """'videococa/train/optim.py' -> 'videococa.train'; 'videococa/train/__init__.py' -> the same."""
  rel = os.path.relpath(os.path.dirname(path), REPO)
  return ".".join(rel.split(os.sep))


def imported_modules(source: str, path: str = "<string>",
                     package: str = "videococa") -> Iterator[tuple[int, str]]:
  """(line, dotted module name) of every import in `source`, at any depth (inside functions,
  classes, `if` and `try` blocks). `from a import b` yields both `a` and `a.b` (b may be a
  submodule); relative imports are resolved against `package`; `importlib.import_module('...')`
  and `__import__('...')` with a literal name count too."""
  tree = ast.parse(source, filename=path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
      yield node.lineno, base
      for alias in node.names:
        yield node.lineno, f"{base}.{alias.name}"
    elif isinstance(node, ast.Call) and node.args:
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
      arg = node.args[0]
      if (name in ("import_module", "__import__") and isinstance(arg, ast.Constant)
          and isinstance(arg.value, str)):
        yield node.lineno, arg.value


def is_project_import(module: str) -> bool:
  return module == FORBIDDEN or module.startswith(FORBIDDEN + ".")


def project_imports(source: str, path: str = "<string>",
                    package: str = "videococa") -> list[str]:
  """'path:line: module' for each import of `videococa.projects` in `source`."""
  return [f"{path}:{line}: imports {module}"
          for line, module in imported_modules(source, path, package) if is_project_import(module)]


def _docstring_nodes(tree: ast.AST) -> set[int]:
  ids = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
          and isinstance(body[0].value.value, str)):
        ids.add(id(body[0].value))
  return ids


def code_words(source: str, path: str = "<string>") -> Iterator[tuple[int, str]]:
  """(line, text) of every identifier and non-docstring string literal in `source` (comments are
  not in the AST): names, attributes, definitions, arguments, keywords, import aliases."""
  tree = ast.parse(source, filename=path)
  docstrings = _docstring_nodes(tree)
  for node in ast.walk(tree):
    texts = []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      if id(node) not in docstrings:
        texts.append(node.value)
    elif isinstance(node, ast.Name):
      texts.append(node.id)
    elif isinstance(node, ast.Attribute):
      texts.append(node.attr)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      texts.append(node.name)
    elif isinstance(node, ast.arg):
      texts.append(node.arg)
    elif isinstance(node, ast.keyword) and node.arg:
      texts.append(node.arg)
    elif isinstance(node, ast.alias):
      texts += [node.name, node.asname or ""]
    for text in texts:
      yield getattr(node, "lineno", 0), text


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _rel(path: str) -> str:
  return os.path.relpath(path, REPO)


def test_the_walker_sees_the_whole_core():
  """Not vacuous: the walk finds the core's modules and their imports, including ones inside
  functions, and skips videococa/projects/."""
  modules = core_modules()
  rel = {_rel(p) for p in modules}
  assert len(modules) >= 40, sorted(rel)
  assert {"videococa/train/optim.py", "videococa/models/coca.py", "videococa/extensions.py",
          "videococa/data/preprocess.py", "videococa/evaluators/__init__.py"} <= rel
  assert not any(r.startswith("videococa/projects/") for r in rel)
  imports = {}
  for path in modules:
    for line, module in imported_modules(_read(path), path, _package_of(path)):
      imports.setdefault(_rel(path), set()).add(module)
  assert "optax" in imports["videococa/train/optim.py"]
  assert "videococa.train.sharding" in imports["videococa/train/optim.py"]
  # coca.load imports checkpoint and sharding inside the function body.
  assert "videococa.train.checkpoint" in imports["videococa/models/coca.py"]
  assert "importlib" in imports["videococa/extensions.py"]


def test_the_core_never_imports_a_project():
  offenders = []
  for path in core_modules():
    offenders += project_imports(_read(path), _rel(path), _package_of(path))
  assert not offenders, ("The core must not import videococa.projects (projects register through "
                         "videococa/extensions.py):\n" + "\n".join(offenders))


def test_a_project_import_is_flagged():
  """The check catches every spelling, also inside a function, and allows the string mention."""
  source = "\n".join([
      '"""Mentions videococa.projects.shapes in a docstring: fine."""',
      "import os",
      "from videococa.train import optim",
      "EXT = ('videococa.projects.shapes.pp_ops',)  # A config string: fine.",
      "",
      "def scene_motions():",
      "  from videococa.projects.shapes import scenes",
      "  return scenes.MOTIONS",
      "",
      "def others():",
      "  import videococa.projects.shapes.losses as l",
      "  from videococa import projects",
      "  from ..projects import shapes",
      "  import importlib",
      "  return importlib.import_module('videococa.projects.shapes.patch_skip')",
  ])
  found = project_imports(source, "synthetic.py", package="videococa.models")
  lines = sorted({int(f.split(":")[1]) for f in found})
  assert lines == [7, 11, 12, 13, 15], found
  assert "synthetic.py:7: imports videococa.projects.shapes" in found
  # Near misses are not project imports.
  assert not project_imports("import videococa.projectsx\nfrom videococa import project_utils\n")


def test_the_core_names_no_project_module():
  """No core import names a shapes-project module (`shapes_video`, `motion`), and core code
  (identifiers and non-docstring strings) never says `motion`."""
  offenders = []
  for path in core_modules():
    source = _read(path)
    for line, module in imported_modules(source, path, _package_of(path)):
      if any(word in module for word in PROJECT_MODULE_WORDS):
        offenders.append(f"{_rel(path)}:{line}: imports {module}")
    for line, text in code_words(source, path):
      if any(word in text.lower() for word in PROJECT_WORDS):
        offenders.append(f"{_rel(path)}:{line}: {text[:80]!r}")
  assert not offenders, "\n".join(offenders)


def test_code_words_skip_docstrings_and_comments():
  source = "\n".join(['"""motion in a docstring."""', "# motion in a comment", "def f():",
                      '  """motion."""', '  x = "motion"'])
  assert [(line, text) for line, text in code_words(source) if "motion" in text] == [(5, "motion")]


def test_torch_and_open_clip_are_test_only_dependencies():
  """torch, torchvision and open_clip appear only in tests. One exception: the converter imports
  torch (inside a function) to read and write the pickled .pt/.pth/.bin formats; .safetensors
  weights need no torch."""
  allowed = {("videococa/tools/openclip.py", "torch")}
  offenders = []
  for root, dirs, files in os.walk(PACKAGE):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    for path in (os.path.join(root, f) for f in files if f.endswith(".py")):
      for line, module in imported_modules(_read(path), path, _package_of(path)):
        if (module.split(".")[0] in ("torch", "torchvision", "open_clip")
            and (_rel(path), module) not in allowed):
          offenders.append(f"{_rel(path)}:{line}: imports {module}")
  assert not offenders, "\n".join(offenders)
  sample = "import os\ndef f():\n  from torch import nn\n"
  assert [m for _, m in imported_modules(sample)][1:] == ["torch", "torch.nn"]
