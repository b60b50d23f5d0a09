"""chat_template: auto picks the most common template (ties: the first model's); the named
templates are raymerge's own and render what mergekit 0.1.5's render."""

from __future__ import annotations

import json

import pytest

from raymerge.config import load_config
from raymerge.tokenizer import TEMPLATES, ModelTokenizer, chat_template


def model(ref, jinja=None, conf=None):
    files = {}
    if jinja is not None:
        files["chat_template.jinja"] = jinja.encode()
    if conf is not None:
        files["tokenizer_config.json"] = json.dumps(conf).encode()
    return ModelTokenizer(ref, files, tuple(files), None)


def cfg(value, refs):
    return load_config(
        {
            "merge_method": "linear",
            "models": [{"model": r} for r in refs],
            "parameters": {"weight": 1},
            "chat_template": value,
        }
    )


def test_auto_takes_the_most_common_template_and_ties_go_to_the_first_model():
    a, b = "{{ 'A' }} template text", "{{ 'B' }} template text"
    models = [
        model("m0", jinja=f"  {b}\n"),  # stripped, as mergekit strips
        model("m1", conf={"chat_template": a}),
        model("m2", conf={"chat_template": [{"name": "default", "template": a}]}),
        model("m3"),
    ]
    assert chat_template(cfg("auto", ["m0", "m1", "m2", "m3"]), models) == a
    assert chat_template(cfg("auto", ["m0", "m1"]), models[:2]) == b
    assert chat_template(cfg("auto", ["m3"]), models[3:]) is None
    assert chat_template(cfg("chatml", ["m3"]), models[3:]) == TEMPLATES["chatml"]
    literal = "{{ messages[0]['content'] }}"
    assert chat_template(cfg(literal, ["m3"]), models[3:]) == literal


CONVERSATIONS = [
    [{"role": "user", "content": "hi "}],
    [
        {"role": "system", "content": " sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
    [
        {"role": "system", "content": "s"},
        {"role": "user_context", "content": "ctx"},
        {"role": "user", "content": "q"},
    ],
    [
        {"role": "assistant", "content": " x "},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": " y\n"},
    ],
]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_named_templates_render_as_mergekits(name):
    pytest.importorskip("mergekit")
    render = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template
    import importlib.resources

    from mergekit._data import chat_templates

    theirs = importlib.resources.files(chat_templates).joinpath(f"{name}.jinja").read_text()
    assert theirs.strip() != TEMPLATES[name]  # not a copy of the file

    def out(template, conv, gen):
        try:
            kw = dict(add_generation_prompt=gen, bos_token="<s>", eos_token="</s>")
            return render(conversations=[conv], chat_template=template, **kw)[0][0]
        except Exception as exc:  # noqa: BLE001 - both must refuse the same conversations
            return type(exc).__name__

    for conv in CONVERSATIONS:
        for gen in (False, True):
            assert out(TEMPLATES[name], conv, gen) == out(theirs, conv, gen), (conv, gen)


def test_every_accepted_template_name_has_a_template():
    """The config accepts exactly the names there are templates for (a name accepted but not
    known would be written as the bare name into chat_template.jinja)."""
    from raymerge.config.tokenizer import TEMPLATE_NAMES
    from raymerge.tokenizer.chat import TEMPLATES

    assert sorted(TEMPLATE_NAMES) == sorted(TEMPLATES)
