"""selfspec.weights: reading shards in every hub format, refusing damaged or mismatched weights, assembling the model."""
import pytest
import torch
import torch.nn.functional as F
from helpers import read_config, write_config
from make_tiny_checkpoint import tiny_state_dict, write_weights
from safetensors.torch import save_file

from selfspec.checkpoint import open_checkpoint
from selfspec.errors import CheckpointError
from selfspec.weights import find_weight_files, load_model


@pytest.mark.parametrize("fixture", ["tiny_7b", "tiny_13b", "tiny_7b_sharded", "tiny_13b_sharded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_gives_written_tensors(request, fixture, dtype, capsys):
    folder = request.getfixturevalue(fixture)
    written = tiny_state_dict(read_config(folder), seed=0)
    model = load_model(folder, dtype, "cpu")
    loaded = model.state_dict()
    assert loaded.keys() == written.keys()
    for key, tensor in written.items():
        expected = tensor.to(dtype)
        if key == "lm_head.weight":
            expected = F.normalize(tensor.float(), dim=1).to(dtype)
        assert loaded[key].dtype == dtype
        assert torch.equal(loaded[key], expected), key
    # The head really changed: written rows have norms far from 1.
    assert not torch.allclose(written["lm_head.weight"].float().norm(dim=1), torch.ones(1), atol=0.1)
    assert capsys.readouterr().err == ""  # no progress bar for small checkpoints


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bin_tensors_sharing_or_lacking_memory_load_as_their_own(tiny_copy, dtype):
    folder = tiny_copy(fmt="bin", seed=0)
    written = tiny_state_dict(read_config(folder), seed=0)
    stored = {k: v.to(dtype) for k, v in written.items()}
    stored["lm_head.weight"] = stored["model.embed_tokens.weight"]  # one storage: the head's normalization must
    norm = "model.layers.0.input_layernorm.weight"                 # leave the embeddings as written
    stored[norm] = stored[norm][:1].expand_as(stored[norm])  # stride 0: one number's memory for all
    torch.save(stored, folder / "pytorch_model.bin")
    model = load_model(folder, dtype, "cpu")
    embed = written["model.embed_tokens.weight"]
    assert torch.equal(model.model.embed_tokens.weight, embed.to(dtype))
    assert torch.equal(model.lm_head.weight, F.normalize(embed.to(dtype).float(), dim=1).to(dtype))
    assert torch.equal(model.model.layers[0].input_layernorm.weight, stored[norm])


def test_sharded_fixtures_have_several_shards(tiny_7b_sharded, tiny_13b_sharded):
    assert [f.name for f in find_weight_files(tiny_7b_sharded)] == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert len(find_weight_files(tiny_13b_sharded)) == 2
    assert (tiny_13b_sharded / "pytorch_model.bin.index.json").is_file()


def test_safetensors_preferred_over_bin(tiny_copy):
    folder = tiny_copy(fmt="safetensors", seed=0)
    write_weights(folder, tiny_state_dict(read_config(folder), seed=1), "sharded-bin")
    assert find_weight_files(folder) == [folder / "model.safetensors"]
    model = load_model(folder, torch.bfloat16, "cpu")
    expected = tiny_state_dict(read_config(folder), seed=0)["model.embed_tokens.weight"]
    assert torch.equal(model.model.embed_tokens.weight, expected)


def test_no_weights(tiny_copy):
    folder = tiny_copy()
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        open_checkpoint(str(folder))


def test_index_lists_missing_shard(tiny_copy):
    folder = tiny_copy(fmt="sharded-bin")
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin"):
        open_checkpoint(str(folder))


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "fmt, name, damage",
    [
        ("safetensors", "model.safetensors", truncate),
        ("safetensors", "model.safetensors", lambda p: truncate(p, keep=0.001)),
        ("bin", "pytorch_model.bin", truncate),
        ("bin", "pytorch_model.bin", lambda p: p.write_bytes(b"not a checkpoint" * 100)),
        ("bin", "pytorch_model.bin", lambda p: p.write_bytes(b"")),
        ("sharded-safetensors", "model-00002-of-00002.safetensors", truncate),
    ],
)
def test_corrupted_weights(tiny_copy, fmt, name, damage):
    folder = tiny_copy(fmt=fmt)
    damage(folder / name)
    with pytest.raises(CheckpointError, match=f"cannot read weights file .*{name}"):
        load_model(folder, torch.float32, "cpu")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_shape_mismatch(tiny_copy, fmt):
    folder = tiny_copy(fmt=fmt)
    write_config(folder, {**read_config(folder), "intermediate_size": 96})
    # Safetensors files list keys sorted, so which MLP weight is met first depends on the format.
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight has shape \(\d+, \d+\), config.json implies"):
        load_model(folder, torch.float32, "cpu")


def test_missing_key(tiny_copy):
    folder = tiny_copy()
    state = tiny_state_dict(read_config(folder))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="weights missing from the checkpoint: model.layers.1.mlp.up_proj.weight"):
        load_model(folder, torch.float32, "cpu")


def test_unexpected_key(tiny_copy):
    folder = tiny_copy(fmt="bin")
    state = tiny_state_dict(read_config(folder))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: unexpected weight 'model.layers.0.self_attn.rotary_emb"):
        load_model(folder, torch.float32, "cpu")
