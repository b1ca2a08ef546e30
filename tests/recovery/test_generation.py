"""Teacher-generated training text: real-text prefixes continued by the teacher, seeded, resumable to the same bytes,
reused when asked again with the same settings, refused over a file it did not write."""

import json
import os

import pytest
from testing_utils import make_text, write_jsonl

from optimum_multipruner.recovery.generation import MANIFEST_SUFFIX, PARTIAL_SUFFIX, generate_teacher_text

SETTINGS = dict(num_sequences=6, new_tokens=12, prefix_tokens=4, temperature=0.8, seed=7, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    return write_jsonl(path, make_text(40, seed=9))


def test_rows_continue_real_prefixes_and_a_second_call_reuses_the_file(teacher, tokenizer, prompts, tmp_path):
    output = generate_teacher_text(teacher, tokenizer, tmp_path / "teacher.jsonl", prompts=prompts, **SETTINGS)
    rows = [json.loads(line)["text"] for line in open(output, encoding="utf-8")]
    assert len(rows) == 6
    prefixes = [tokenizer.decode(tokenizer(row, add_special_tokens=False).input_ids[:4]) for row in make_text(40, 9)]
    assert all(any(row.startswith(prefix) for prefix in prefixes) for row in rows)
    assert all(len(tokenizer(row, add_special_tokens=False).input_ids) > 4 for row in rows)  # continued
    manifest = json.loads(open(output + MANIFEST_SUFFIX, encoding="utf-8").read())
    assert manifest["settings"]["temperature"] == 0.8 and len(manifest["sha256"]) == 64
    modified = os.path.getmtime(output)
    assert generate_teacher_text(teacher, tokenizer, output, prompts=prompts, **SETTINGS) == output
    assert os.path.getmtime(output) == modified  # reused, not generated again


def test_an_interrupted_generation_resumes_to_the_same_bytes(teacher, tokenizer, prompts, tmp_path):
    whole = open(generate_teacher_text(teacher, tokenizer, tmp_path / "a.jsonl", prompts=prompts, **SETTINGS),
                 "rb").read()
    lines = whole.decode().splitlines()
    header = json.dumps({"settings": json.loads(open(tmp_path / f"a.jsonl{MANIFEST_SUFFIX}").read())["settings"]})
    partial = tmp_path / f"b.jsonl{PARTIAL_SUFFIX}"  # killed after the first batch (4 rows), in the middle of row 5
    partial.write_text("\n".join([header, *lines[:4], lines[4][:10]]), encoding="utf-8")
    output = generate_teacher_text(teacher, tokenizer, tmp_path / "b.jsonl", prompts=prompts, **SETTINGS)
    assert open(output, "rb").read() == whole
    assert not partial.exists()
    killed_at_once = tmp_path / f"c.jsonl{PARTIAL_SUFFIX}"  # killed before its header line was written whole
    killed_at_once.write_text(header[:20], encoding="utf-8")
    output = generate_teacher_text(teacher, tokenizer, tmp_path / "c.jsonl", prompts=prompts, **SETTINGS)
    assert open(output, "rb").read() == whole


def test_a_file_from_other_settings_or_edited_since_is_refused(teacher, tokenizer, prompts, tmp_path):
    output = generate_teacher_text(teacher, tokenizer, tmp_path / "t.jsonl", prompts=prompts, **SETTINGS)
    with pytest.raises(FileExistsError, match="not generated with these settings"):
        generate_teacher_text(teacher, tokenizer, output, prompts=prompts, **{**SETTINGS, "temperature": 1.0})
    with open(output, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "edited"}) + "\n")
    with pytest.raises(FileExistsError, match="changed"):
        generate_teacher_text(teacher, tokenizer, output, prompts=prompts, **SETTINGS)
    user_file = tmp_path / "mine.jsonl"
    user_file.write_text("my own text\n", encoding="utf-8")
    with pytest.raises(FileExistsError):
        generate_teacher_text(teacher, tokenizer, user_file, prompts=prompts, **SETTINGS)
    assert user_file.read_text(encoding="utf-8") == "my own text\n"


def test_without_prompts_each_row_starts_from_one_random_token(teacher, tokenizer, tmp_path):
    output = generate_teacher_text(teacher, tokenizer, tmp_path / "plain.jsonl", **SETTINGS)
    assert len(open(output, encoding="utf-8").read().splitlines()) == 6


def test_the_teachers_openvino_ir_samples_through_openvino_genai_seeded_and_resumable(teacher, tokenizer, prompts,
                                                                                      tmp_path):
    from optimum_multipruner import export_openvino

    ir = export_openvino(teacher, tmp_path / "ir", weight_format="fp32")
    output = generate_teacher_text(ir, tokenizer, tmp_path / "ov.jsonl", prompts=prompts, **SETTINGS)
    whole = open(output, encoding="utf-8").read()
    rows = [json.loads(line)["text"] for line in whole.splitlines()]
    prefixes = [tokenizer.decode(tokenizer(row, add_special_tokens=False).input_ids[:4]) for row in make_text(40, 9)]
    assert len(rows) == 6 and all(any(row.startswith(prefix) for prefix in prefixes) for row in rows)
    assert all(len(tokenizer(row, add_special_tokens=False).input_ids) > 4 for row in rows)
    settings = json.loads(open(output + MANIFEST_SUFFIX, encoding="utf-8").read())["settings"]
    assert settings["engine"] == "openvino-genai"
    partial = tmp_path / f"again.jsonl{PARTIAL_SUFFIX}"  # killed after the first batch of 4 rows
    partial.write_text("\n".join([json.dumps({"settings": settings}), *whole.splitlines()[:4]]) + "\n",
                       encoding="utf-8")
    assert open(generate_teacher_text(ir, tokenizer, tmp_path / "again.jsonl", prompts=prompts, **SETTINGS),
                encoding="utf-8").read() == whole
    with pytest.raises(ValueError, match="OpenVINO IR folder"):
        generate_teacher_text(str(tmp_path), tokenizer, tmp_path / "x.jsonl", prompts=prompts, **SETTINGS)
