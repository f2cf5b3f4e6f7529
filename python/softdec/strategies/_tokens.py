"""Token ids given as strings (``think_end_token_id="</think>"``), converted with a tokenizer."""

from __future__ import annotations


def resolve_token_id(value, tokenizer, name: str):
    """``value`` as a token id: an int is returned as is (None too); a string is converted with
    ``tokenizer`` and must map to exactly one id (ValueError otherwise, naming ``name``)."""
    if value is None or not isinstance(value, str):
        return value
    if tokenizer is None:
        raise ValueError(f"{name}={value!r} is a string: pass tokenizer= (to the strategy or to "
                         f"softdec.hf.generate) to convert it to a token id")
    ids = None
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        try:
            ids = list(encode(value, add_special_tokens=False))
        except TypeError:
            ids = list(encode(value))
    if ids is None or len(ids) != 1:
        # a special / added token may not survive encode's pre-tokenisation: ask the vocabulary directly
        conv = getattr(tokenizer, "convert_tokens_to_ids", None)
        one = conv(value) if callable(conv) else None
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(one, int) and one >= 0 and (one != unk or value == getattr(tokenizer, "unk_token", None)):
            ids = [one]
    if ids is None or len(ids) != 1:
        got = "no token" if not ids else f"{len(ids)} tokens {ids}"
        raise ValueError(f"{name}={value!r} must map to exactly one token id with the tokenizer, got {got}")
    tid = int(ids[0])
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and tid == unk and value != getattr(tokenizer, "unk_token", None):
        raise ValueError(f"{name}={value!r} is not in the tokenizer's vocabulary (it maps to the unknown token)")
    return tid
