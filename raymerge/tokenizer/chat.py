"""``chat_template:``: which template the output's ``chat_template.jinja`` holds (pure).

``auto`` takes the template most of the models carry (transformers' sources: the model's
``chat_template.jinja``, else ``chat_template`` in its ``tokenizer_config.json``, a list of named
templates meaning its ``default`` one), each stripped of surrounding whitespace; a tie goes to the
template of the model that comes first in the config (base first). mergekit 0.1.5 visits the
models in hash order, so its ties vary between runs. A name is one of the formats below; anything
else is a literal Jinja template (checked by the config).

The named templates are raymerge's own Jinja, written to render exactly what mergekit 0.1.5's
templates of the same names render through transformers (checked by the tests, message by
message, whitespace included), not copies of mergekit's files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from raymerge.config import MergeConfig
from raymerge.tokenizer.build import TOKENIZER_CONFIG, ModelTokenizer

_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ "
    "'<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_LLAMA3 = (
    "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' ~ m['role'] ~ '<|end_header_id|>\\n\\n' ~ (m['content'] | trim) ~ "
    "'<|eot_id|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
_MISTRAL = (
    "{% set has_system = messages and messages[0]['role'] == 'system' %}"
    "{% set turns = messages[1:] if has_system else messages %}{{ bos_token }}"
    "{% for m in turns %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('mistral template: after an optional first system message, the roles "
    "must go user, assistant, user, ...') }}{% endif %}"
    "{% if m['role'] == 'user' %}{{ ' [INST] ' }}"
    "{% if loop.first and has_system %}{{ messages[0]['content'] ~ '\\n\\n' }}{% endif %}"
    "{{ m['content'] ~ ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' ~ m['content'] ~ eos_token }}"
    "{% else %}{{ raise_exception('mistral template: only user and assistant messages (and "
    "one first system message) are supported') }}{% endif %}{% endfor %}"
)
_ALPACA = (
    "{% set system = messages | selectattr('role', 'equalto', 'system') | list %}"
    "{{ ((system | last)['content'] | trim) if system else '' }}{{ '\\n\\n' }}"
    "{% set heads = {'user': '### Instruction:\\n', 'assistant': '### Response:\\n', "
    "'user_context': '### Input:\\n'} %}"
    "{% for m in messages %}{% if m['role'] in heads %}"
    "{{ heads[m['role']] ~ (m['content'] | trim) }}{% if not loop.last %}{{ '\\n\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{ '### Response:\\n' }}{% endif %}"
)
_EXAONE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}{{ '        [|system|][|endofturn|]\\n\\n' }}"
    "{% endif %}{{ '    [|' ~ m['role'] ~ '|]' ~ m['content'] ~ '\\n        ' ~ "
    "('\\n' if m['role'] == 'user' else '[|endofturn|]\\n') ~ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '    [|assistant|]\\n' }}{% endif %}"
)
TEMPLATES = {
    "alpaca": _ALPACA,
    "chatml": _CHATML,
    "exaone": _EXAONE,
    "llama3": _LLAMA3,
    "mistral": _MISTRAL,
}


def model_template(tok: ModelTokenizer) -> str | None:
    """The chat template a model's tokenizer carries (stripped), if any."""
    data = tok.files.get("chat_template.jinja")
    if data is not None:
        text: object = data.decode("utf-8", errors="replace")
    else:
        conf = tok.json(TOKENIZER_CONFIG) or {}
        text = conf.get("chat_template")
        if isinstance(text, list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in text if isinstance(t, dict)}
            text = named.get("default")
    if not isinstance(text, str) or not text.strip():
        return None
    return text.strip()


def chat_template(cfg: MergeConfig, toks: Sequence[ModelTokenizer]) -> str | None:
    """The template the output gets (None: the output keeps its tokenizer's own).

    Args:
        cfg: the config.
        toks: per input reference, its tokenizer files.
    """
    value = cfg.chat_template
    if not value:
        return None
    if value == "auto":
        found = [t for t in (model_template(tok) for tok in toks) if t is not None]
        return Counter(found).most_common(1)[0][0] if found else None
    return TEMPLATES.get(value, value)


__all__ = ["TEMPLATES", "chat_template", "model_template"]
