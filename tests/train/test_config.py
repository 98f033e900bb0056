"""Config system: every shipped recipe validates; typos, wrong types and impossible combinations fail
at start-up with the key and the fix; extends / --set merge as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from train.config import accepted_hashes, config_hash, load_config, training_diff
from train.errors import UserError
from train.yaml_config import apply_overrides

ROOT = Path(__file__).resolve().parents[2]
# base/ holds partial recipes (validated through their children); merge/ has its own schema
RECIPES = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not {"merge", "base"} & set(p.parts))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_validates(path):
    cfg = load_config(path)
    assert cfg.total_steps(num_rows=1000) > 0  # SFT recipes count epochs over the packed rows


def _write(tmp_path, text: str, name="c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _child(tmp_path, body: str) -> Path:
    return _write(tmp_path, f"extends: {ROOT / 'configs/smoke/cpt_tiny.yaml'}\n{body}")


def _error(path, overrides=()) -> str:
    with pytest.raises(UserError) as e:
        load_config(path, list(overrides))
    return str(e.value)


def test_unknown_key_suggests_the_nearest(tmp_path):
    msg = _error(_child(tmp_path, "optim:\n  lrr: 1.0e-4\n"))
    assert "unknown key 'optim.lrr'" in msg and "Did you mean 'optim.lr'?" in msg


def test_unknown_top_level_key(tmp_path):
    msg = _error(_child(tmp_path, "deepsped:\n  zero_stage: 3\n"))
    assert "'deepsped'" in msg and "Did you mean 'deepspeed'?" in msg


def test_wrong_type_names_key_and_value(tmp_path):
    msg = _error(_child(tmp_path, ""), ["data.seq_len=long"])
    assert "'data.seq_len'" in msg and "'long'" in msg


@pytest.mark.parametrize("override", ["train.max_steps=true", "optim.lr=false", "seed=true"])
def test_boolean_is_not_a_number(tmp_path, override):
    # pydantic alone would read `true` as 1 and run one step.
    key = override.split("=")[0]
    assert f"'{key}': expects a number, not true/false" in _error(_child(tmp_path, ""), [override])


@pytest.mark.parametrize(
    "override",
    ["optim.betas=[false, 0.9]", "data.stages=[{weights: {tiny_cpt: true}}]"],
    ids=["list", "mapping"],
)
def test_boolean_is_not_a_number_inside_a_list_or_mapping(tmp_path, override):
    # pydantic would read beta1 `false` as 0 and a stage weight `true` as 1.0
    msg = _error(_child(tmp_path, ""), [override])
    assert f"'{override.split('=')[0]}" in msg and "expects numbers, not true/false" in msg


def test_missing_required_key(tmp_path):
    msg = _error(_write(tmp_path, "output_dir: x\n"))
    assert "missing required key 'model'" in msg


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["deepspeed.offload_params=true"], "offload_params needs deepspeed.zero_stage: 3"),
        (
            ["deepspeed.zero_stage=0", "deepspeed.offload_optimizer=true"],
            "needs deepspeed.zero_stage 1, 2 or 3",
        ),
        (["optim.name=cpu_adam"], "set deepspeed.offload_optimizer: true"),
        (["model.dtype=bf16", "deepspeed.zero_stage=0"], "ZeRO-0 bf16 shifts Adam by one step"),
        (
            ["model.dtype=bf16", "deepspeed.zero_stage=1"],
            "BF16_Optimizer, whose checkpoints its zero_to_fp32",
        ),
        (["deepspeed.grad_accum_dtype=bf16"], "grad_accum_dtype bf16 needs model.dtype bf16"),
        (["train.max_tokens=1000"], "exactly one of train.max_steps, train.max_tokens or train.epochs"),
        (["train.max_steps=null"], "exactly one of train.max_steps, train.max_tokens or train.epochs"),
        (
            [
                "train.max_steps=null",
                "train.epochs=1",
                "data.sources=[{path: data_prep/samples/multilingual_cpt.jsonl, weight: 2}]",
            ],
            "with data.stages or data.sources[].weight the mixture decides",
        ),
        (["schedule.name=wsd"], "needs schedule.decay_steps"),
        (
            ["expansion={type: stack, num_exp_layers: 2, method: dlerp, divergence: {weight: 0.5}}"],
            "expansion.method, expansion.divergence set the interpolation of a concat or hybrid expansion; a stack",
        ),
        (["deepspeed.offload_optimizer=true"], "use optim.name 'cpu_adam'"),
        (
            [
                "peft={r: 8, alpha: 16, target_modules: [q_proj]}",
                "expansion={type: concat, num_exp_layers: 2}",
            ],
            "peft and expansion cannot be combined",
        ),
        (
            ["model.add_tokens=new.txt", "expansion={type: concat, num_exp_layers: 2}"],
            "needs trainable embeddings",
        ),
        (["schedule.decay_steps=10"], "decay_steps only applies to schedule.name 'wsd'"),
        (["data.sources=[{path: a.jsonl, hub_id: x/y}]"], "takes 'path' or 'hub_id', not both"),
        (["data.sources=[{label: x}]"], "needs a registry 'name', a 'path' or a 'hub_id'"),
        (["eval.suites=[control_llm_zh]", "eval.every_steps=10"], "eval.suites needs eval.data_dir"),
        (
            ["data.stages=[{weights: {a: 1}}]", "data.sources=[{path: a.jsonl, label: a, weight: 2}]"],
            "give the weights per stage, not data.sources[].weight",
        ),
        (["optim.lr"], "--set expects key=value"),
        (["data.sources.5.weight=2"], "'data.sources' is a list of 1; index it from 0 (got '5')"),
        (["optim.lr.x=3"], "'optim.lr' holds 0.003, not a section"),
        (["schedule.min_lr=1.0"], "min_lr is larger than optim.lr"),
        (["eval.suites=[control_llm_zh]"], "never runs"),
        (["data.sources=[{path: corpus, data_files: '*.parquet'}]"], "put the glob in the path"),
        (["data.sources=[{path: corpus, revision: main}]"], "'revision' pins a hub dataset"),
        (["eval.suites=[swallow_jp]"], "unknown suite or task 'swallow_jp'. Did you mean 'swallow_ja'?"),
        (["seed=-1"], "'seed': Input should be greater than or equal to 0"),
        (["optim.betas=[1.5, 0.9]"], "'optim.betas.0': Input should be less than 1"),
        (["optim.eps=0"], "'optim.eps': Input should be greater than 0"),
        (
            ["optim.name=fused_adam", "optim.fused=true"],
            "optim.fused applies to optim.name 'adamw_torch' (got 'fused_adam')",
        ),
        (
            ["peft={r: 8, alpha: 16, target_modules: [q_proj, lm_head]}", "train.loss_chunk_tokens=64"],
            "peft.target_modules adapts lm_head, which train.loss_chunk_tokens replaces",
        ),
    ],
)
def test_impossible_combinations(tmp_path, overrides, fragment):
    assert fragment in _error(_child(tmp_path, ""), overrides)


def test_extends_and_set_overrides(tmp_path):
    child = _child(tmp_path, "optim:\n  lr: 1.0e-3\n")
    cfg = load_config(child, ["data.seq_len=64", "optim.betas=[0.9, 0.95]", "tracking=none"])
    assert cfg.optim.lr == 1e-3 and cfg.data.seq_len == 64 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.optim.name == "adamw_torch"  # inherited
    assert cfg.tracking.backend == "none"


def test_exponents_are_numbers_and_dates_stay_text(tmp_path):
    # PyYAML reads 5e5 as a string (YAML 1.1 floats need a dot) and 2024-06-01 as a date
    child = _child(tmp_path, "tracking:\n  run_name: 2024-06-01\nschedule:\n  min_lr: 1e-6\n")
    overrides = ["model.overrides.rope_theta=5e5", "model.overrides.rms_norm_eps=1e-6", "train.max_steps=2e3"]
    cfg = load_config(child, [*overrides, "data.sources=[{hub_id: a/b, revision: 2024-06-01}]"])
    assert cfg.model.overrides == {"rope_theta": 500000.0, "rms_norm_eps": 1e-6}
    assert cfg.train.max_steps == 2000 and cfg.schedule.min_lr == 1e-6
    assert cfg.tracking.run_name == "2024-06-01" and cfg.data.sources[0].revision == "2024-06-01"


def test_set_indexes_lists(tmp_path):
    cfg = load_config(ROOT / "configs/smoke/sft_tiny.yaml", ["data.sources.1.weight=5"])
    assert [s.weight for s in cfg.data.sources] == [3, 5]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model: [unclosed\n", "not valid YAML"),
        ("- a list\n", "must hold a mapping at the top level, found list"),
        ("extends: 5\n", "'extends' takes a file name or a list of them, got 5"),
        ("extends: [a.yaml, 5]\n", "'extends' takes a file name or a list of them"),
        (b"model: \xff\n", "is not UTF-8 text"),
    ],
)
def test_unreadable_recipe_files(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    assert fragment in _error(path)


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(tmp_path):
    # PyYAML keeps the last `optim:` block, dropping the first one's lr without a word
    msg = _error(_child(tmp_path, "optim:\n  lr: 1.0e-3\ntracking: none\noptim:\n  weight_decay: 0.0\n"))
    assert "c.yaml is not valid YAML" in msg and "key 'optim' is given twice" in msg and "line 5" in msg
    assert "key 'max_steps' is given twice" in _error(
        _child(tmp_path, ""), ["train={max_steps: 1, max_steps: 2}"]
    )


def test_only_true_and_false_are_booleans_and_numbers_where_text_belongs_say_quote_it(tmp_path):
    # YAML 1.1 reads `no` (Norwegian) and `off` as false; a config means the text
    child = _child(tmp_path, "tracking:\n  run_name: no\n")
    assert load_config(child).tracking.run_name == "no"
    msg = _error(_child(tmp_path, ""), ["data.sources=[{hub_id: a/b, revision: 123e4567}]"])
    assert "'data.sources.0.revision'" in msg and "quote it to keep it text" in msg


def test_a_missing_parent_names_the_file_that_extends_it(tmp_path):
    msg = _error(_write(tmp_path, "extends: nope.yaml\n"))
    assert f"{tmp_path / 'c.yaml'}: extends 'nope.yaml', but {tmp_path / 'nope.yaml'} is not a file" in msg


def test_a_set_value_meant_as_a_list_must_parse(tmp_path):
    assert "the value is not valid YAML" in _error(_child(tmp_path, ""), ["optim.betas=[0.9, 0.95"])


def test_extends_cycle_is_reported(tmp_path):
    _write(tmp_path, "extends: b.yaml\n", "a.yaml")
    _write(tmp_path, "extends: a.yaml\n", "b.yaml")
    assert "cycle" in _error(tmp_path / "a.yaml")


def test_hash_ignores_keys_that_do_not_change_training(tmp_path):
    base = load_config(ROOT / "configs/smoke/cpt_tiny.yaml")
    same = load_config(
        ROOT / "configs/smoke/cpt_tiny.yaml", ["output_dir=elsewhere", "checkpoint.every_steps=7"]
    )
    other = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", ["optim.lr=1e-3"])
    assert config_hash(base) == config_hash(same) != config_hash(other)
    diff = training_diff(base.model_dump(mode="json"), other.model_dump(mode="json"))
    assert diff == ["optim.lr: 0.003 -> 0.001"]


def test_dumped_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs/smoke/cpt_tiny.yaml")
    from train.config import dump_yaml, validate

    again = validate(yaml.safe_load(dump_yaml(cfg)))
    assert config_hash(again) == config_hash(cfg)


def test_epochs_budget_counts_whole_steps_over_the_packed_rows(tmp_path):
    cfg = load_config(_child(tmp_path, ""), ["train.max_steps=null", "train.epochs=1.5"])
    assert cfg.rows_per_step == 4  # micro 2 x accum 2 x world 1
    assert cfg.total_steps(100) == 38  # ceil(1.5 * 100 / 4): the last step is not dropped
    assert cfg.epoch_rows(7) == 11  # ceil(10.5): the part row trains as a whole one
    with pytest.raises(ValueError, match="needs the packed row count"):
        cfg.total_steps()


def test_a_token_budget_counts_whole_steps(tmp_path):
    def steps(max_tokens: int) -> int:
        cfg = load_config(_child(tmp_path, ""), ["train.max_steps=null", f"train.max_tokens={max_tokens}"])
        assert cfg.tokens_per_step == 512  # 4 rows of 128
        return cfg.total_steps()

    assert steps(1000) == 2 and steps(500) == 1  # rounded up: the tokens past the last whole step train too


def test_runs_of_before_a_new_key_keep_their_hash():
    # A key added with its default must not change existing runs' hashes, or their resumes are refused.
    # Hashes of these recipes before data.sources[].revision existed; model.chat_template's old behaviour is
    # `tokenizer` (its default, llama3, renders chat data differently for some tokenizers: refused, naming it)
    old = ["model.chat_template=tokenizer"]
    assert config_hash(load_config(ROOT / "configs/smoke/cpt_tiny.yaml", old)) == "0e0e77a0b8800e97"
    # deepspeed.grad_accum_dtype's old behaviour is bf16 for bf16 weights (fp32 weights: the key means nothing)
    bf16_sums = [*old, "deepspeed.grad_accum_dtype=bf16"]
    assert config_hash(load_config(ROOT / "configs/synE_concat16.yaml", bf16_sums)) == "6142d93ff1293a05"
    assert config_hash(load_config(ROOT / "configs/synE_concat16.yaml", old)) != "6142d93ff1293a05"
    flagship = load_config(ROOT / "configs/synE_concat16.yaml", bf16_sums).model_dump(mode="json")
    del flagship["deepspeed"]["grad_accum_dtype"]
    diff = training_diff(
        flagship, load_config(ROOT / "configs/synE_concat16.yaml", old).model_dump(mode="json")
    )
    assert diff == ["deepspeed.grad_accum_dtype: None -> 'fp32'"]
    now = load_config(ROOT / "configs/smoke/cpt_tiny.yaml")
    assert config_hash(now) != "0e0e77a0b8800e97"
    before = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", old).model_dump(mode="json")
    del before["model"]["chat_template"]  # a checkpoint's config from before the key
    assert training_diff(before, now.model_dump(mode="json")) == ["model.chat_template: None -> 'llama3'"]
    pinned = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", ["data.sources=[{hub_id: a/b, revision: v1}]"])
    unpinned = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", ["data.sources=[{hub_id: a/b}]"])
    assert config_hash(pinned) != config_hash(unpinned)
    diff = training_diff(unpinned.model_dump(mode="json"), pinned.model_dump(mode="json"))
    assert diff == ["data.sources[0].revision: None -> 'v1'"]
    hub_model = ["model.name_or_path=a/b"]
    pinned = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", [*hub_model, "model.revision=0123abc"])
    unpinned = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", hub_model)
    diff = training_diff(unpinned.model_dump(mode="json"), pinned.model_dump(mode="json"))
    assert config_hash(pinned) != config_hash(unpinned) and diff == ["model.revision: None -> '0123abc'"]
    switched = [  # speed and memory switches
        "model.attn_implementation=eager",
        "deepspeed.overlap_comm=false",
        "deepspeed.reduce_bucket_size=100000000",
        "deepspeed.allgather_bucket_size=200000000",
    ]
    # checkpoints from before the buckets and merge_on_export were pinned hashed the run's own value (6c771d0)
    smoke = ROOT / "configs/smoke/cpt_tiny.yaml"
    assert "28334824d7506a1b" in accepted_hashes(
        load_config(smoke, ["deepspeed.reduce_bucket_size=200000000"])
    )
    old_lora = ["peft={r: 8, alpha: 16, target_modules: [q_proj]}", "peft.merge_on_export=false"]
    assert "3fe088014d6f19ad" in accepted_hashes(load_config(smoke, old_lora))
    lora = ["peft={r: 8, alpha: 16, target_modules: [q_proj]}"]
    no_merge = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", [*lora, "peft.merge_on_export=false"])
    assert config_hash(no_merge) == config_hash(load_config(ROOT / "configs/smoke/cpt_tiny.yaml", lora))
    assert (
        config_hash(load_config(ROOT / "configs/smoke/cpt_tiny.yaml", switched + old)) == "0e0e77a0b8800e97"
    )


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (
            "{name: alpaca_zh, langs: [en]}",
            "langs is not read by its adapter 'alpaca' (only langs by oasst_top1)",
        ),
        ("{path: a.jsonl, messages_key: chat}", "messages_key is not read by its adapter 'text'"),
        (
            "{path: a.jsonl, adapter: messages, alpaca_input: concat}",
            "alpaca_input is not read by its adapter",
        ),
        ("{path: a.jsonl, adapter: alpaca, text_key: body}", "text_key is not read by its adapter 'alpaca'"),
    ],
)
def test_an_adapter_option_its_adapter_does_not_read_is_refused(tmp_path, source, fragment):
    assert fragment in _error(_child(tmp_path, ""), [f"data.sources=[{source}]"])
    read = "{name: oasst2_en_top1, langs: [en, de]}"  # the registry's adapter reads it
    assert load_config(_child(tmp_path, ""), [f"data.sources=[{read}]"]).data.sources[0].langs == ["en", "de"]


def test_rope_scaling_overrides_take_a_mapping():
    from train.model import build_for_training

    cfg = load_config(
        ROOT / "configs/smoke/cpt_tiny.yaml",
        ["model.overrides.rope_scaling={rope_type: linear, factor: 2.0}"],
    )
    assert build_for_training(cfg, meta=True).config.rope_parameters == {
        "rope_type": "linear",
        "factor": 2.0,
        "rope_theta": 500000.0,
    }


def test_a_model_revision_needs_hub_weights_to_pin(tmp_path):
    from train.model import build_tokenizer

    with pytest.raises(UserError, match="model.revision pins the hub weights of model.name_or_path"):
        load_config(ROOT / "configs/smoke/cpt_tiny.yaml", ["model.revision=main"])
    local = [f"model.name_or_path={tmp_path}", "model.revision=main"]
    with pytest.raises(UserError, match="is a local folder: drop model.revision"):
        build_tokenizer(load_config(ROOT / "configs/smoke/cpt_tiny.yaml", local).model)


def test_a_model_revision_reaches_the_hub_loader(tmp_path):
    # A hub cache holding two snapshots of a/b: the pinned one loads; the default branch points at a broken one.
    import os
    import shutil
    import subprocess
    import sys

    pinned, moved = "a" * 40, "b" * 40
    repo = tmp_path / "hub/models--a--b"
    shutil.copytree(ROOT / "data_prep/assets/llama3_tiny_tokenizer", repo / "snapshots" / pinned)
    (repo / "snapshots" / pinned / "config.json").write_text('{"model_type": "llama"}')
    (repo / "snapshots" / moved).mkdir()
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(moved)
    both = f"""
import sys
from train.config import load_config
from train.errors import UserError
from train.model import build_tokenizer
hub = ["model.name_or_path=a/b"]
print(len(build_tokenizer(load_config(sys.argv[1], [*hub, "model.revision={pinned}"]).model)))
try:
    build_tokenizer(load_config(sys.argv[1], hub).model)
except UserError as e:
    print(e)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    args = [sys.executable, "-c", both, str(ROOT / "configs/smoke/cpt_tiny.yaml")]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    size, unpinned = out.stdout.splitlines()[:2]
    assert size == "2048" and unpinned.startswith("cannot load tokenizer 'a/b'")


def test_a_checkpoints_own_config_is_not_refused_by_checks_added_since(tmp_path):
    # Export reads the config a run trained with: a refusal added for new runs must not lock its weights in.
    from train.config import validate

    lora_head = ["peft={r: 8, alpha: 16, target_modules: [q_proj, lm_head]}", "train.loss_chunk_tokens=64"]
    renamed_suite = ["eval.suites=[old_suite]", "eval.every_steps=5", "eval.data_dir=x"]
    for overrides in (lora_head, renamed_suite):
        with pytest.raises(UserError):
            load_config(ROOT / "configs/smoke/cpt_tiny.yaml", overrides)
        dumped = load_config(ROOT / "configs/smoke/cpt_tiny.yaml").model_dump(mode="json")
        data = apply_overrides(dumped, overrides)
        stored = validate(data, "trainer_state.json", stored=True)
        assert (stored.eval.suites, stored.train.loss_chunk_tokens) == (
            data["eval"]["suites"],
            data["train"]["loss_chunk_tokens"],
        )
