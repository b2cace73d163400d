"""Incremental detokenization and stop strings (router/httpfront/detokenize.py): the pieces add up
to the whole decoding, no piece ends inside a multi-byte character, and a stop string split over
tokens is never shown in part."""

from __future__ import annotations

import pytest

from epochserve.router.httpfront.detokenize import IncrementalDecoder, StopMatcher

TEXT = "héllo wörld 🎉 日本語 ok"


def byte_decode(ids):
    return bytes(ids).decode(errors="replace")


def pieces(decode, ids):
    decoder = IncrementalDecoder(decode)
    return [decoder.step(t) for t in ids] + [decoder.flush()]


def test_byte_tokens_add_up_to_the_text_and_no_piece_splits_a_character():
    out = pieces(byte_decode, list(TEXT.encode()))
    assert "".join(out) == TEXT
    assert all("\ufffd" not in p for p in out)
    assert out[list(TEXT.encode()).index(0xF0) + 3] == "🎉"  # the emoji's 4th byte completes it


def test_a_sample_that_ends_inside_a_character_flushes_a_replacement():
    ids = list("a🎉".encode())[:3]
    assert pieces(byte_decode, ids) == ["a", "", "", "\ufffd"]


def test_smollm2_tokens_decode_incrementally_to_the_tokenizers_own_decoding(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tokenizer.encode(TEXT + " and  double  spaces\nnew line <|im_end|>")
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    out = pieces(decode, ids)
    assert "".join(out) == decode(ids)
    assert all("\ufffd" not in p for p in out)


@pytest.mark.parametrize(
    ("stops", "chunks", "shown", "stopped"),
    [
        (["STOP"], ["ab", "cS", "TO", "Pxyz"], "abc", True),
        (["STOP"], ["abc ST", "ART"], "abc START", False),
        (["xx", "b"], ["aab", "xx"], "aa", True),  # the earliest match wins
        ([], ["a", "b"], "ab", False),
        (["\n\n"], ["a\n", "\nb"], "a", True),
    ],
)
def test_stop_strings_are_cut_out_and_never_shown_in_part(stops, chunks, shown, stopped):
    matcher = StopMatcher(stops)
    out, hit = [], False
    for chunk in chunks:
        text, hit = matcher.push(chunk)
        out.append(text)
        assert not any(
            s and s[:-1] and "".join(out).endswith(s[:-1]) and not hit for s in stops if len(s) > 1
        )
        if hit:
            break
    if not hit:
        out.append(matcher.flush())
    assert ("".join(out), hit) == (shown, stopped)


def test_the_tail_that_may_start_a_stop_string_is_held_back():
    matcher = StopMatcher(["STOP"])  # the last len("STOP") - 1 characters wait for the next text
    assert matcher.push("abc ST") == ("abc", False)
    assert matcher.push("A") == (" ", False)
    assert matcher.push("RT") == ("ST", False)
    assert matcher.flush() == "ART"


@pytest.mark.parametrize("size", [2, 3, 5, 64])
def test_chunks_decode_to_the_whole_and_never_split_a_character(size):
    ids = list(TEXT.encode())
    decoder = IncrementalDecoder(byte_decode)
    out = [decoder.extend(ids[at : at + size]) for at in range(0, len(ids), size)] + [decoder.flush()]
    assert "".join(out) == TEXT
    assert all("\ufffd" not in p for p in out)
    if size < len(ids):  # a chunk that ends inside a character emits the text before that character
        assert next(p for p in out if p) == TEXT.encode()[:size].decode(errors="ignore")
