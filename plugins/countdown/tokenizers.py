"""A Hugging Face tokenizer behind the Countdown character tokenizer's interface, and the ids samplers suppress."""

from __future__ import annotations

from engine import BadInput

from . import task as cd


class HFCountdownTokenizer:
    """A Hugging Face tokenizer behind the :class:`~.task.CharTokenizer` interface.

    ``<bos>`` maps to the tokenizer's BOS (dropped when it has none), ``<think>`` to the text
    ``think_start`` (any number of tokens), ``</think>`` to ``think_end`` (must be one token) and
    ``<eos>`` to the tokenizer's EOS. Text between them is encoded without special tokens.
    """

    def __init__(self, path: str, think_start: str = "<think>", think_end: str = "</think>") -> None:
        from plugins.policies.hf_adapter import require_transformers

        tr = require_transformers()
        try:
            self.hf = tr.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise BadInput(
                f"plugins.countdown.tokenizer: cannot load a tokenizer from {path!r} "
                f"({str(exc).splitlines()[0][:160]}); pass a local tokenizer directory"
            ) from None
        end = self.hf.encode(think_end, add_special_tokens=False)
        if len(end) != 1:
            raise BadInput(
                f"plugins.countdown.think_end={think_end!r} is {len(end)} tokens for this tokenizer; "
                f"it must be one token (add it as a special token, or pick another)"
            )
        if self.hf.eos_token_id is None:
            raise BadInput(f"the tokenizer in {path!r} has no eos token; set one in its tokenizer_config.json")
        self.think_end_id = end[0]
        self.eos_id = int(self.hf.eos_token_id)
        self.bos_id = self.hf.bos_token_id
        pad = self.hf.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_id)
        self.think_start_ids = self.hf.encode(think_start, add_special_tokens=False)
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        specials = {
            cd.BOS: [] if self.bos_id is None else [int(self.bos_id)],
            cd.THINK: self.think_start_ids,
            cd.THINK_END: [self.think_end_id],
            cd.EOS: [self.eos_id],
        }
        i = 0
        while i < len(text):
            hit = next((s for s in specials if text.startswith(s, i)), None)
            if hit is not None:
                ids.extend(specials[hit])
                i += len(hit)
                continue
            j = min([k for k in (text.find(s, i) for s in specials) if k >= 0] or [len(text)])
            ids.extend(self.hf.encode(text[i:j], add_special_tokens=False))
            i = j
        return ids

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)


def suppress_ids_for(tok) -> tuple[int, ...]:
    """Ids a sampler must never produce: ``<pad>`` for the char tokenizer, nothing for HF vocabularies."""
    return (tok.pad_id,) if isinstance(tok, cd.CharTokenizer) else ()
