"""Tokenizers built on this machine, for the demo pipelines: nothing is downloaded.

The real pipelines ship their tokenizers; the tiny random-weight demo pipelines need ones that load
with the same transformers classes and behave the same way (padding, truncation, special tokens), but
their vocabularies only have to be valid, not good. Each is trained in well under a second on a small
built-in corpus, deterministically, so two builds give the same ids.

- CLIP (SD, FLUX): a byte-level BPE with CLIP's word-end suffix ``</w>``, loaded as ``CLIPTokenizer``.
  We train it instead of taking OpenAI's vocabulary from the ``open_clip_torch``/``clip-anytorch``
  wheels: both pull ``torchvision``, which would have to match the CPU torch build, for one data file.
- T5 (FLUX): a sentencepiece unigram model, loaded as ``T5Tokenizer``.
- GLM (CogView4): a byte-level BPE wrapped in ``PreTrainedTokenizerFast``, padding on the left like
  GLM-4's tokenizer.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

# Prompts of the kind the stack serves, plus digits and punctuation so that every byte class occurs.
# Changing this text changes the vocabularies (and so the demo pipelines' outputs).
CORPUS: tuple[str, ...] = (
    "A painting of a squirrel eating a burger",
    "a photo of an astronaut riding a horse on the moon, 4k, highly detailed",
    "Make the sky purple and add two moons above the mountains",
    "Replace the red car with a blue bicycle; keep the street unchanged",
    "portrait of an old fisherman, oil on canvas, dramatic lighting",
    "a watercolor map of a small harbour town at sunrise",
    "Turn this photo into a pencil sketch with soft shading",
    "a cat wearing sunglasses, sitting on a stack of books (studio photo)",
    "isometric pixel art of a cozy cabin in the snowy forest",
    "Add the text 'OPEN 24/7' to the sign above the door",
    "close-up of dew drops on a spider web, macro, f/2.8, 1/250 s",
    "a bowl of ramen with chopsticks, steam rising, neon-lit night market",
    "Remove the people in the background and extend the beach",
    "cyberpunk city street in the rain, reflections, 35mm film grain",
    "a children's book illustration of a fox and a hedgehog sharing tea",
    "Change the season to autumn: orange leaves, low sun, long shadows",
    "minimalist logo of a mountain and a river, flat vector, two colours",
    "the quick brown fox jumps over the lazy dog 0123456789",
    "THE FIVE BOXING WIZARDS JUMP QUICKLY! What? Yes: #1, @home, $5 & 100% [ok] {x} <y> ~z",
    "bad, blurry, low quality, extra fingers, watermark, jpeg artifacts",
    "dance monkey",
)

CLIP_VOCAB_SIZE = 1000
T5_VOCAB_SIZE = 400  # sentencepiece pieces; T5Tokenizer adds its 100 sentinel tokens on top
GLM_VOCAB_SIZE = 600


def _corpus_lines(repeats: int = 4) -> list[str]:
    return [line for _ in range(repeats) for line in CORPUS]


def build_clip_tokenizer(vocab_size: int = CLIP_VOCAB_SIZE, model_max_length: int = 77):
    """A ``CLIPTokenizer`` with CLIP's pre-tokenization and special tokens and a locally trained BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    # Train with the same normalization and pre-tokenization CLIPTokenizer applies, so that the merges
    # are learned on exactly the pieces the tokenizer will later see.
    reference = CLIPTokenizer()
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = reference.backend_tokenizer.normalizer
    tokenizer.pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    base = sorted(alphabet) + [symbol + "</w>" for symbol in sorted(alphabet)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]

    # CLIP's layout: every byte alone and as a word end, then the merged tokens in merge order, then
    # the two special tokens. Merges the size limit cuts off are dropped with their tokens.
    vocab: dict[str, int] = {}
    for token in base:
        vocab.setdefault(token, len(vocab))
    kept_merges = []
    for left, right in merges:
        if len(vocab) >= vocab_size - 2:
            break
        if left in vocab and right in vocab and left + right not in vocab:
            vocab[left + right] = len(vocab)
            kept_merges.append((left, right))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=kept_merges, model_max_length=model_max_length)


def build_t5_tokenizer(vocab_size: int = T5_VOCAB_SIZE, model_max_length: int = 512):
    """A ``T5Tokenizer`` over a sentencepiece unigram model trained on the built-in corpus."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "t5")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus_lines()),
            model_prefix=prefix,
            model_type="unigram",
            vocab_size=vocab_size,
            # T5's ids: pad 0, eos 1, unk 2, no bos.
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            hard_vocab_limit=False,  # a small corpus may not fill the vocabulary
            character_coverage=1.0,
            num_threads=1,  # deterministic
            minloglevel=2,
        )
        processor = spm.SentencePieceProcessor(model_file=prefix + ".model")
        # T5Tokenizer is built on `tokenizers`' Unigram model from (piece, score) pairs. Like T5's own
        # vocabulary it has no byte fallback: characters the corpus lacks become <unk>.
        pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=pieces, model_max_length=model_max_length)


def build_glm_tokenizer(vocab_size: int = GLM_VOCAB_SIZE, model_max_length: int = 1024):
    """A GLM-like byte-level BPE tokenizer (``PreTrainedTokenizerFast``), padding on the left."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sop]", "<sop>", "<eop>", "<|user|>", "<|assistant|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    # Like GLM-4's tokenizer, every text starts with "[gMASK]<sop>", so even an empty negative prompt
    # encodes to a non-empty sequence.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A",
        special_tokens=[("[gMASK]", tokenizer.token_to_id("[gMASK]")), ("<sop>", tokenizer.token_to_id("<sop>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=model_max_length,
    )
