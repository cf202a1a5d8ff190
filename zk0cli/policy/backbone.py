"""Local SmolVLM backbones written from code, so SmolVLA builds without the Hugging Face Hub.

SmolVLA always reads its VLM's config and processor (tokenizer, image processor) through
``vlm_model_name``. A directory holding those files is enough when ``load_vlm_weights=False``:
the VLM then starts from random weights, identical on every node when seeded alike (see
``build.py``). Two geometries:

- ``tiny``: a few hundred thousand parameters; the real ``SmolVLAPolicy`` trains on a CPU at a
  few hundredths of a second a step (tests, the demo, ``zk0 sim`` offline).
- ``real geometry``: the layer sizes of ``HuggingFaceTB/SmolVLM2-500M-Video-Instruct`` (random
  weights, no download) for measuring bytes on the wire, memory and step time.

Both use the same small byte-level tokenizer: every task string tokenizes (one token per UTF-8
byte), and its ids fit any embedding table of at least ``len(vocab)`` rows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from zk0cli.core.errors import bad_input, env_not_ready
from zk0cli.core.files import read_json
from zk0cli.core.paths import Paths

TINY_NAME = "tiny-smolvlm"
REAL_GEOMETRY_NAME = "smolvlm2-500m-geometry"
MARKER_FILE = "zk0-backbone.json"  # written last; a directory without it is not one of ours
BACKBONE_FORMAT = 1  # bump when the files written here change, so old directories are rebuilt

# Special tokens SmolVLM's processor and SmolVLA look up by attribute name on the tokenizer.
_SPECIAL_TOKENS = {
    "pad_token": "<|endoftext|>",
    "bos_token": "<|im_start|>",
    "eos_token": "<end_of_utterance>",
}
_EXTRA_SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}


@dataclass(frozen=True)
class BackboneGeometry:
    """The sizes that define a SmolVLM (a llama text model plus a SigLIP-style vision tower)."""

    name: str
    text_hidden_size: int
    text_intermediate_size: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_head_dim: int
    text_vocab_size: int | None  # None: the tokenizer's own vocabulary size
    max_position_embeddings: int
    rope_theta: float
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_layers: int
    vision_heads: int
    image_size: int  # SmolVLA's resize_imgs_with_padding must match it
    patch_size: int
    scale_factor: int  # pixel-shuffle factor of the connector

    @property
    def image_seq_len(self) -> int:
        """Image tokens per image after pixel shuffle, as SmolVLM's processor expects."""
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


TINY = BackboneGeometry(
    name=TINY_NAME,
    text_hidden_size=64,
    text_intermediate_size=128,
    text_layers=4,
    text_heads=4,
    text_kv_heads=2,
    text_head_dim=16,
    text_vocab_size=None,
    max_position_embeddings=512,
    rope_theta=10_000.0,
    vision_hidden_size=32,
    vision_intermediate_size=64,
    vision_layers=1,
    vision_heads=2,
    image_size=64,
    patch_size=16,
    scale_factor=2,
)

# HuggingFaceTB/SmolVLM2-500M-Video-Instruct: SmolLM2-360M text model (32 layers; SmolVLA keeps
# the first 16) and a SigLIP base-patch16-512 vision tower. With SmolVLA's defaults this gives
# ~450M parameters, ~100M of them trainable (the action expert and projections).
SMOLVLM2_500M = BackboneGeometry(
    name=REAL_GEOMETRY_NAME,
    text_hidden_size=960,
    text_intermediate_size=2560,
    text_layers=32,
    text_heads=15,
    text_kv_heads=5,
    text_head_dim=64,
    text_vocab_size=49280,
    max_position_embeddings=8192,
    rope_theta=100_000.0,
    vision_hidden_size=768,
    vision_intermediate_size=3072,
    vision_layers=12,
    vision_heads=12,
    image_size=512,
    patch_size=16,
    scale_factor=4,
)


def default_backbone_dir(name: str) -> Path:
    """Where zk0 keeps a backbone it writes: ``<data dir>/backbones/<name>``."""
    return Paths.resolve().data_dir / "backbones" / name


def ensure_tiny_backbone(directory: Path | None = None) -> Path:
    """Write the tiny SmolVLM config and processor once into ``directory`` and return it."""
    return ensure_backbone(TINY, directory)


def write_real_geometry_backbone(directory: Path | None = None) -> Path:
    """Write the SmolVLM2-500M geometry (config and processor, no weights) once and return it."""
    return ensure_backbone(SMOLVLM2_500M, directory)


def ensure_backbone(geometry: BackboneGeometry, directory: Path | None = None) -> Path:
    """Idempotent and safe against concurrent callers: build in a temp dir, then rename."""
    directory = Path(directory) if directory is not None else default_backbone_dir(geometry.name)
    if _is_complete(directory, geometry):
        return directory
    if directory.exists():
        if not (directory / MARKER_FILE).exists():
            raise bad_input(
                f"{directory} exists but is not a zk0 backbone directory",
                hint="remove it or choose another directory",
            )
        shutil.rmtree(directory, ignore_errors=True)  # written by an older zk0: rebuild it
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    except OSError as exc:
        raise env_not_ready(
            f"cannot write the backbone into {directory.parent}: {exc.strerror}",
            hint="check that the directory is writable, or point ZK0_HOME at one that is",
        ) from exc
    try:
        _write_backbone(geometry, staging)
        os.rename(staging, directory)
    except OSError:
        if not _is_complete(directory, geometry):  # another process won the race: use its copy
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _is_complete(directory: Path, geometry: BackboneGeometry) -> bool:
    marker = read_json(directory / MARKER_FILE, default=None)
    if not isinstance(marker, dict):
        return False
    return marker.get("format") == BACKBONE_FORMAT and marker.get("geometry") == asdict(geometry)


def _write_backbone(geometry: BackboneGeometry, directory: Path) -> None:
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    tokenizer = _byte_level_tokenizer()
    image_size = {"longest_edge": geometry.image_size}
    image_processor = SmolVLMImageProcessor(do_image_splitting=False, size=image_size, max_image_size=image_size)
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=geometry.image_seq_len,
    )
    processor.save_pretrained(directory)

    vocab_size = geometry.text_vocab_size or len(tokenizer)
    # transformers 5 generates SmolVLMConfig.__init__ from its fields, which mypy cannot see.
    config = SmolVLMConfig(  # type: ignore[call-arg]
        text_config={
            "model_type": "llama",
            "hidden_size": geometry.text_hidden_size,
            "intermediate_size": geometry.text_intermediate_size,
            "num_hidden_layers": geometry.text_layers,
            "num_attention_heads": geometry.text_heads,
            "num_key_value_heads": geometry.text_kv_heads,
            "head_dim": geometry.text_head_dim,
            "vocab_size": vocab_size,
            "max_position_embeddings": geometry.max_position_embeddings,
            "rope_theta": geometry.rope_theta,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": geometry.vision_hidden_size,
            "intermediate_size": geometry.vision_intermediate_size,
            "num_hidden_layers": geometry.vision_layers,
            "num_attention_heads": geometry.vision_heads,
            "image_size": geometry.image_size,
            "patch_size": geometry.patch_size,
        },
        scale_factor=geometry.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(_EXTRA_SPECIAL_TOKENS["image_token"]),
        pad_token_id=tokenizer.pad_token_id,
        vocab_size=vocab_size,
    )
    config.save_pretrained(directory)
    marker = {"format": BACKBONE_FORMAT, "geometry": asdict(geometry)}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _byte_level_tokenizer():
    """A tokenizer with one token per UTF-8 byte plus SmolVLM's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([*_SPECIAL_TOKENS.values(), *_EXTRA_SPECIAL_TOKENS.values()]))
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(specials + byte_symbols)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=_SPECIAL_TOKENS["pad_token"],
        extra_special_tokens=dict(_EXTRA_SPECIAL_TOKENS),
        **_SPECIAL_TOKENS,
    )
