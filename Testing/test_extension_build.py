"""The Slicer extension's build files, checked without Slicer (desktop Slicer cannot be built or installed here):
every file the extension needs is listed in the CMake build, what is listed exists, the Qt layer compiles, and
the catalog entry and metadata agree."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest
from PIL import Image

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "MedSAM2Lib"
MODULE = ROOT / "MedSAM2Slicer"
RESOURCES = ROOT / "Resources"
TEST_DATA = ROOT / "Testing" / "Data"
SCREENSHOT_MAX_BYTES = 300 * 1024

# The catalog entry schema (Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json): its property
# names and types; it allows no other property.
CATALOG_SCHEMA = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                  "slicer-extension-catalog-entry-schema-v1.0.1.json#")
CATALOG_PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                      "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}


def cmake_sets(path: Path) -> Dict[str, List[str]]:
    """The values of the ``set(NAME value...)`` commands in a CMake file, with ${MODULE_NAME} expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text())  # no '#' appears inside the strings of our files
    values = {}
    for name, body in re.findall(r"\bset\((\w+)\s*(.*?)\)", text, re.DOTALL):
        items = re.findall(r'"[^"]*"|\S+', body)
        values[name] = [item.strip('"').replace("${MODULE_NAME}", values.get("MODULE_NAME", [""])[0]) for item in items]
    return values


def files_under(folder: Path, python: bool) -> Set[str]:
    """Files of a source folder relative to it, .py files or the others, without caches and build files."""
    found = set()
    for path in folder.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.name != "CMakeLists.txt":
            if (path.suffix == ".py") == python:
                found.add(path.relative_to(folder).as_posix())
    return found


@pytest.fixture(scope="module")
def module_cmake() -> Dict[str, List[str]]:
    return cmake_sets(MODULE / "CMakeLists.txt")


@pytest.fixture(scope="module")
def extension_cmake() -> Dict[str, List[str]]:
    return cmake_sets(ROOT / "CMakeLists.txt")


def assert_lists_exactly(module_cmake, variable: str, present: Set[str]) -> None:
    """The CMake list ``variable`` of MedSAM2Slicer/CMakeLists.txt names exactly the ``present`` files."""
    listed = set(module_cmake[variable])
    assert len(listed) == len(module_cmake[variable]), f"{variable} names a file twice"
    assert sorted(present - listed) == [], f"files missing from {variable} in MedSAM2Slicer/CMakeLists.txt"
    assert sorted(listed - present) == [], f"{variable} in MedSAM2Slicer/CMakeLists.txt names files that do not exist"


def test_every_python_file_of_the_library_is_built(module_cmake):
    assert_lists_exactly(module_cmake, "MEDSAM2LIB_PYTHON_SCRIPTS", files_under(LIBRARY, python=True))


def test_the_library_has_no_data_files_of_its_own():
    """Non-code files live once, in the top-level Resources/; the builds copy what they need."""
    assert files_under(LIBRARY, python=False) == set()


def test_every_top_level_resource_is_in_exactly_one_cmake_list(module_cmake):
    lists = ["MEDSAM2LIB_RESOURCES", "MODULE_ICON", "REPOSITORY_ONLY_RESOURCES"]
    listed = [name for variable in lists for name in module_cmake[variable]]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    present = {path.name for path in RESOURCES.iterdir() if path.is_file()}
    assert sorted(present - set(listed)) == [], "files of Resources/ missing from MedSAM2Slicer/CMakeLists.txt"
    assert sorted(set(listed) - present) == [], "MedSAM2Slicer/CMakeLists.txt names resources that do not exist"


def test_the_wheel_ships_the_library_resources_and_every_package(module_cmake):
    """pip install . (not editable) installs Resources/ as MedSAM2Lib/Resources/ with the files the library
    reads, the same as the extension; and every package of the library."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"MedSAM2Lib.Resources": "Resources"}
    assert sorted(setuptools["package-data"]["MedSAM2Lib.Resources"]) == sorted(module_cmake["MEDSAM2LIB_RESOURCES"])
    packages = {".".join(path.parent.relative_to(ROOT).parts) for path in LIBRARY.rglob("__init__.py")}
    assert set(setuptools["packages"]) == packages | {"MedSAM2Lib.Resources"}


def test_every_python_file_of_the_qt_layer_is_built(module_cmake):
    assert_lists_exactly(module_cmake, "MODULE_PYTHON_SCRIPTS", files_under(MODULE, python=True))


def test_every_resource_of_the_qt_layer_is_listed(module_cmake):
    assert_lists_exactly(module_cmake, "MODULE_PYTHON_RESOURCES", files_under(MODULE, python=False))


def test_self_test_data_ships_with_the_module(module_cmake):
    listed = set(module_cmake["MODULE_SELF_TEST_DATA"])
    assert all((TEST_DATA / name).is_file() for name in listed)
    # The data files the self-test names, directly or through the shared scenario.
    readers = [MODULE / "MedSAM2.py", LIBRARY / "slicer_glue" / "scenario.py"]
    named = {name for path in readers for name in re.findall(r'"([\w.-]+\.(?:pt|yaml|npz))"', path.read_text())}
    assert named and sorted(named - listed) == [], "data the self-test reads is missing from MODULE_SELF_TEST_DATA"
    # The CMake file copies them to Resources/Testing beside MedSAM2.py, where the self-test looks.
    assert re.search(r'SELF_TEST_DATA\s*=\s*MODULE_DIR\s*/\s*"Resources"\s*/\s*"Testing"', readers[0].read_text())


def test_the_sample_data_thumbnail_is_where_cmake_installs_the_module_icon(module_cmake):
    """registerSampleData names the module icon as the demo scan's thumbnail: the path must be the one the build
    copies MODULE_ICON to (Resources/Icons/<module>.png beside MedSAM2.py), not MedSAM2Lib's resources."""
    cmake_text = (MODULE / "CMakeLists.txt").read_text()
    copied_to = re.search(r"configure_file\(\$\{PROJECT_SOURCE_DIR\}/Resources/\$\{MODULE_ICON\}\s+"
                          r"\$\{MODULE_BUILD_DIR\}/([^\s)]+)", cmake_text).group(1)
    assert copied_to == "Resources/Icons/${MODULE_NAME}.png" and module_cmake["MODULE_ICON"] == ["MedSAM2.png"]
    tree = ast.parse((MODULE / "MedSAM2.py").read_text(encoding="utf-8"))
    constants = {node.targets[0].id: ast.unparse(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert constants["MODULE_ICON"].replace("'", '"') == 'MODULE_DIR / "Resources" / "Icons" / "MedSAM2.png"'
    register = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "registerSampleData")
    thumbnail = next(keyword.value for node in ast.walk(register) if isinstance(node, ast.Call)
                     for keyword in node.keywords if keyword.arg == "thumbnailFileName")
    assert ast.unparse(thumbnail) == "str(MODULE_ICON)"


# The classes Slicer looks for by name: the module (file name = class name), its widget, logic and test, and
# the effect class its folder's loader imports.
QT_LAYER_CLASSES = {
    "MedSAM2.py": {"MedSAM2", "MedSAM2Widget", "MedSAM2Test"},
    "SegmentEditorMedSAM2Lib/SegmentEditorEffect.py": {"SegmentEditorEffect"},
}


def test_qt_layer_compiles():
    """The module and the effect (they import Qt and slicer, which only desktop Slicer has) compile, and define
    the classes Slicer instantiates by name: a syntax error or a renamed class fails here instead of in Slicer."""
    problems, found = [], {}
    for path in sorted(MODULE.rglob("*.py")):
        name = path.relative_to(MODULE).as_posix()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            compile(tree, str(path), "exec")
        except SyntaxError as error:
            problems.append(f"{name}:{error.lineno}: {error.msg}")
            continue
        found[name] = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert problems == []
    missing = {name: sorted(classes - found.get(name, set())) for name, classes in QT_LAYER_CLASSES.items()}
    assert {name: classes for name, classes in missing.items() if classes} == {}


def test_extension_is_the_module_folder_with_pytorch(extension_cmake):
    text = (ROOT / "CMakeLists.txt").read_text()
    assert extension_cmake["EXTENSION_DEPENDS"] == ["PyTorch"]
    assert extension_cmake["EXTENSION_CATEGORY"] == ["Segmentation"]
    assert re.search(r"add_subdirectory\(MedSAM2Slicer\)", text) and (MODULE / "CMakeLists.txt").is_file()
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text


def test_catalog_entry_follows_the_schema_and_the_build(extension_cmake):
    entry = json.loads((ROOT / "MedSAM2.json").read_text())
    assert CATALOG_REQUIRED <= set(entry) <= set(CATALOG_PROPERTIES)
    assert all(isinstance(entry[key], CATALOG_PROPERTIES[key]) for key in entry)
    assert entry["$schema"] == CATALOG_SCHEMA
    assert entry["category"] == extension_cmake["EXTENSION_CATEGORY"][0]
    assert entry["build_dependencies"] == extension_cmake["EXTENSION_DEPENDS"]
    assert entry["scm_url"] == extension_cmake["EXTENSION_HOMEPAGE"][0]
    assert entry["build_subdirectory"] == "." and entry["scm_revision"] == "main" and 1 <= entry["tier"] <= 5


def raw_url_prefix(extension_cmake) -> str:
    """Files of the repository as the Extensions Index reads them; <owner> is filled in when publishing."""
    repository = extension_cmake["EXTENSION_HOMEPAGE"][0].removeprefix("https://github.com/")
    assert repository == "<owner>/SlicerMedSAM2"
    return f"https://raw.githubusercontent.com/{repository}/main/"


def test_icon_url_is_the_module_icon(extension_cmake, module_cmake):
    prefix = raw_url_prefix(extension_cmake)
    icon_url = extension_cmake["EXTENSION_ICONURL"][0]
    assert icon_url.startswith(prefix) and icon_url.removeprefix(prefix) == "Resources/" + module_cmake["MODULE_ICON"][0]


def test_screenshot_urls_name_small_pngs_in_resources(extension_cmake, module_cmake):
    """The Extensions Index requires a non-empty EXTENSION_SCREENSHOTURLS (space-separated URLs)."""
    prefix = raw_url_prefix(extension_cmake)
    urls = " ".join(extension_cmake["EXTENSION_SCREENSHOTURLS"]).split()
    assert urls and all(url.startswith(prefix + "Resources/") for url in urls)
    assert {url.removeprefix(prefix + "Resources/") for url in urls} <= set(module_cmake["REPOSITORY_ONLY_RESOURCES"])
    for url in urls:
        path = ROOT / url.removeprefix(prefix)
        assert path.stat().st_size < SCREENSHOT_MAX_BYTES
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 400


@pytest.mark.parametrize("icon", ["Resources/MedSAM2.png",
                                  "MedSAM2Slicer/SegmentEditorMedSAM2Lib/SegmentEditorEffect.png"])
def test_icons_are_128_pixel_pngs(icon):
    with Image.open(ROOT / icon) as image:
        assert image.format == "PNG" and image.size == (128, 128)


def test_licence_file_is_the_declared_apache_2():
    assert "Apache License\n                           Version 2.0" in (ROOT / "LICENSE.txt").read_text()
    assert re.search(r'^license = "Apache-2.0"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)


def test_effect_help_and_readme_name_the_effect_s_buttons_and_keys():
    """The effect's help text is three lines; it and the README's "Using it in 3D Slicer" name the effect's
    buttons, its session check boxes and the keys slicer_glue.gestures handles (Shift, Ctrl/Cmd, Backspace,
    Delete), and promise nothing of Esc but what Slicer does with it."""
    source = (MODULE / "SegmentEditorMedSAM2Lib" / "SegmentEditorEffect.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    help_method = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "helpText")
    help_html = ast.literal_eval(help_method.body[0].value)
    assert len(help_html.split("<br>")) == 3
    help_text = re.sub(r"<[^>]+>", "", help_html)
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("*", "")
    section = readme.split("\n## Using it in 3D Slicer\n")[1].split("\n## ")[0]

    def literal_arguments(constructor: str) -> Set[str]:
        return {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr == constructor and node.args
                and isinstance(node.args[0], ast.Constant)}

    buttons = literal_arguments("QPushButton")
    assert {"Propagate", "Use the segment on this slice", "Reset", "Cancel"} <= buttons
    session_boxes = {"Clicks add background points", "Update automatically", "New segment for each box",
                     "Propagate through time (cine)"}
    assert session_boxes <= literal_arguments("QCheckBox")
    # The keys the effect receives (slicer_glue.gestures.KEY_EVENTS), with the Mac names: Qt's Control is the
    # Command key there, and the Mac "delete" key sends Backspace.
    from MedSAM2Lib.slicer_glue.gestures import KEY_EVENTS

    keys = {"BackSpace": "Backspace", "Delete": "Delete"}
    assert set(KEY_EVENTS) == set(keys)
    for words in buttons | session_boxes | {"Shift+click", "Ctrl+click", "Cmd+click", "Update", "Early stop",
                                            *keys.values()}:
        assert words in section, words
    for words in ("drag a box", "Propagate", "Shift+click", "Ctrl+click", "Cmd+click", "Update automatically",
                  "Use the segment on this slice", "Early stop", "Cancel", "Propagate through time", *keys.values()):
        assert words in help_text, words
    # Esc never reaches the effect (qMRMLSegmentEditorWidget's shortcut deactivates it): neither text may promise
    # that it clears the box or that it is the effect's own key for stopping.
    for text in (help_text, section):
        assert not re.search(r"Esc\w* (to )?clears?|Esc\w* or Cancel|Cancel or Esc|Esc to clear", text), text
