"""A systematic generator of bad plugin-config values for every shipped plugin (tests/fuzz).

For every plugin of the ``hookmix`` distribution (entry-point group ``hookmix.plugins``) and every field
of its ``Config``, :func:`generate` yields overrides built from the field's declared type: wrong types,
nan / inf, negative, zero, huge, wrong lengths, bad list items, values outside a ``Literal``, plus an
unknown key and a non-table value per plugin. Each case is a command line for ``hookmix train``.

Some generated values are legitimately valid for one field (``dkd.warmup_steps=-1`` means "1/12 of the
run", a reward weight may be negative, 0 is "off" or "the default" for many fields): those are listed in
:data:`VALID`, each with the reason, and the tests check that they are still accepted. Everything else
must be refused with one line at resolve time.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Literal

import attrs

#: The base command per shipped plugin: a recipe that builds fast, plus what enables the plugin. A new
#: shipped plugin without an entry here fails test_every_shipped_plugin_is_covered.
BASE = "mnist1d-mlp"
PLUGIN_BASE: dict[str, list[str]] = {
    name: ["run.plugins+=" + name]
    for name in (
        "tinyshakespeare",
        "gpt",
        "cnn1d",
        "teacher",
        "kd",
        "dkd",
        "nkd",
        "uskd",
        "logit_std",
        "cifar100",
        "resnet",
        "sgd",
        "lipschitz_gpt",
        "lipschitz_mlp",
        "muon",
        "spectral_normalize",
        "spectral_hammer",
        "spectral_soft_cap",
        "spectral_hard_cap",
        "spectral_weight_decay",
        "countdown",
        "tiny_policy",
        "hf_policy",
        "countdown_reward",
        "format_reward",
        "grpo",
        "soft_grpo",
        "passk",
        "sam",
        "dist_kd",
        "ctkd",
    )
}
PLUGIN_BASE.update({name: [] for name in ("mnist1d", "mlp", "adamw", "cross_entropy")})  # already in BASE
PLUGIN_BASE["lbfgs"] = ["run.plugins-=adamw", "run.plugins+=lbfgs"]  # an optimizer: replaces adamw

_ZERO_OFF = "0 is documented as 'off' / 'use the default' for this field"
_SIGNED = "any finite value is meaningful here"
_FREE_LIST = "a list of any length is meaningful here (items are still checked)"
_FREE_TEXT = "free text (a path, a URL, a submodule or plugin name) checked when it is used"
_HUGE_SEED = "a 64-bit seed: every value up to 2**63-1 is a valid seed"
_EMPTY_OK = "the empty list is documented (no milestones / no clamp / every consumer)"

#: (plugin, field) -> {case: reason} for generated values that are valid for that field.
VALID: dict[tuple[str, str], dict[str, str]] = {
    ("gpt", "block_size"): {"zero": _ZERO_OFF},
    ("dist_kd", "beta"): {"zero": "a weight of 0 switches the term off"},
    ("dist_kd", "gamma"): {"zero": "a weight of 0 switches the term off"},
    ("dist_kd", "weight"): {"zero": "a weight of 0 switches the term off"},
    ("ctkd", "t_end"): {"zero": "0 is documented: T stays t_start (nothing to learn)"},
    ("ctkd", "init"): {"zero": _SIGNED, "negative": _SIGNED},
    ("ctkd", "decay_steps"): {
        "zero": "0 is documented: lambda_end from the first step",
        "negative": "-1 means 1/24 of run.steps",
    },
    ("ctkd", "lambda_start"): {"zero": "the official start: no reversal yet", "negative": _SIGNED},
    ("ctkd", "lambda_end"): {"zero": _SIGNED, "negative": "the official end, -1"},
    ("lbfgs", "max_eval"): {"zero": "0 is documented as max_iter * 5 / 4 (torch's default)"},
    ("mlp", "hidden"): {"empty": "no hidden layer: a linear classifier", "short": _FREE_LIST},
    ("gpt", "dropout"): {"zero": "no dropout"},
    ("mnist1d", "seed"): {"zero": "seed 0"},
    ("adamw", "warmup_steps"): {"zero": _ZERO_OFF},
    ("adamw", "weight_decay"): {"zero": _ZERO_OFF},
    ("adamw", "min_lr_ratio"): {"zero": "decay to 0"},
    ("cross_entropy", "weight"): {"zero": "a weight of 0 switches the term off"},
    ("cross_entropy", "label_smoothing"): {"zero": _ZERO_OFF},
    ("kd", "weight"): {"zero": "a weight of 0 switches the term off"},
    ("kd", "teachers"): {"empty": "the default: the teacher of the same instance label"},
    ("dkd", "teachers"): {"empty": "the default: the teacher of the same instance label"},
    ("dkd", "alpha"): {"zero": "a weight of 0 switches the term off"},
    ("dkd", "beta"): {"zero": "a weight of 0 switches the term off"},
    ("dkd", "warmup_steps"): {"zero": _ZERO_OFF, "negative": "-1 means 1/12 of run.steps"},
    ("nkd", "gamma"): {"zero": "a weight of 0 switches the term off"},
    ("nkd", "weight"): {"zero": "a weight of 0 switches the term off"},
    ("uskd", "alpha"): {"zero": "a weight of 0 switches the term off"},
    ("uskd", "beta"): {"zero": "a weight of 0 switches the term off"},
    ("uskd", "mu"): {"zero": "a weight of 0 switches the term off"},
    ("uskd", "label_smoothing"): {"zero": _ZERO_OFF},
    ("logit_std", "kinds"): {"long": _FREE_LIST, "item_unknown": "consumer kinds are names chosen by loss plugins"},
    ("logit_std", "consumers"): {
        "empty": _EMPTY_OK,
        "item_unknown": "checked against the enabled plugins in hookmix_configure",
    },
    ("logit_std", "roles"): {"short": "one role only"},
    ("cifar100", "padding"): {"zero": "no padding: no crop"},
    ("sgd", "momentum"): {"zero": "plain SGD"},
    ("sgd", "weight_decay"): {"zero": _ZERO_OFF},
    ("lipschitz_gpt", "block_size"): {"zero": _ZERO_OFF},
    ("muon", "head_lr"): {"zero": _ZERO_OFF},
    ("muon", "momentum"): {"zero": "no momentum"},
    ("muon", "weight_decay"): {"zero": _ZERO_OFF},
    ("muon", "adam_lr"): {"zero": "freeze what Muon does not take"},
    ("muon", "adam_weight_decay"): {"zero": _ZERO_OFF},
    ("muon", "warmup_steps"): {"zero": _ZERO_OFF},
    ("muon", "final_lr_ratio"): {"zero": "decay to 0 (the paper's default)"},
    **{
        (cap, "head_w_max"): {"zero": _ZERO_OFF}
        for cap in ("spectral_normalize", "spectral_hammer", "spectral_soft_cap", "spectral_hard_cap")
    },
    **{
        (cap, "emb_max_rms"): {"zero": _ZERO_OFF}
        for cap in (
            "spectral_normalize",
            "spectral_hammer",
            "spectral_soft_cap",
            "spectral_hard_cap",
            "spectral_weight_decay",
        )
    },
    **{
        (cap, "groups"): {"short": "a subset of the groups"}
        for cap in (
            "spectral_normalize",
            "spectral_hammer",
            "spectral_soft_cap",
            "spectral_hard_cap",
            "spectral_weight_decay",
        )
    },
    ("spectral_weight_decay", "strength"): {"zero": "no decay"},
    ("countdown", "val_problems"): {"zero": _ZERO_OFF},
    ("countdown", "heldout_seed"): {"zero": "seed 0", "huge": _HUGE_SEED},
    ("countdown", "n_numbers"): {"long": _FREE_LIST, "short": _FREE_LIST},
    ("countdown", "step_corrupt_rate"): {"zero": _ZERO_OFF},
    ("countdown", "answer_corrupt_rate"): {"zero": _ZERO_OFF},
    ("tiny_policy", "d_ff"): {"zero": _ZERO_OFF},
    ("tiny_policy", "max_len"): {"zero": _ZERO_OFF},
    ("hf_policy", "intermediate_size"): {"zero": _ZERO_OFF},
    ("hf_policy", "max_positions"): {"zero": _ZERO_OFF},
    **{
        (r, "weight"): {"zero": "a weight of 0 switches the reward off", "negative": "a penalty"}
        for r in ("countdown_reward", "format_reward")
    },
    ("tiny_policy", "dropout"): {"zero": "no dropout (the RL default)"},
    **{
        (rl, key): {"zero": _ZERO_OFF}
        for rl in ("grpo", "soft_grpo")
        for key in ("min_p", "think_cap", "clip_eps_high", "dual_clip", "kl_coef", "adv_eps", "seed_offset", "delta")
    },
    **{
        (rl, key): {"zero": _ZERO_OFF} for rl in ("grpo", "soft_grpo") for key in ("dynamic_sampling", "overlong_cache")
    },
    **{(rl, "overlong_factor"): {"zero": "a weight of 0 switches the term off"} for rl in ("grpo", "soft_grpo")},
    **{
        (rl, key): {"zero": "VESPO's gamma weight is defined for k = 0 (no power term) and floors λ at 1e-4 (TRL)"}
        for rl in ("grpo", "soft_grpo")
        for key in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")
    },
    ("soft_grpo", "mask_logq_min"): {"negative": _SIGNED, "zero": _SIGNED},
    **{("soft_grpo", key): {"empty": _EMPTY_OK} for key in ("gumbel_clamp", "likelihood_clamp")},
    ("passk", "ks"): {"long": _FREE_LIST, "short": _FREE_LIST},
    ("passk", "modes"): {"short": "one decoding only"},
    ("passk", "taus"): {
        "empty": "no soft decoding (checked with modes in hookmix_configure)",
        "short": "no soft decoding (checked with modes in hookmix_configure)",
        "long": _FREE_LIST,
    },
    ("passk", "think_cap"): {"zero": "no thinking tokens"},
    ("passk", "seed"): {"zero": "seed 0"},
    ("sgd", "milestones"): {"empty": _EMPTY_OK, "item_huge": "a milestone after the last step never fires"},
}
# gkd (plugins/gkd): its base command and the generated values that are valid for its fields
PLUGIN_BASE["gkd"] = ["run.plugins+=gkd"]
VALID.update(
    {
        ("gkd", "lmbda"): {"zero": "0 is documented: every batch off-policy"},
        ("gkd", "beta"): {"zero": "0 is documented: the forward KL"},
        ("gkd", "weight"): {"zero": "a weight of 0 switches the term off"},
        ("gkd", "teachers"): {"empty": "the default: the plain teacher"},
        **{("gkd", key): {"zero": _ZERO_OFF} for key in ("top_k", "think_cap", "sample_chunks", "seed_offset")},
    }
)
#: Free-text string fields: any string is accepted at resolve time and checked when used.
FREE_TEXT = {
    ("tinyshakespeare", "path"),
    ("teacher", "run"),
    ("uskd", "feature"),
    ("cifar100", "path"),
    ("countdown", "tokenizer"),
    ("countdown", "think_start"),
    ("countdown", "think_end"),
    ("tiny_policy", "init_from"),
    ("hf_policy", "path"),
    ("hf_policy", "init_from"),
}


@dataclass(frozen=True)
class Case:
    plugin: str
    field: str  # "" for the plugin-level cases
    kind: str
    override: str

    @property
    def id(self) -> str:
        return f"{self.plugin}.{self.field or '<table>'}:{self.kind}"

    def argv(self, out: str) -> list[str]:
        return ["train", BASE, *PLUGIN_BASE[self.plugin], "run.steps=1", self.override, "--out", out]


def shipped_plugins() -> dict[str, type]:
    """{name: plugin class} for every entry point of the hookmix distribution."""
    out = {}
    for ep in entry_points(group="hookmix.plugins"):
        if ep.dist is not None and ep.dist.name == "hookmix":
            out[ep.name] = ep.load()
    return out


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _scalar_cases(t) -> list[tuple[str, str]]:
    """(kind, TOML value) for a scalar type."""
    if typing.get_origin(t) is Literal:
        return [("not_allowed", '"no-such-choice"'), ("int", "5"), ("list", '["a"]')]
    if t is bool:
        return [("string", '"yes"'), ("int", "1"), ("list", "[true]")]
    if t is float:
        return [
            ("nan", "nan"),
            ("inf", "inf"),
            ("-inf", "-inf"),
            ("string", '"abc"'),
            ("bool", "true"),
            ("list", "[1.0]"),
            ("negative", "-1.0"),
            ("zero", "0.0"),
            ("huge", "1e300"),
            ("huge_negative", "-1e300"),
        ]
    if t is int:
        return [
            ("float", "1.5"),
            ("string", '"abc"'),
            ("bool", "true"),
            ("list", "[1]"),
            ("negative", "-1"),
            ("zero", "0"),
            ("huge", str(2**63 - 1)),
            ("huge_negative", str(-(2**63))),
            ("beyond_int64", "99999999999999999999999"),
        ]
    if t is str:
        return [("int", "5"), ("list", '["a"]'), ("bool", "true")]
    raise TypeError(f"no fuzz cases for type {t!r}: extend tests/fuzz/plugin_config_cases.py")


def _list_cases(t, default: list) -> list[tuple[str, str]]:
    item = (typing.get_args(t) or (str,))[0]
    cases = [("scalar", _scalar_cases(item)[0][1] if item is str else "1"), ("nested", "[[1]]"), ("empty", "[]")]
    if item is str:
        cases = [
            ("scalar", '"hidden"'),
            ("nested", '[["a"]]'),
            ("empty", "[]"),
            ("item_int", "[5]"),
            ("item_unknown", '["no-such-value"]'),
        ]
    for kind, value in _scalar_cases(item):
        if kind in ("nan", "inf", "negative", "zero", "huge", "float", "string", "bool"):
            cases.append((f"item_{kind}", f"[{value}]"))
    if default:
        cases.append(("short", _toml(default[:-1])))
        cases.append(("long", _toml(default + [default[-1]] * 2000)))
    return cases


def field_cases(plugin: str, f: attrs.Attribute) -> list[Case]:
    t = f.type
    default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default
    if typing.get_origin(t) is list or t is list:
        raw = _list_cases(t, default)
    else:
        raw = _scalar_cases(t)
    out = []
    for kind, value in raw:
        if (plugin, f.name) in FREE_TEXT and kind == "item_unknown":
            continue
        out.append(Case(plugin, f.name, kind, f"plugins.{plugin}.{f.name}={value}"))
    return out


def generate(plugins: dict[str, type] | None = None) -> list[Case]:
    """Every case for every shipped plugin, in a stable order."""
    plugins = shipped_plugins() if plugins is None else plugins
    cases = []
    for name in sorted(plugins):
        config = getattr(plugins[name], "Config", None)
        cases.append(Case(name, "", "unknown_key", f"plugins.{name}.no_such_key=1"))
        cases.append(Case(name, "", "not_a_table", f"plugins.{name}=5"))
        if config is None:
            continue
        attrs.resolve_types(config)
        for f in attrs.fields(config):
            cases.extend(field_cases(name, f))
    return cases


def expected_valid(case: Case) -> str | None:
    """The reason a generated value is valid for its field, or None when it must be refused."""
    if case.field and (case.plugin, case.field) in FREE_TEXT and case.kind in ("item_unknown",):
        return _FREE_TEXT
    return VALID.get((case.plugin, case.field), {}).get(case.kind)
