"""The ``tamt`` command: single runs end to end, and bad input refused with the fix before any compute."""

from __future__ import annotations

import json

import pytest

from tamt_core.cli import main


def _fails(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in needles:
        assert needle in err, err
    return err


def test_search_info_similarity_export_end_to_end(tiny_bert_dir, tmp_path, capsys):
    assert main(["search", "omp", "--model", str(tiny_bert_dir), "--sparsity", "0.7",
                 "--out", str(tmp_path / "omp")]) == 0
    omp = capsys.readouterr().out.strip()
    assert main(["search", "rand", "--model", str(tiny_bert_dir), "--sparsity", "0.7", "--seed", "1",
                 "--out", str(tmp_path / "rand")]) == 0
    rand = capsys.readouterr().out.strip()
    _fails(capsys, ["search", "rand", "--model", str(tiny_bert_dir), "--sparsity", "0.7", "--seed", "2",
                    "--out", str(tmp_path / "rand")], "holds another search run", "rand at sparsity 0.7, seed 1",
           "Pass a new output directory", "(--out)")
    assert main(["mask-info", omp, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["method"] == "omp" and len(info["matrices"]) == 14
    assert main(["similarity", omp, omp]) == 0
    assert json.loads(capsys.readouterr().out) == {"similarity": 1.0, "distance": 0.0}
    assert main(["similarity", omp, rand]) == 0
    assert 0.1 < json.loads(capsys.readouterr().out)["similarity"] < 0.3  # (1 − s)/(1 + s) ≈ 0.18 for random
    assert main(["export", "--mask", omp, "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "config.json").exists()


def test_unknown_model_offline_names_the_fix(capsys, tmp_path):
    _fails(capsys, ["search", "omp", "--model", "no-such-org/no-such-model", "--sparsity", "0.5",
                    "--out", str(tmp_path)], "cannot load model", "--model DIR")


def test_missing_model_directory_names_the_fix(capsys, tmp_path):
    _fails(capsys, ["search", "omp", "--model", str(tmp_path / "nowhere"), "--sparsity", "0.5",
                    "--out", str(tmp_path)], "does not exist")


def test_non_bert_model_is_refused(capsys, tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    _fails(capsys, ["search", "omp", "--model", str(tmp_path / "gpt2"), "--sparsity", "0.5",
                    "--out", str(tmp_path)], "not BERT-family", "gpt2")


@pytest.mark.parametrize("sparsity", ["1.0", "-0.1", "seventy"])
def test_sparsity_outside_unit_interval_is_refused(capsys, tmp_path, sparsity):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "omp", "--sparsity", sparsity, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sparsity" in err and "%%" not in err  # argparse formats help strings, not a type's error message


@pytest.mark.parametrize("period", ["-1", "nan", "often"])
def test_malformed_checkpoint_period_is_refused(capsys, tmp_path, period):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "tamt-mlm", "--sparsity", "0.5", "--checkpoint-every", period, "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "--checkpoint-every: expected a number of seconds" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_unknown_method_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["search", "magnitude", "--sparsity", "0.5", "--out", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err


def test_config_level_validation():
    from tamt_core.search.config import SearchConfig

    with pytest.raises(ValueError, match="unknown method"):
        SearchConfig.of(method="snip", sparsity=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        SearchConfig.of(method="omp", sparsity=1.0)
    with pytest.raises(ValueError, match="multiple of 0.1"):
        SearchConfig.of(method="imp", sparsity=0.75)


def test_missing_dataset_names_files_before_loading_the_model(capsys, tiny_bert_dir, tmp_path, monkeypatch):
    import tamt_core.search.runner as search

    monkeypatch.setattr(search, "load_pretrained", lambda *a, **k: pytest.fail("model loaded before data check"))
    _fails(capsys, ["search", "tamt-mlm", "--model", str(tiny_bert_dir), "--data", str(tmp_path / "wikitext"),
                    "--sparsity", "0.5",
                    "--out", str(tmp_path)], "wiki.train.raw")


def test_tampered_mask_is_refused(capsys, tiny_bert_dir, tmp_path):
    assert main(["search", "omp", "--model", str(tiny_bert_dir), "--sparsity", "0.5", "--out", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip()
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0x01
    open(path, "wb").write(bytes(data))
    _fails(capsys, ["mask-info", path], "modified or truncated")


def test_pretrain_loss_needs_a_mask(capsys):
    _fails(capsys, ["pretrain-loss"], "--mask")


def test_options_a_method_does_not_use_are_refused():
    from tamt_core.search.config import SearchConfig

    with pytest.raises(ValueError, match="pruning_interval"):
        SearchConfig.of(method="imp", sparsity=0.5, steps=100)
    with pytest.raises(ValueError, match="one-shot"):
        SearchConfig.of(method="omp", sparsity=0.5, steps=100)


def test_search_id_is_a_content_hash():
    from tamt_core.search.config import SearchConfig

    a = SearchConfig.of(method="tamt-mlm", sparsity=0.7, seed=1, steps=100).run_id("m", None)
    assert a == SearchConfig.of(steps=100, seed=1, sparsity=0.7, method="tamt-mlm").run_id("m", None)
    assert a != SearchConfig.of(method="tamt-mlm", sparsity=0.7, seed=2, steps=100).run_id("m", None)
    period = SearchConfig.of(method="tamt-mlm", sparsity=0.7, seed=1, steps=100, threshold_period=1000)
    assert a != period.run_id("m", None)
    assert a != SearchConfig.of(method="tamt-mlm", sparsity=0.7, seed=1, steps=100).run_id("other-model", None)


def test_finetune_end_to_end_and_rerun_resumes(tiny_bert_dir, tmp_path, capsys):
    assert main(["search", "omp", "--model", str(tiny_bert_dir), "--sparsity", "0.7", "--out", str(tmp_path)]) == 0
    mask = capsys.readouterr().out.strip()
    argv = ["finetune", "--mask", mask, "--task", "rte", "--seed", "1", "--train-size", "48", "--batch-size", "16",
            "--epochs", "1", "--eval-every", "3", "--out", str(tmp_path / "rte")]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "rte" / "result.json").read_text())
    assert printed["best_score"] == saved["best_score"] == saved["curve"][0]["metrics"]["accuracy"]
    assert saved["info"]["mask_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert main(argv) == 0  # finished: answered from result.json
    assert json.loads(capsys.readouterr().out)["run_id"] == printed["run_id"]


def test_finetune_bad_input_names_the_fix(capsys, tiny_bert_dir, tmp_path):
    base = ["finetune", "--full", "--model", str(tiny_bert_dir), "--seed", "1"]
    _fails(capsys, base + ["--task", "qqp", "--out", str(tmp_path / "a")], "unknown task 'qqp'", "choose one of")
    _fails(capsys, base + ["--task", "rte", "--train-size", "0", "--out", str(tmp_path / "b")],
           "train_size must be a positive number", "(--train-size)")  # the config names its field, the CLI the flag
    _fails(capsys, base + ["--task", "rte", "--train-size", "99999999", "--out", str(tmp_path / "c")],
           "must be between 1 and", "(--train-size)")
    _fails(capsys, base + ["--task", "rte", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")],
           "rte")
    assert not (tmp_path / "c" / "checkpoint.safetensors").exists()
    # An --out that is a file, or lies under one, is refused before the model (here: none) is loaded.
    (tmp_path / "a-file").write_text("not a directory")
    nothing = ["finetune", "--full", "--model", str(tmp_path / "no-model"), "--seed", "1", "--task", "rte"]
    _fails(capsys, nothing + ["--out", str(tmp_path / "a-file")], "is a file, not a directory", "--out")
    _fails(capsys, nothing + ["--out", str(tmp_path / "a-file" / "run")], "cannot create", "--out")
