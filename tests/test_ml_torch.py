"""PyTorch: state dicts encrypted at rest, and the dataset that streams encrypted CSV files to a DataLoader."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch tests need ppml[torch]: pip install 'torch==2.13.0'")

import ppml  # noqa: E402
from ppml.errors import UsageError  # noqa: E402


@pytest.fixture
def keys(tmp_path):
    from keystores import make_data_key, make_keystore

    kms = make_keystore(tmp_path / "ks.json", "torch passphrase", "default", passphrase_file=tmp_path / "ks.pass")
    make_data_key(kms, "default", tmp_path / "dk.json")
    return ppml.KeySettings(keystore=str(tmp_path / "ks.json"), passphrase=f"file:{tmp_path / 'ks.pass'}")


def test_a_module_comes_back_as_its_state_dict(keys, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    info = ppml.ml.save(net, tmp_path / "net.ppml", data_key=tmp_path / "dk.json", keys=keys)
    assert info.format == "safetensors"
    assert info.manifest["details"]["module"] == "torch.nn.modules.container.Sequential"
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    fresh.load_state_dict(ppml.ml.load(tmp_path / "net.ppml", keys=keys, library="torch"))
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), net(x))


def test_shared_tensors_use_pytorchs_format_loaded_without_code(keys, tmp_path, monkeypatch):
    weight = torch.arange(6.0).reshape(2, 3)
    state = {"encoder.weight": weight, "decoder.weight": weight}  # tied weights: one storage
    info = ppml.ml.save(state, tmp_path / "tied.ppml", data_key=tmp_path / "dk.json", keys=keys)
    assert info.format == "torch"
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    back = ppml.ml.load(tmp_path / "tied.ppml", keys=keys)
    assert calls == [{"weights_only": True}]
    assert torch.equal(back["decoder.weight"], weight)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_dataset_streams_every_row_once(keys, tmp_path, workers):
    from torch.utils.data import DataLoader

    expected = []
    for part in range(3):
        lines = ["a,b,c,label"]
        for i in range(part * 1000, part * 1000 + 1000):
            lines.append(f"{i},{i * 0.5},x{i},{i % 3}")
            expected.append(i)
        with ppml.open(tmp_path / "enc" / f"part-{part}.csv.ppml", "wb", data_key=tmp_path / "dk.json", keys=keys,
                       segment="AES256_GCM_HKDF_4KB") as f:
            f.write(("\n".join(lines) + "\n").encode())
    dataset = ppml.ml.EncryptedCsvDataset(tmp_path / "enc", features=["a", "b"], label="label", keys=keys,
                                          label_dtype=torch.long, split_size=8192, block_size=4096, shuffle=True)
    assert len(dataset.ranges) > 6  # several ranges per file, each starting on a segment boundary
    seen = []
    for x, y in DataLoader(dataset, batch_size=64, num_workers=workers):
        assert x.dtype == torch.float32 and y.dtype == torch.long and x.shape[1] == 2
        assert torch.equal(x[:, 1], x[:, 0] * 0.5) and torch.equal(y, x[:, 0].long() % 3)
        seen.extend(int(v) for v in x[:, 0])
    assert sorted(seen) == expected


def test_bad_data_is_refused_without_quoting_it(keys, tmp_path):
    with ppml.open(tmp_path / "t.csv.ppml", "wb", data_key=tmp_path / "dk.json", keys=keys) as f:
        f.write(b"a,label\nSECRETVALUE,1\n")
    dataset = ppml.ml.EncryptedCsvDataset(tmp_path / "t.csv.ppml", features=["a"], label="label", keys=keys)
    with pytest.raises(UsageError, match="not numeric") as raised:
        list(dataset)
    with ppml.open(tmp_path / "r.csv.ppml", "wb", data_key=tmp_path / "dk.json", keys=keys) as f:
        f.write(b"a,label\n1,2\n3,SECRETVALUE,4\n")
    with pytest.raises(UsageError, match="cannot read") as ragged:
        list(ppml.ml.EncryptedCsvDataset(tmp_path / "r.csv.ppml", features=["a"], label="label", keys=keys))
    with pytest.raises(UsageError, match="cannot read") as pandas_ragged:
        ppml.ml.read_pandas(tmp_path / "r.csv.ppml", keys=keys)
    for error in (raised, ragged, pandas_ragged):
        assert "SECRETVALUE" not in str(error.value)
