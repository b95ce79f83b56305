"""``run.compile = true``: the model's forward compiled with ``torch.compile``.

The model is compiled in place (``nn.Module.compile``), so its ``state_dict`` keys, attributes
and checkpoints are unchanged and every plugin keeps the module it built. What does not become
one graph, and is said in the plan so nobody wonders about the speed:

- torch forward hooks that plugins registered on the model's submodules (a feature capture
  writing to a Python attribute) are traced with the forward; their side effects make dynamo
  break the graph there, so the model runs as several compiled pieces around eager hooks;
- a plugin implementing ``hookmix_forward`` may call the model's submodules directly instead of
  ``model(...)``; such calls bypass the compiled ``__call__`` and run eagerly.

On a CPU, inductor needs a C++ compiler; without one the run says so and stays eager.
"""

from __future__ import annotations

import shutil

import torch


def compile_model(model: torch.nn.Module, manager) -> list[str]:
    """Compile ``model`` in place if possible; the plan lines that describe what happened."""
    if not hasattr(torch, "compile") or not hasattr(model, "compile"):
        return ["compile: this torch has no torch.compile; running eager"]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "c++", "g++")):
        return ["compile: warning: no C++ compiler found, which inductor needs on CPU; running eager"]
    lines = ["compile: model compiled in place with torch.compile (first steps are slower while it compiles)"]
    hooked = [name or "<model>" for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        lines.append(
            f"compile: warning: forward hooks on {', '.join(hooked[:4])} (registered by plugins) "
            f"break the graph there; those modules' hooks run eagerly between compiled pieces"
        )
    forward = manager.providers("hookmix_forward")
    if forward:
        lines.append(
            f"compile: warning: plugin {forward[0]!r} implements hookmix_forward; calls it makes "
            f"to submodules instead of model(...) run eagerly"
        )
    model.compile()
    return lines
