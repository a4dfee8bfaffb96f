"""ComfyUI's progress bar while Fastlane Compile builds its graphs.

Why: the first sampling run of a compiled MODEL can sit in compilation for minutes at step 0 of the sampler's bar.
Each compiled function (one per region kind, or the whole model) compiles on its first call; this advances a
``comfy.utils.ProgressBar`` by one when that call returns, so the node's bar moves as graphs get built. Later calls
(a new shape recompiling included) report nothing and run the compiled function without this wrapper.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable


class FirstCompileProgress:
    """One per Compiler: which compiled functions have had their first (compiling) call, and the bar counting them."""

    def __init__(self) -> None:
        self.done: set[Hashable] = set()
        self._bar = None

    def expect(self, keys: set[Hashable]) -> None:
        """The compiled functions this model call will run: open a bar over them if some still have to compile."""
        pending = keys - self.done
        if not pending:
            self._bar = None
            return
        if self._bar is None:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(len(keys))
            if len(keys) > len(pending):
                self._bar.update_absolute(len(keys) - len(pending))

    def first_call(self, key: Hashable, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, ticking the bar once when its first call returns (``fn`` itself once that has happened)."""
        if key in self.done:
            return fn

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            if key not in self.done:
                self.done.add(key)
                if self._bar is not None:
                    self._bar.update(1)
            return out

        return call
