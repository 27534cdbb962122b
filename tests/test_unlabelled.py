"""Unlabelled splits are predicted, not scored; a VQA run that would write an EvalAI file with unnamed answer
classes is refused before it trains (docs/errors.md, "Unlabelled splits and answer vocabularies")."""

import json
import shutil

import pytest
from conftest import tiny_tokenizer
from test_vilt import IMAGE_FLAGS, SPEC, arrows, tiny_vilt, vilt_dir, vw  # noqa: F401  (fixtures)
from torch.utils.data import Subset

from archskip import AdapterConfig, ModelConfig, TaskConfig
from archskip.cli import main
from archskip.data.vilt_arrow import VQADataset
from archskip.errors import DataError
from archskip.tasks import assemble, build_task


@pytest.fixture(scope="module")
def vqa_model(arrows):  # noqa: F811
    train = VQADataset(arrows, "vqav2_train", SPEC.transform(), num_answers=3)
    task = build_task(TaskConfig(name="vqa", num_labels=3, max_length=16), tiny_tokenizer(), train)
    return assemble(tiny_vilt(), task, AdapterConfig(hidden=8, skip_hidden=16), ModelConfig()).eval(), task


@pytest.fixture(scope="module")
def partly(arrows, tmp_path_factory):  # noqa: F811
    """vqav2_partly.arrow: six questions, the answers of two ('purple') outside the 3-answer vocabulary, kept."""
    root = tmp_path_factory.mktemp("partly")
    given = ["red", "purple", "blue", "purple", "green", "blue"]
    qs = [{"image_id": i, "question": "w10 w11", "question_id": 200 + i} for i in range(6)]
    ann = [{"question_id": 200 + i, "image_id": i, "multiple_choice_answer": given[i], "answers": [{"answer": given[i]}] * 10}
           for i in range(6)]
    (root / "q.json").write_text(json.dumps({"questions": qs}))
    (root / "a.json").write_text(json.dumps({"annotations": ann}))
    vw.write_vqa(root / "q.json", root / "a.json", arrows / "raw", root / "vqav2_partly.arrow", "val",
                 ["red", "green", "blue"], image_prefix="img", drop_unanswerable=False)
    return VQADataset(root, "vqav2_partly", SPEC.transform(), num_answers=3, require_answers=False)


def test_an_unlabelled_split_reports_no_score_and_no_loss(vqa_model, arrows):  # noqa: F811
    model, task = vqa_model
    test = VQADataset(arrows, "vqav2_test", SPEC.transform(), num_answers=3, require_answers=False)
    assert task.evaluate_dataset(model, test, batch_size=4) == {"examples": 6, "labelled": 0}
    preds = task.predict_dataset(model, test, batch_size=4)
    assert len(preds) == 6 and all(p["answer"] in ("red", "green", "blue") for p in preds)


def test_a_partly_labelled_split_is_scored_on_its_labelled_part(vqa_model, partly):
    model, task = vqa_model
    m = task.evaluate_dataset(model, partly, batch_size=4)
    assert (m["examples"], m["labelled"], m["n"]) == (6, 4, 4)
    labelled_only = task.evaluate_dataset(model, Subset(partly, [0, 2, 4, 5]), batch_size=4)
    assert "examples" not in labelled_only and labelled_only["n"] == 4
    assert m["loss"] == pytest.approx(labelled_only["loss"]) and m["vqa_score"] == pytest.approx(labelled_only["vqa_score"])


def test_a_vocabulary_that_does_not_name_every_class_refuses_predictions(arrows, tmp_path):  # noqa: F811
    for name in ("vqav2_train", "vqav2_test"):  # no vqa_answer_vocab.json: the names come from the training rows
        shutil.copy(arrows / f"{name}.arrow", tmp_path)
    # the rows name all 3 answers: enough
    train = VQADataset(tmp_path, "vqav2_train", SPEC.transform(), num_answers=3)
    assert build_task(TaskConfig(name="vqa", num_labels=3), tiny_tokenizer(), train).why_no_predictions() is None
    # with 5 classes, 2 have no name
    train = VQADataset(tmp_path, "vqav2_train", SPEC.transform(), num_answers=5)
    task = build_task(TaskConfig(name="vqa", num_labels=5, max_length=16), tiny_tokenizer(), train)
    problem = task.why_no_predictions()
    assert "names 3 of the 5 answer classes (task.num_labels)" in problem
    assert f"there is no {tmp_path / 'vqa_answer_vocab.json'}" in problem and "prepare_arrows.py vqa-vocab" in problem
    model = assemble(tiny_vilt(), task, AdapterConfig(hidden=8, skip_hidden=16), ModelConfig())
    with pytest.raises(DataError, match="names 3 of the 5 answer classes"):
        task.predict_dataset(model, train, batch_size=4)


def cli(vilt_dir, root, out, *extra):  # noqa: F811
    return ["--model.name_or_path", str(vilt_dir), "--task.name", "vqa", "--data.root", str(root),
            "--data.train", "vqav2_train", "--adapter.hidden", "8", "--adapter.skip_hidden", "16",
            "--train.batch_size", "2", "--train.epochs", "1", "--output_dir", str(out), *IMAGE_FLAGS, *extra]


def test_train_refuses_before_training_and_eval_refuses_predictions(vilt_dir, arrows, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "novocab"
    root.mkdir()
    for name in ("vqav2_train", "vqav2_test"):
        shutil.copy(arrows / f"{name}.arrow", root)
    argv = cli(vilt_dir, root, tmp_path / "t", "--plan", "none", "--task.num_labels", "5")
    with pytest.raises(SystemExit) as e:
        main(["train", *argv, "--data.test", "vqav2_test"])
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "answer classes" in x]
    assert e.value.code == 2 and "Traceback" not in err and len(line) == 1
    assert "names 3 of the 5 answer classes (task.num_labels)" in line[0]
    assert "vqa_answer_vocab.json" in line[0] and "or leave data.test unset" in line[0]
    assert not (tmp_path / "t" / "checkpoint.pt").exists() and not (tmp_path / "t" / "metrics.json").exists()
    # without test splits the run writes no EvalAI file: allowed; its artifact then refuses --predictions
    main(["train", *argv])
    capsys.readouterr()
    artifact = str(tmp_path / "t" / "artifact")
    with pytest.raises(SystemExit) as e:
        main(["eval", "--artifact", artifact, "--data", str(root / "vqav2_test.arrow"), "--predictions",
              str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "the artifact's VQA answer vocabulary names 3 of the 5 answer classes" in err
    assert "or leave out --predictions" in err and not (tmp_path / "p.json").exists()
    main(["eval", "--artifact", artifact, "--data", str(root / "vqav2_test.arrow")])
    out = json.loads(capsys.readouterr().out)
    assert out["vqav2_test"] == {"examples": 6, "labelled": 0, "note": "no example has a label: not scored; "
                                                                        "--predictions FILE writes its predictions"}


def test_train_predicts_an_unlabelled_test_split_and_says_it_is_not_scored(vilt_dir, arrows, tmp_path, capsys):  # noqa: F811
    main(["train", *cli(vilt_dir, arrows, tmp_path / "t", "--plan", "none", "--task.num_labels", "3",
                        "--data.test", "vqav2_test")])
    printed = capsys.readouterr().out
    test = json.loads((tmp_path / "t" / "metrics.json").read_text())["test"]["vqav2_test"]
    assert set(test) == {"examples", "labelled", "predictions", "note"}  # no loss, no vqa_score
    assert (test["examples"], test["labelled"], test["note"]) == (6, 0, "no example has a label: not scored")
    assert '"labelled": 0' in printed and "not scored" in printed
    preds = json.loads((tmp_path / "t" / "predictions_vqav2_test.json").read_text())
    assert len(preds) == 6 and all(p["answer"] in ("red", "green", "blue") for p in preds)
