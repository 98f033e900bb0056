"""Answers to judge-based benchmarks (MT-Bench JA, AlpacaEval) from a local question file, and optional judging
through an OpenAI-compatible endpoint the user gives. Generation is local; judging is never needed offline."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.request
from pathlib import Path
from statistics import fmean

import torch

from data_prep.chat import render, stop_token_ids

# FastChat's MT-Bench sampling temperature per category (0 means greedy); other categories get 0.7.
MT_BENCH_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7


def read_questions(path: str | Path) -> tuple[str, list[dict]]:
    """("mt_bench", rows) for MT-Bench question files (question_id, category, turns), ("alpaca_eval", rows) for
    AlpacaEval ones (instruction, dataset); .jsonl or a JSON array. Errors name the file and row."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if path.suffix == ".json" else None
    except json.JSONDecodeError:
        rows = None
    if rows is None:
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {i + 1}: not JSON ({e.msg})") from e
    if not rows:
        raise ValueError(f"{path}: no questions")
    kind = "mt_bench" if "turns" in rows[0] else "alpaca_eval" if "instruction" in rows[0] else None
    needed = {"mt_bench": ("question_id", "category", "turns"), "alpaca_eval": ("instruction",)}.get(kind)
    if needed is None:
        raise ValueError(
            f"{path} row 0: neither MT-Bench (question_id, category, turns) nor AlpacaEval (instruction)"
        )
    for i, row in enumerate(rows):
        missing = [k for k in needed if not row.get(k)]
        if missing:
            raise ValueError(f"{path} row {i}: missing {missing} for a {kind} question file")
    return kind, rows


def _reply(model, tokenizer, messages: list[dict], max_new_tokens: int, temperature: float) -> str:
    """One assistant turn: the chat template with a generation prompt, then sampling (greedy at temperature 0)."""
    text = render(tokenizer, messages, generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_token_ids(tokenizer, model.generation_config.eos_token_id),
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            **sampling,
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def generate_answers(
    model,
    tokenizer,
    kind: str,
    questions: list[dict],
    model_id: str,
    max_new_tokens: int = 1024,
    seed: int = 0,
) -> list[dict]:
    """Answers in the benchmark's own answer format: FastChat's (question_id, answer_id, model_id, choices[0].turns,
    tstamp) for MT-Bench, one reply per turn with the earlier turns in the chat; AlpacaEval's (instruction,
    output, generator, dataset). Sampling is seeded."""
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template; answers are generated in chat format")
    torch.manual_seed(seed)
    answers = []
    for q in questions:
        if kind == "alpaca_eval":
            output = _reply(
                model, tokenizer, [{"role": "user", "content": q["instruction"]}], max_new_tokens, 0.0
            )
            answers.append(
                {
                    "instruction": q["instruction"],
                    "output": output,
                    "generator": model_id,
                    "dataset": q.get("dataset"),
                }
            )
            continue
        temperature = MT_BENCH_TEMPERATURE.get(q["category"], DEFAULT_TEMPERATURE)
        messages, turns = [], []
        for turn in q["turns"]:
            messages.append({"role": "user", "content": turn})
            reply = _reply(model, tokenizer, messages, max_new_tokens, temperature)
            messages.append({"role": "assistant", "content": reply})
            turns.append(reply)
        answer_id = hashlib.sha256(f"{model_id}/{q['question_id']}/{turns}".encode()).hexdigest()[:22]
        answers.append(
            {
                "question_id": q["question_id"],
                "answer_id": answer_id,
                "model_id": model_id,
                "choices": [{"index": 0, "turns": turns}],
                "tstamp": time.time(),
            }
        )
    return answers


def write_rows(path: str | Path, rows: list[dict]) -> Path:
    """Rows as one JSON array when `path` ends in .json (AlpacaEval's `model_outputs.json` is read that way),
    else as JSON lines (FastChat's answer files); written to a temp file first so an earlier file is never
    half overwritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def answers_for_hf_dir(
    model_dir: str | Path,
    questions: str | Path,
    out: str | Path,
    max_new_tokens: int = 1024,
    model_id: str = "",
) -> Path:
    """`launch/eval.py answers`: load an HF folder, answer every question, write the answers file."""
    from transformers import AutoTokenizer

    from eval_hooks.runner import load_model

    kind, rows = read_questions(questions)
    cuda = torch.cuda.is_available()
    model = load_model(model_dir, torch.bfloat16 if cuda else torch.float32, "cuda" if cuda else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model_id = model_id or Path(model_dir).name
    return write_rows(out, generate_answers(model, tokenizer, kind, rows, model_id, max_new_tokens))


# --- judging through an OpenAI-compatible endpoint -------------------------------------------------------------

# Our wording of a single-answer grading prompt in the MT-Bench style: a 1-10 rating written as [[n]].
JUDGE_SYSTEM = "You are a careful, impartial judge of AI assistant answers."
JUDGE_PROMPT = (
    "Rate the assistant's answer to the user's last question for helpfulness, relevance, accuracy, depth and "
    "detail. Explain briefly, then give the rating from 1 to 10 strictly as [[rating]], e.g. [[5]].\n\n"
    "{conversation}"
)
PAIRWISE_PROMPT = (
    "Compare two assistant answers to the instruction below and decide which is better. Explain briefly, then "
    'end with exactly "[[A]]" if answer A is better or "[[B]]" if answer B is better.\n\n'
    "[Instruction]\n{instruction}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}"
)
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
_VERDICT = re.compile(r"\[\[([AB])\]\]")


def chat_completion(url: str, model: str, prompt: str, api_key: str | None, timeout_s: float = 120.0) -> str:
    """One greedy completion from an OpenAI-compatible `/chat/completions` endpoint under `url`."""
    body = {
        "model": model,
        "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}],
        "temperature": 0.0,
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def _read_rows(path: str | Path) -> list[dict]:
    # Answer files: JSON lines, or a JSON array (AlpacaEval's reference outputs are published that way).
    text = Path(path).read_text(encoding="utf-8")
    return (
        json.loads(text)
        if text.lstrip().startswith("[")
        else [json.loads(x) for x in text.splitlines() if x.strip()]
    )


def judge(
    questions: str | Path,
    answers: str | Path,
    judge_url: str,
    judge_model: str,
    reference: str | Path | None = None,
    api_key_env: str = "OPENAI_API_KEY",
) -> dict:
    """MT-Bench: a 1-10 rating per turn (the conversation so far, graded on its last answer), averaged.
    AlpacaEval: pairwise against `reference` answers (same format), win rate with ties as half; this is the
    raw win rate, not AlpacaEval 2.0's length-controlled one, and the judge is whichever model the user names."""
    kind, rows = read_questions(questions)
    api_key = os.environ.get(api_key_env)
    answer_rows = _read_rows(answers)
    records = []
    if kind == "mt_bench":
        by_id = {a["question_id"]: a["choices"][0]["turns"] for a in answer_rows}
        missing = [q["question_id"] for q in rows if q["question_id"] not in by_id]
        if missing:  # checked before any judge call is paid for
            raise ValueError(f"{answers} has no answers to questions {missing[:10]} of {questions}")
        for q in rows:
            conversation = ""
            for i, (turn, reply) in enumerate(zip(q["turns"], by_id[q["question_id"]], strict=True)):
                conversation += f"[User]\n{turn}\n\n[Assistant]\n{reply}\n\n"
                text = chat_completion(
                    judge_url, judge_model, JUDGE_PROMPT.format(conversation=conversation), api_key
                )
                found = _RATING.findall(text)
                records.append(
                    {
                        "question_id": q["question_id"],
                        "turn": i + 1,
                        "score": float(found[-1]) if found else None,
                        "judgment": text,
                    }
                )
        scored = [r["score"] for r in records if r["score"] is not None]
        return {
            "benchmark": "mt_bench",
            "score": fmean(scored) if scored else None,
            "n_unparsed": len(records) - len(scored),
            "judgments": records,
        }
    if reference is None:
        raise ValueError("AlpacaEval judging compares with reference answers: pass --reference FILE")
    ref = {r["instruction"]: r["output"] for r in _read_rows(reference)}
    unmatched = [a["instruction"][:60] for a in answer_rows if a["instruction"] not in ref]
    if unmatched:
        raise ValueError(
            f"{reference} has no reference answer to the instructions {unmatched[:5]} of {answers}"
        )
    wins = []
    for a in answer_rows:
        prompt = PAIRWISE_PROMPT.format(instruction=a["instruction"], a=ref[a["instruction"]], b=a["output"])
        text = chat_completion(judge_url, judge_model, prompt, api_key)
        found = _VERDICT.findall(text)
        win = {"B": 1.0, "A": 0.0}.get(found[-1], 0.5) if found else 0.5
        wins.append(win)
        records.append({"instruction": a["instruction"], "win": win, "judgment": text})
    return {"benchmark": "alpaca_eval", "win_rate": fmean(wins), "judgments": records}
