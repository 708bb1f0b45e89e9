"""Personas: how an agent, or an archetype, reads in a prompt (``{persona}``).

A persona is a template (``personas.templates``) rendered over the model's features, shown in
words (``personas.labels``). An agent's persona is a function of its feature levels alone,
so every agent with the same levels of the templates' fields has the same persona; the run
stores each distinct persona once, with how many agents have it (``personas.parquet``),
which represents every agent's persona without a row per agent.

At archetype level (a decision's or a survey's ``group_by`` combination) the persona is
rendered from the archetype's own levels. So every field a persona template names must be
among the grouping's ``group_by`` (checked before the run): the archetype's persona is then
exactly its members' persona.

With several templates, the one a combination of levels gets is chosen by a hash of the run's
seed and the levels (SHA-256, not Python's salted ``hash``): the same seed renders the same
personas, on any machine.

Without a ``personas:`` block, ``{persona}`` reads ``feature: level`` for each grouped feature
(in words where the prompt's labels give them), so survey prompts always have one.
"""
from __future__ import annotations

import hashlib
import string
from typing import Iterable, Mapping

import numpy as np

from scenarios.loader import ScenarioError
from scenarios.schema import PersonaSpec


def template_fields(template: str) -> set[str]:
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def persona_fields(spec: PersonaSpec | None) -> set[str]:
    """Every feature the persona templates name."""
    if spec is None:
        return set()
    return set().union(*(template_fields(t) for t in spec.templates))


def check_personas(spec: PersonaSpec | None, features: Mapping[str, tuple] | Iterable[str],
                   has_policy: bool = True) -> None:
    """Templates name only the model's features, render, and label only known levels; a factory has a policy
    backend to ask and a prompt over {examples} and {persona}; raises ScenarioError."""
    if spec is None:
        return
    if spec.factory is not None:
        if not has_policy:
            raise ScenarioError("personas.factory", "needs a policy: block (its backend writes the backstories)")
        try:
            unknown = sorted(template_fields(spec.factory.prompt) - {"examples", "persona"})
        except ValueError as exc:
            raise ScenarioError("personas.factory.prompt", f"not a valid template: {exc}") from None
        if unknown:
            raise ScenarioError("personas.factory.prompt", f"unknown field {{{unknown[0]}}} (available: examples, "
                                "persona)")
    levels = {f: tuple(v) for f, v in features.items()} if isinstance(features, Mapping) else \
        {f: () for f in features}
    for i, t in enumerate(spec.templates):
        where = f"personas.templates[{i}]"
        try:
            fields = template_fields(t)
        except ValueError as exc:
            raise ScenarioError(where, f"not a valid template: {exc}") from None
        unknown = sorted(fields - set(levels))
        if unknown:
            raise ScenarioError(where, f"unknown field {{{unknown[0]}}} (the model's features: "
                                f"{', '.join(sorted(levels)) or 'none'})")
        try:
            t.format_map({f: (levels[f][0] if levels[f] else "label") for f in fields})
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ScenarioError(where, f"cannot be rendered: {type(exc).__name__}: {exc}") from None
    for f, words in spec.labels.items():
        if f not in levels:
            raise ScenarioError(f"personas.labels.{f}", f"unknown feature {f!r} (the model's features: "
                                f"{', '.join(sorted(levels))})")
        bad = sorted(set(words) - set(levels[f])) if levels[f] else []
        if bad:
            raise ScenarioError(f"personas.labels.{f}", f"unknown level {bad[0]!r} (levels: {', '.join(levels[f])})")


def feature_levels(model, state, params) -> dict[str, tuple[str, ...]]:
    """The model's features (what ``features()`` returns, not every labelled column) and their levels."""
    import jax

    if model.features is None:
        return {}
    names = tuple(jax.eval_shape(model.features, state, params))
    return {name: tuple(model.labels[name]) for name in names}


def check_grouping(spec: PersonaSpec | None, prompt_fields: set[str], group_by: Iterable[str], where: str) -> None:
    """A prompt that uses ``{persona}`` must group on every field the persona templates name."""
    if "backstory" in prompt_fields and (spec is None or spec.factory is None):
        raise ScenarioError(f"{where}.prompt", "uses {backstory}, which needs a personas.factory block")
    if spec is None or not {"persona", "backstory"} & prompt_fields:
        return
    missing = sorted(persona_fields(spec) - set(group_by))
    if missing:
        raise ScenarioError(f"{where}.group_by", f"the prompt uses {{persona}}, whose templates name "
                            f"{{{missing[0]}}}: add {missing[0]!r} to group_by (an archetype's persona is "
                            f"rendered from its own levels)")


def choose_template(n_templates: int, seed: int, codes: Mapping[str, str]) -> int:
    """Which template a combination of level codes gets: a SHA-256 of the seed and the codes."""
    if n_templates == 1:
        return 0
    key = f"{seed}|" + "|".join(f"{k}={codes[k]}" for k in sorted(codes))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n_templates


def render_persona(spec: PersonaSpec | None, seed: int, codes: Mapping[str, str],
                   words: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The persona of a combination of level codes (feature -> level code, at least the templates' fields).

    ``words``: the prompt's own labels, used where ``personas.labels`` has none (and for the default persona).
    """
    words = words or {}
    if spec is None:
        return "; ".join(f"{f.replace('_', ' ')}: {words.get(f, {}).get(c, c)}" for f, c in codes.items())
    fields = persona_fields(spec)
    sub = {f: codes[f] for f in sorted(fields)}
    template = spec.templates[choose_template(len(spec.templates), seed, sub)]
    shown = {f: spec.labels.get(f, {}).get(c, words.get(f, {}).get(c, c)) for f, c in sub.items()}
    return template.format_map(shown)


def persona_table(spec: PersonaSpec, seed: int, features: Mapping[str, np.ndarray],
                  labels: Mapping[str, tuple[str, ...]]) -> dict[str, list]:
    """Every distinct persona in the population, with its levels and agent count (``personas.parquet``).

    ``features``: the model's per-agent feature arrays on the host (only the templates' fields are read).
    """
    fields = sorted(persona_fields(spec))
    cols: dict[str, list] = {f: [] for f in fields}
    cols.update(template=[], persona_text=[], n_agents=[])  # "persona" may be a feature (social)
    if not fields:
        cols["template"].append(0)
        cols["persona_text"].append(render_persona(spec, seed, {}))
        n = len(np.asarray(next(iter(features.values())))) if features else 0
        cols["n_agents"].append(n)
        return cols
    arrays = [np.asarray(features[f]).astype(np.int64) for f in fields]
    combos, counts = np.unique(np.stack(arrays, axis=1), axis=0, return_counts=True)
    for row, n in zip(combos, counts):
        codes = {f: labels[f][int(v)] for f, v in zip(fields, row)}
        for f in fields:
            cols[f].append(codes[f])
        cols["template"].append(choose_template(len(spec.templates), seed, codes))
        cols["persona_text"].append(render_persona(spec, seed, codes))
        cols["n_agents"].append(int(n))
    return cols


def write_personas(run_dir, spec: PersonaSpec, seed: int, model, state, params, backend=None) -> dict:
    """``personas.parquet``: the population's distinct personas at the start of the run (see :func:`persona_table`).

    With ``personas.factory``, ``backend`` writes each persona's backstory (column ``backstory``). Returns
    ``{"backstories": {combo_key(codes): text}, "backstory_fallbacks": n, "backstory_errors": [...]}``."""
    from pathlib import Path

    import jax
    import pyarrow as pa

    from simcore.io import atomic_write_table

    fields = sorted(persona_fields(spec))
    feats = jax.device_get({k: v for k, v in model.features(state, params).items() if k in fields or not fields})
    table = persona_table(spec, seed, feats, model.labels)
    info: dict = {"backstories": {}, "backstory_fallbacks": 0, "backstory_errors": []}
    if spec.factory is not None:
        combos = [{f: table[f][i] for f in fields} for i in range(len(table["persona_text"]))]
        texts, fallbacks, errors = generate_backstories(spec, seed, backend, combos)
        table["backstory"] = texts
        info = {"backstories": {combo_key(c): t for c, t in zip(combos, texts)}, "backstory_fallbacks": fallbacks,
                "backstory_errors": errors}
    atomic_write_table(pa.table(table), Path(run_dir) / "personas.parquet")
    return info


# -- the persona factory: one LLM backstory per archetype (``personas.factory``) ------------------------------

def backstory_seed(seed: int, codes: Mapping[str, str]) -> int:
    """The sampler seed of an archetype's backstory: a SHA-256 of the run seed and its level codes."""
    key = f"backstory|{seed}|" + "|".join(f"{k}={codes[k]}" for k in sorted(codes))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


def backstory_prompt(spec: PersonaSpec, seed: int, codes: Mapping[str, str]) -> str:
    """The few-shot completion prompt of an archetype: the examples, in an order chosen by the seed, then its
    persona and an open ``Backstory:`` for a base model to continue."""
    f = spec.factory
    assert f is not None
    order = np.random.default_rng(backstory_seed(seed, codes)).permutation(len(f.examples))
    examples = "\n\n".join(f.examples[i] for i in order)
    return f.prompt.format_map({"examples": examples, "persona": render_persona(spec, seed, codes).rstrip(".")})


def clip_backstory(text: str, max_chars: int) -> str:
    """Whitespace collapsed; cut to the last sentence end within ``max_chars`` (else at ``max_chars``)."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > 0 else cut.rstrip()


def generate_backstories(spec: PersonaSpec, seed: int, backend, combos: list[dict[str, str]]
                         ) -> tuple[list[str], int, list[str]]:
    """A backstory per combination of level codes, from ``backend.complete`` (cached where the backend is a
    CachedBackend). Returns (backstories, fallbacks, errors): a generation that raises ``retries + 1`` times
    or is shorter than ``min_chars`` falls back to the persona text."""
    from .types import BackendError

    f = spec.factory
    assert f is not None
    out, fallbacks, errors = [], 0, []
    for codes in combos:
        prompt = backstory_prompt(spec, seed, codes)
        text = None
        for _ in range(f.retries + 1):
            try:
                got = clip_backstory(backend.complete(prompt, max_tokens=f.max_tokens, stop=tuple(f.stop),
                                                      temperature=f.temperature, seed=backstory_seed(seed, codes)),
                                     f.max_chars)
            except (BackendError, RuntimeError, OSError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if len(got) >= f.min_chars:
                text = got
                break
            errors.append(f"too short ({len(got)} < {f.min_chars} chars): {got!r}")
        if text is None:
            fallbacks += 1
            text = render_persona(spec, seed, codes)
        out.append(text)
    return out, fallbacks, errors


def combo_key(codes: Mapping[str, str]) -> tuple:
    return tuple(sorted(codes.items()))
