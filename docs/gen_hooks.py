"""Regenerate docs/hooks.md from engine/hookspecs.py: `python docs/gen_hooks.py`.

tests/engine checks that every hook has a section here, so a new hook cannot go undocumented.
"""

import inspect
import pathlib
import textwrap

from engine import hookspecs, loop

HEADER = """# The hook contract

Every hook a plugin can implement, generated from `engine/hookspecs.py` (run
`python docs/gen_hooks.py` after changing it). Hooks are grouped by loop phase and listed in
the order the loop fires them. To write a plugin, start with the tutorial in
[contrib/hookmix-ema/README.md](../contrib/hookmix-ema/README.md).

## Calling conventions

Each spec declares its convention (`@spec(kind, ...)` in `engine/hookspecs.py`, recorded on the
function as `convention`); the manager (validation, hook callers, the plan), the FSDP full-weight
rule and this page all read that one declaration. The kinds:
"""


def describe(convention: hookspecs.Convention) -> str:
    """The convention line of a hook's section."""
    text = f"Convention: **{convention.kind}**"
    if convention.kind == "fold":
        text += f" over `{convention.into}`"
    elif convention.kind == "merge":
        into = f"`{convention.into}`" if convention.into else "one dict"
        text += f" of named {convention.names}s into {into} (a name returned twice: an error naming both plugins)"
    text += "."
    if convention.fsdp_weights == "gathered":
        text += " Under FSDP: gathered full weights (docs/distributed.md)."
    elif convention.fsdp_weights == "shards":
        text += " Under FSDP: row shards only; a plugin with `needs_full_weights = True` may not implement it."
    return text


def main() -> None:
    source = inspect.getsource(hookspecs)
    intro = textwrap.dedent(hookspecs.__doc__.split("**calling convention**:", 1)[1]).strip()
    parts = [HEADER, intro, "", "## Where each hook fires", "", "```", textwrap.dedent(loop.__doc__.split("::", 1)[1]).strip("\n"), "```", ""]
    phase = None
    for line in source.splitlines():
        if line.startswith("# --- "):
            phase = line.strip("# -")
            parts += [f"## {phase}", ""]
        elif line.startswith("def hookmix_"):
            name = line[4:].split("(")[0]
            fn = getattr(hookspecs, name)
            sig = str(inspect.signature(fn)).replace("'", "")
            parts += [f"### {name}", "", f"`{name}{sig}`", "", describe(fn.convention), "",
                      inspect.getdoc(fn), ""]
    pathlib.Path(__file__).with_name("hooks.md").write_text("\n".join(parts).rstrip() + "\n")


if __name__ == "__main__":
    main()
