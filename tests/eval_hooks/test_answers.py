"""MT-Bench / AlpacaEval answers on the tiny model in the official formats, and the judge client's protocol."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from eval_hooks import answers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval" / "judge"
MT_BENCH = FIXTURES / "mt_bench_ja_question.jsonl"
ALPACA = FIXTURES / "alpaca_eval.json"


def _greedy(model, tokenizer, messages, n):
    # Reference: the chat template's token ids, greedy decoding of n tokens.
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_mt_bench_answers_are_multi_turn_in_fastchat_format(tiny_model, tiny_tokenizer):
    kind, questions = answers.read_questions(MT_BENCH)
    assert kind == "mt_bench" and len(questions) == 3
    rows = answers.generate_answers(tiny_model, tiny_tokenizer, kind, questions, "tiny", max_new_tokens=4)
    assert [r["question_id"] for r in rows] == [81, 111, 131]
    assert [len(r["choices"][0]["turns"]) for r in rows] == [2, 2, 1]
    assert rows[0].keys() == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    # The math question is greedy; its second turn sees the first question and the model's own first reply.
    turn1, turn2 = questions[1]["turns"]
    first = _greedy(tiny_model, tiny_tokenizer, [{"role": "user", "content": turn1}], 4)
    history = [
        {"role": "user", "content": turn1},
        {"role": "assistant", "content": first},
        {"role": "user", "content": turn2},
    ]
    assert rows[1]["choices"][0]["turns"] == [first, _greedy(tiny_model, tiny_tokenizer, history, 4)]


def test_a_reply_stops_at_the_end_of_its_turn(tiny_model, tiny_tokenizer):
    """SFT trains replies to end with <|eot_id|>; a base model's generation config stops only at
    <|end_of_text|>, so the reply ran on (fake turns, role names) up to max_new_tokens."""
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot not in [tiny_model.generation_config.eos_token_id]
    calls = []

    def emit_eot(module, args, logits):
        calls.append(1)
        return logits.index_fill(-1, torch.tensor([eot]), 1e4)

    hook = tiny_model.lm_head.register_forward_hook(emit_eot)
    try:
        reply = answers._reply(tiny_model, tiny_tokenizer, [{"role": "user", "content": "hi"}], 6, 0.0)
    finally:
        hook.remove()
    assert reply == "" and len(calls) == 1


@pytest.mark.parametrize("name", ["answers.jsonl", "model_outputs.json"])
def test_alpaca_eval_answers_through_the_cli(tiny_model, tiny_tokenizer, tmp_path, name):
    from eval_hooks.cli import main

    model_dir = tmp_path / "tiny-chat"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    out = tmp_path / name
    main(
        [
            "answers",
            "--model",
            str(model_dir),
            "--questions",
            str(ALPACA),
            "--out",
            str(out),
            "--max-new-tokens",
            "3",
        ]
    )
    text = out.read_text()
    # AlpacaEval reads a .json file as one array (pandas.read_json); FastChat-style tools read lines
    rows = json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]
    assert [r["dataset"] for r in rows] == ["helpful_base", "helpful_base", "koala"]
    assert {r["generator"] for r in rows} == {"tiny-chat"} and all(isinstance(r["output"], str) for r in rows)
    first = _greedy(tiny_model, tiny_tokenizer, [{"role": "user", "content": rows[0]["instruction"]}], 3)
    assert rows[0]["output"] == first


def test_question_file_errors_name_file_and_row(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(
        '{"question_id": 1, "category": "math", "turns": ["1+1?"]}\n{"question_id": 2, "turns": ["x"]}\n'
    )
    with pytest.raises(ValueError, match=r"q.jsonl row 1: missing \['category'\]"):
        answers.read_questions(bad)
    bad.write_text('{"prompt": "hi"}\n')
    with pytest.raises(ValueError, match="row 0: neither MT-Bench"):
        answers.read_questions(bad)


def test_judge_client_posts_chat_completions_and_parses_ratings(tmp_path, monkeypatch):
    seen = []

    class Judge(BaseHTTPRequestHandler):
        def do_POST(self):  # a stand-in endpoint: records the request, rates every answer 7
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            reply = {"choices": [{"message": {"role": "assistant", "content": "Good. Rating: [[7]]"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answer_file = tmp_path / "answers.jsonl"
    rows = [
        {"question_id": q, "choices": [{"index": 0, "turns": ["a"] * n}]}
        for q, n in ((81, 2), (111, 2), (131, 1))
    ]
    answer_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("JUDGE_KEY", "secret")
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        verdict = answers.judge(MT_BENCH, answer_file, url, "judge-model", api_key_env="JUDGE_KEY")
    finally:
        server.shutdown()
    assert verdict["score"] == 7.0 and len(verdict["judgments"]) == 5  # one rating per turn
    path, auth, body = seen[1]
    assert path == "/v1/chat/completions" and auth == "Bearer secret" and body["model"] == "judge-model"
    # The second turn is judged with the whole conversation so far.
    assert body["messages"][1]["content"].count("[User]") == 2


def test_the_judges_last_rating_and_verdict_count(tmp_path, monkeypatch):
    # judges often quote the prompt's format example before giving their own [[rating]] or [[verdict]]
    replies = iter(
        [
            "The format is [[5]]; the answer is clear and correct. Rating: [[8]]",
            "[[A]] or [[B]]? A rambles, B answers. [[B]]",
            "B looked better at first, [[B]], but A is correct: [[A]]",
            "Both are fine.",
        ]
    )
    monkeypatch.setattr(answers, "chat_completion", lambda *args, **kwargs: next(replies))
    questions, answer_file = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["Hi?"]}) + "\n")
    answer_file.write_text(
        json.dumps({"question_id": 1, "choices": [{"index": 0, "turns": ["Hello."]}]}) + "\n"
    )
    assert answers.judge(questions, answer_file, "http://judge/v1", "judge-model")["score"] == 8.0

    instructions = [q["instruction"] for q in json.loads(ALPACA.read_text())]
    ours, reference = tmp_path / "ours.json", tmp_path / "reference.json"
    ours.write_text(json.dumps([{"instruction": i, "output": "ours"} for i in instructions]))
    reference.write_text(json.dumps([{"instruction": i, "output": "theirs"} for i in instructions]))
    verdict = answers.judge(ALPACA, ours, "http://judge/v1", "judge-model", reference=reference)
    assert [j["win"] for j in verdict["judgments"]] == [1.0, 0.0, 0.5]  # B is ours; no verdict is a tie


def test_judging_answers_that_miss_a_question_is_refused_before_any_call(tmp_path):
    answer_file = tmp_path / "answers.jsonl"
    answer_file.write_text(
        json.dumps({"question_id": 81, "choices": [{"index": 0, "turns": ["a", "b"]}]}) + "\n"
    )
    with pytest.raises(ValueError, match=r"has no answers to questions \[111, 131\]"):
        answers.judge(MT_BENCH, answer_file, "http://127.0.0.1:9/v1", "judge-model")  # nothing listens there
