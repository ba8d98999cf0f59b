"""GGUF files (llama.cpp's format) as a Hugging Face model: weights dequantized to fp32.

transformers reads a GGUF file's config, tokenizer and weights (`gguf_file=`), but the model
it returns keeps a `quantization_config` that makes it refuse `save_pretrained` and marks it
as quantized for every later step. The weights are plain fp32 tensors by then, so the model
is rebuilt from its config without that entry: an ordinary model that fst-export traces and
fst-train fine-tunes like any Hugging Face folder. The GGUF weight type ("Q4_1", "Q8_0",
...) is read with the `gguf` package, so the bundle can say what its weights were
dequantized from.

Every failure is a `GGUFError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"


class GGUFError(ValueError):
    """The GGUF file cannot be read or is not a model fst supports; one line."""


@dataclass
class GGUFModel:
    model: Any  # transformers.PreTrainedModel, fp32, eval mode
    tokenizer: Any  # transformers' fast tokenizer (chat template included when the file has one)
    weight_type: str  # "Q4_1", "Q8_0", "F16", ...
    architecture: str  # general.architecture: "llama", "qwen2", ...
    path: Path

    @property
    def source_format(self) -> str:
        """What the manifest records: 'GGUF Q4_1'."""
        return f"GGUF {self.weight_type}"

    def as_folder(self) -> contextlib.AbstractContextManager[Path]:
        """A temporary Hugging Face folder of the tokenizer files (tokenizer.json,
        tokenizer_config.json, the chat template) and generation_config.json, so that
        the tokenizer and chat template are read as from any model folder."""
        return _saved(self.tokenizer, self.model.generation_config)


@contextlib.contextmanager
def _saved(*parts: Any) -> Iterator[Path]:
    """`save_pretrained` of each part into one temporary folder."""
    with tempfile.TemporaryDirectory(prefix="fst-gguf-") as folder:
        for part in parts:
            part.save_pretrained(folder)
        yield Path(folder)


def find_gguf(model_path: str | Path) -> Path | None:
    """The GGUF file `model_path` names: a `.gguf` file, or a folder holding exactly one
    `.gguf` file and no config.json (a Hugging Face folder wins). None: not a GGUF source."""
    path = Path(model_path).expanduser()
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise GGUFError(f"{path}: several GGUF files ({names}); name the one to load")
    return found[0] if found else None


def read_header(path: Path) -> tuple[str, str]:
    """(architecture, weight type) from the file's metadata, without loading any tensor."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated file, a wrong magic number...
        raise GGUFError(f"{path}: not a readable GGUF file ({_first_line(e)})") from e
    field = reader.get_field("general.architecture")
    if field is None:
        raise GGUFError(f"{path}: GGUF file without general.architecture")
    architecture = str(field.contents())
    return architecture, _weight_type(reader)


def _weight_type(reader: Any) -> str:
    """general.file_type by name (MOSTLY_Q4_1 → Q4_1), else the commonest tensor type of the
    matrices (small vectors stay F32 in every GGUF file)."""
    import gguf

    field = reader.get_field("general.file_type")
    if field is not None:
        try:
            return gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    matrices = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
    return matrices.most_common(1)[0][0] if matrices else "unknown"


def load_gguf(model_path: str | Path, overrides: dict[str, Any] | None = None) -> GGUFModel:
    """The model (fp32, eval mode) and tokenizer of a GGUF file or a folder holding one;
    `overrides` are config settings (fst-train's --model_overrides)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = find_gguf(model_path)
    if path is None:
        raise GGUFError(f"{model_path}: not a .gguf file or a folder holding one")
    architecture, weight_type = read_header(path)
    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # transformers: "GGUF model with architecture X is not supported"
        raise GGUFError(
            f"{path}: GGUF architecture {architecture!r} cannot be loaded ({_first_line(e)})"
        ) from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as e:
        raise GGUFError(f"{path}: cannot read the tokenizer ({_first_line(e)})") from e
    try:
        # transformers' dequantization draws a tqdm bar on stderr that no setting turns off.
        with contextlib.redirect_stderr(io.StringIO()):
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    except Exception as e:
        raise GGUFError(f"{path}: cannot load the weights ({_first_line(e)})") from e
    model = _plain_copy(loaded, config, overrides or {}, path)
    log.info("%s: %s model, weights dequantized from %s", path, architecture, weight_type)
    return GGUFModel(model.eval(), tokenizer, weight_type, architecture, path)


def gguf_folder(path: Path) -> contextlib.AbstractContextManager[Path]:
    """A temporary Hugging Face folder of a GGUF file's tokenizer files (its chat template
    included): what fst-train reads a GGUF model's chat template from."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise GGUFError(f"{path}: cannot read the tokenizer ({_first_line(e)})") from e
    return _saved(tokenizer)


def gguf_tokenizer(model_path: str | Path, **settings: Any) -> Any:
    """The GGUF file's tokenizer as fst's `DocumentTokenizer` (fst-train's own tokenizer
    for a GGUF model: the EOS and BOS it declares, as for a Hugging Face folder)."""
    from fst.core.tokenization import DocumentTokenizer

    path = find_gguf(model_path)
    if path is None:
        raise GGUFError(f"{model_path}: not a .gguf file or a folder holding one")
    with gguf_folder(path) as folder:
        return DocumentTokenizer.from_pretrained(folder, **settings)


def _plain_copy(loaded: Any, config: Any, overrides: dict[str, Any], path: Path) -> Any:
    """The same weights in a model built from a config without `quantization_config`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {**loaded.config.to_dict(), **overrides}
    settings.pop("quantization_config", None)
    model_type = settings.pop("model_type", config.model_type)
    plain = AutoConfig.for_model(model_type, **settings)
    model = AutoModelForCausalLM.from_config(plain, dtype="float32")
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is not in the state dict of either side's saved form; anything else is.
    missing = [k for k in missing if not (plain.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise GGUFError(
            f"{path}: weights do not match the config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.tie_weights()
    model.generation_config = loaded.generation_config
    return model


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
