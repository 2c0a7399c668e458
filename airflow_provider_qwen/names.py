"""
One character policy for file names: an upload's folder and name on Apikley, and a result's name in ``output_path``.

A name is NFKC-normalised first, so a compatibility look-alike such as U+FF0F FULLWIDTH SOLIDUS
becomes the ``/`` it stands for, and the normalised name is what is sent. It must then hold no path
separator nor a look-alike that NFKC leaves alone (U+2215 DIVISION SLASH, U+29F8 BIG SOLIDUS...),
no control or format character (Unicode categories Cc and Cf: NUL,
newlines, the right-to-left override...), no line or paragraph separator, and fit a limit in
UTF-8 bytes. A refusal names the field, the value (escaped and shortened) and the rule.
"""

from __future__ import annotations

import string
import unicodedata

from airflow_provider_qwen.exceptions import ApikleyInputError

#: The most UTF-8 bytes of a file name, and of each folder in an upload path (most file systems' limit).
MAX_FILE_NAME_BYTES = 255
#: Hex digits of the suffix that makes an upload's stored name unique (64 bits of sha256, or random).
UNIQUE_SUFFIX_CHARS = 16
#: The most UTF-8 bytes of a whole upload path.
MAX_UPLOAD_PATH_BYTES = 1024
#: Characters that separate folders, or read as if they did, and that NFKC does not turn into ``/`` or ``\``.
SEPARATORS = frozenset(
    "/\\"
    "\u0337\u0338\u20e5"  # combining solidus overlays
    "\u1735\u2044\u2215\u2571\u27cb\u29f8\u3033"  # slashes
    "\u2216\u2572\u27cd\u29f5\u29f9"  # backslashes
)
#: Unicode categories never allowed: control, format, surrogate, line and paragraph separators.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: How much of a refused value a message shows.
SHOWN_CHARS = 80

FILE_NAME_RULE = (
    f"must be a plain file name of 1 to {MAX_FILE_NAME_BYTES} bytes in UTF-8 once NFKC-normalised, without '/', "
    "'\\' or a look-alike of either, without control or format characters, and not '.' or '..'"
)
UPLOAD_PATH_RULE = (
    f"must be a relative folder of at most {MAX_UPLOAD_PATH_BYTES} bytes in UTF-8 once NFKC-normalised, without "
    f"leading or trailing '/', each part between '/' a name of 1 to {MAX_FILE_NAME_BYTES} bytes without '\\' or "
    "a look-alike of a slash, without control or format characters, and not '.' or '..'"
)


def check_file_name(file_name: str, field: str = "file_name") -> str:
    """
    Return ``file_name``, NFKC-normalised, a name to store an upload under.

    :param field: what to call the value in an error.
    :raises ApikleyInputError: naming ``field``, the value and :data:`FILE_NAME_RULE` when it breaks it.
    """
    name = _normalised(file_name, field, FILE_NAME_RULE)
    problem = _part_problem(name)
    if problem:
        raise _refused(field, file_name, FILE_NAME_RULE, problem)
    return name


def check_upload_path(upload_path: str) -> str:
    """
    Return ``upload_path``, NFKC-normalised, a folder on Apikley's file storage.

    :raises ApikleyInputError: naming the value and :data:`UPLOAD_PATH_RULE` when it breaks it.
    """
    path = _normalised(upload_path, "upload_path", UPLOAD_PATH_RULE)
    if path.startswith("/") or path.endswith("/"):
        problem: str | None = "it starts or ends with '/'"
    elif len(path.encode()) > MAX_UPLOAD_PATH_BYTES:
        problem = f"it is {len(path.encode())} bytes"
    else:
        parts = ((number, _part_problem(part)) for number, part in enumerate(path.split("/"), 1))
        problem = next((f"part {number}: {problem}" for number, problem in parts if problem), None)
    if problem:
        raise _refused("upload_path", upload_path, UPLOAD_PATH_RULE, problem)
    return path


def _normalised(value: object, field: str, rule: str) -> str:
    if not isinstance(value, str):
        raise _refused(field, value, rule, f"it is a {type(value).__name__}, not a string")
    return unicodedata.normalize("NFKC", value)


def _part_problem(name: str) -> str | None:
    """Say what keeps ``name`` (NFKC-normalised) from being one file or folder name, or return ``None``."""
    if not name.strip():
        return "it is empty" if not name else "it is only white space"
    if name in (".", ".."):
        return f"it is {name!r}"
    for char in name:
        if char in SEPARATORS:
            return f"it holds a path separator, {_described(char)}"
        if unicodedata.category(char) in FORBIDDEN_CATEGORIES:
            return f"it holds a control or format character, {_described(char)}"
    size = len(name.encode())
    return f"it is {size} bytes" if size > MAX_FILE_NAME_BYTES else None


def _described(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, '(unnamed)')}"


def _refused(field: str, value: object, rule: str, problem: str) -> ApikleyInputError:
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        shown = f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
    else:
        shown = repr(value)
    return ApikleyInputError(f"{field}={shown}: {rule} ({problem})")


#: The placeholders a ``result_name`` template may use.
RESULT_NAME_FIELDS = ("source_stem", "index", "apikley_task_id")
#: The most UTF-8 bytes of a rendered result name, leaving room for ``-<n>``, ``-<task id>`` and the extension.
MAX_RESULT_NAME_BYTES = 110
#: The most UTF-8 bytes of a source's stem kept in a result name.
MAX_STEM_BYTES = 80
RESULT_NAME_RULE = (
    "must be a template of a plain file name using only the placeholders "
    + ", ".join(f"{{{field}}}" for field in RESULT_NAME_FIELDS)
    + f" (no conversion or format spec), rendering to at most {MAX_RESULT_NAME_BYTES} bytes in UTF-8 once "
    "NFKC-normalised, without '/', '\\' or a look-alike of either, without control or format characters, "
    "and not '.' or '..'"
)


def name_part(text: str, fallback: str) -> str:
    """
    Return ``text`` made into part of a file name, or ``fallback`` when nothing of it is left.

    NFKC-normalised; every separator, look-alike, control or format character and white space
    becomes ``_``; leading dots go (no hidden file, no ``..``); at most :data:`MAX_STEM_BYTES`
    bytes of whole characters are kept.
    """
    cleaned = "".join(
        "_" if char in SEPARATORS or char.isspace() or unicodedata.category(char) in FORBIDDEN_CATEGORIES else char
        for char in unicodedata.normalize("NFKC", text)
    ).lstrip(".")
    kept = cleaned.encode()[:MAX_STEM_BYTES].decode(errors="ignore")
    return kept or fallback


def check_result_name(template: object) -> str:
    """
    Return ``template``, a ``result_name``, once its placeholders are known ones.

    :raises ApikleyInputError: naming ``result_name``, the value and :data:`RESULT_NAME_RULE`.
    """
    if not isinstance(template, str):
        raise _refused("result_name", template, RESULT_NAME_RULE, f"it is a {type(template).__name__}, not a string")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise _refused("result_name", template, RESULT_NAME_RULE, str(err)) from None
    for _, field, spec, conversion in parts:
        if field is not None and (field not in RESULT_NAME_FIELDS or spec or conversion):
            raise _refused("result_name", template, RESULT_NAME_RULE, f"it uses {{{field}}}")
    render_result_name(template, source_stem="source", index=0, apikley_task_id="0" * 32)
    return template


def render_result_name(template: str, *, source_stem: str, index: int, apikley_task_id: str) -> str:
    """
    Return the name ``template`` gives an edit's results (without ``-<n>`` or the extension), NFKC-normalised.

    :param source_stem: the source image's name without its extension, made into a name part.
    :param index: the map index of a mapped edit, or the item's index in a batch (0 otherwise).
    :raises ApikleyInputError: naming ``result_name``, the value and :data:`RESULT_NAME_RULE`.
    """
    rendered = template.format(source_stem=source_stem, index=index, apikley_task_id=apikley_task_id)
    name = unicodedata.normalize("NFKC", rendered)
    problem = _part_problem(name)
    if problem is None and len(name.encode()) > MAX_RESULT_NAME_BYTES:
        problem = f"it renders to {len(name.encode())} bytes"
    if problem:
        raise _refused("result_name", template, RESULT_NAME_RULE, f"{problem}, rendered as {rendered!r}")
    return name
