"""Preference tuning and multi-turn chat SFT of SmolLM2-135M-Instruct (`smollm2`) against TRL, side by
side on the same pairs, length cut, batch, learning rate, beta, steps and LoRA (r 16, alpha 32,
dropout 0.05 on q_proj,v_proj), fp32 on the CPU (or a GPU when there is one). In DPO neither side
keeps any dropout: TRL's disable_dropout (its default) zeroes it, and so does `--task dpo`'s default.

DPO: TRL's ``DPOTrainer`` (``precompute_ref_log_probs``, ``peft_config``) vs `finetune --task dpo`
(sigmoid loss) on a slice of HH-RLHF helpful pairs (../shared/data/hh-rlhf/helpful.jsonl.gz, those
whose chosen and rejected conversations render within --max-length tokens, so neither side cuts).
Both merged models (and the base) are scored by the same code on the same held-out pairs:
preference accuracy (reward, against the base as reference) and the share of pairs whose chosen
reply the model itself finds likelier per token (log-prob accuracy: the base model's baseline);
pairs/s of the whole training call (model load, tokenisation, reference log-probs, training,
merging and saving; each side's modules imported before its clock starts) and peak resident memory
(each side in a process of its own). Gradient checkpointing is on for both sides, TRL's default
(warmstart's --gradient-checkpointing); --no-checkpointing turns it off for both.

SFT: TRL's ``SFTTrainer(assistant_only_loss=True)`` vs multi-turn `finetune --task causal-lm` on the
chosen dialogues, with SmolLM2's template marked with ``{% generation %}`` (TRL needs the marks; it
renders the same text): the loss masks compared token for token (off TRL's clock), conversations/s;
both merge and save their model.

Before/after: five held-out multi-turn prompts continued greedily by the base and the DPO model
(`generate --chat --messages`). Prints Markdown tables and writes results.json into --out.

    .venv/bin/python benchmarks/dpo.py                      # the full run: 512 train, 128 test pairs
    .venv/bin/python benchmarks/dpo.py --train 32 --test 32 --steps 8 --batch-size 4   # reduced
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful.jsonl.gz"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
# SmolLM2-Instruct's chat template with TRL's {% generation %} marks around each reply and its end.
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def base_path() -> str:
    from warmstart.models.registry import resolve

    return resolve("smollm2")


def prepare(args, work: Path) -> dict:
    """The train/test pair files (TRL's conversational format, which warmstart reads too), the
    chosen dialogues for SFT, and five held-out multi-turn prompts."""
    from transformers import AutoTokenizer

    from warmstart.data.conversations import ChatRenderer, read_preferences

    # helpful.jsonl.gz row 722 has the same reply twice: finetune refuses such a pair; left out.
    lines = [json.loads(x) for x in gzip.open(HH, "rt")]
    kept = work / "hh-helpful.jsonl"
    kept.write_text("".join(json.dumps(r) + "\n" for r in lines if r["chosen"] != r["rejected"]))
    pairs = read_preferences(kept)
    renderer = ChatRenderer(AutoTokenizer.from_pretrained(base_path()))
    fits = []
    for i in range(len(pairs)):
        p = pairs.prompts[i]
        lengths = [
            len(renderer.render([*p, {"role": "assistant", "content": r}]).ids)
            for r in (pairs.chosen[i], pairs.rejected[i])
        ]
        if max(lengths) <= args.max_length:
            fits.append(i)
        if len(fits) >= args.train + args.test:
            break
    rows = [
        {
            "prompt": pairs.prompts[i],
            "chosen": [{"role": "assistant", "content": pairs.chosen[i]}],
            "rejected": [{"role": "assistant", "content": pairs.rejected[i]}],
        }
        for i in fits
    ]
    train, test = rows[: args.train], rows[args.train :]

    def write(name: str, items: list[dict]) -> str:
        path = work / name
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        return str(path)

    multi = [r["prompt"] for r in test if sum(m["role"] == "user" for m in r["prompt"]) >= 2][:5]
    (work / "template.jinja").write_text(TEMPLATE)
    return {
        "train": write("train.jsonl", train),
        "test": write("test.jsonl", test),
        "sft": write("sft.jsonl", [{"messages": r["prompt"] + r["chosen"]} for r in train]),
        "prompts": write("prompts.jsonl", [{"messages": m} for m in multi]),
        "template": str(work / "template.jinja"),
        "n_train": len(train),
        "n_test": len(test),
        "searched_rows": fits[-1] + 1 if fits else 0,
    }


def peak_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork and exec, so each side would report at least the benchmark process's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def trl_training(args) -> dict:
    """The training settings both TRL trainers get, as warmstart's side gets them (see ``ours``)."""
    import torch

    return dict(
        gradient_checkpointing=args.checkpointing,
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=args.seed,
    )


def side_trl_dpo(args, files: dict, out: Path) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    t = time.perf_counter()
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(base_path())
    model = AutoModelForCausalLM.from_pretrained(base_path(), dtype=torch.float32)
    config = DPOConfig(
        output_dir=str(out / "trl-dpo-run"),
        beta=args.beta,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=args.batch_size * 2,
        **trl_training(args),
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=load_dataset("json", data_files=files["train"], split="train"),
        processing_class=tok,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
    )
    trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out / "trl-dpo")
    tok.save_pretrained(out / "trl-dpo")
    return {"seconds": time.perf_counter() - t, "model": str(out / "trl-dpo")}


def ours(args, **options):
    import warmstart

    return warmstart.finetune(
        model="smollm2",
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_steps=args.steps,
        lr=args.lr,
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=options.pop("lora_dropout", LORA["lora_dropout"]),
        lora_target_modules=",".join(LORA["target_modules"]),
        precision="fp32",
        attn_implementation="sdpa",
        gradient_checkpointing=args.checkpointing,
        seed=args.seed,
        progress=False,
        overwrite=True,
        **options,
    )


def side_ours_dpo(args, files: dict, out: Path) -> dict:
    # Imported before the clock starts, as TRL's modules are on its side (warmstart's public API
    # imports its commands lazily: `finetune` on first use).
    import warmstart.tasks.finetune  # noqa: F401

    t = time.perf_counter()
    result = ours(
        args,
        task="dpo",
        data=files["train"],
        beta=args.beta,
        # The kind's default, no dropout: TRL's DPOTrainer sets every dropout to 0 (its
        # disable_dropout, on by default), the LoRA dropout it was given included.
        lora_dropout=None,
        out=str(out / "ours-dpo-run"),
    )
    return {
        "seconds": time.perf_counter() - t,
        "loop_seconds": result.metrics["train_loop_seconds"],
        "model": str(result.model_dir),
    }


def side_trl_sft(args, files: dict, out: Path) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from warmstart.data.batching import IGNORE
    from warmstart.data.conversations import ChatRenderer

    t = time.perf_counter()
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(base_path())
    tok.chat_template = TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(base_path(), dtype=torch.float32)
    data = load_dataset("json", data_files=files["sft"], split="train")
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out / "trl-sft-run"),
            assistant_only_loss=True,
            packing=False,
            **trl_training(args),
        ),
        train_dataset=data,
        processing_class=tok,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
    )
    # The masks TRL trains with, against warmstart's rendering of the same conversations (a check
    # of the benchmark's, off TRL's clock).
    t_check = time.perf_counter()
    renderer = ChatRenderer(tok)
    tokens = differing = rows_equal = 0
    for row, conv in zip(trainer.train_dataset, data["messages"]):
        mine = renderer.render(conv)
        # TRL turns its assistant mask into labels (-100 outside the replies) before training.
        theirs = (
            [bool(m) for m in row["assistant_masks"]]
            if "assistant_masks" in row
            else [x != IGNORE for x in row["labels"]]
        )
        same_ids = list(row["input_ids"]) == mine.ids
        mask = [x != IGNORE for x in mine.labels]
        tokens += len(mask)
        differing += sum(a != b for a, b in zip(mask, theirs)) + abs(len(mask) - len(theirs))
        rows_equal += same_ids and mask == theirs
    t += time.perf_counter() - t_check
    trainer.train()
    # Merged and saved as on the DPO side (and as warmstart's run saves its model).
    trainer.model.merge_and_unload().save_pretrained(out / "trl-sft")
    tok.save_pretrained(out / "trl-sft")
    return {
        "seconds": time.perf_counter() - t,
        "mask_tokens": tokens,
        "mask_differing": differing,
        "mask_rows_equal": rows_equal,
        "rows": len(data),
    }


def side_ours_sft(args, files: dict, out: Path) -> dict:
    import warmstart.tasks.finetune  # noqa: F401  (before the clock, as on the DPO side)

    t = time.perf_counter()
    result = ours(
        args,
        task="causal-lm",
        data=files["sft"],
        template=files["template"],
        out=str(out / "ours-sft-run"),
    )
    return {
        "seconds": time.perf_counter() - t,
        "loop_seconds": result.metrics["train_loop_seconds"],
    }


SIDES = {
    "trl-dpo": side_trl_dpo,
    "ours-dpo": side_ours_dpo,
    "trl-sft": side_trl_sft,
    "ours-sft": side_ours_sft,
}


def run_side(name: str, args, files: dict, out: Path) -> dict:
    """One side in a process of its own: its peak memory is its own."""
    cmd = [sys.executable, __file__, "--side", name, "--out", str(out), *args.passed]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{name} failed")
    return json.loads((out / f"{name}.json").read_text())


def score(path: str, test: str, reference: str | None) -> dict:
    from warmstart.data.conversations import read_preferences
    from warmstart.kinds.dpo import score_pairs

    return score_pairs(path, reference, read_preferences(test), "sigmoid", 0.1, None, 8, False)


def completions(model: str, prompts: str) -> list[str]:
    import warmstart

    gens = warmstart.generate(
        model=model,
        chat=True,
        messages=prompts,
        strategy="greedy",
        max_new_tokens=48,
        backend="torch",
        progress=False,
        precision="fp32",
    )
    return [g.completions[0] for g in gens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--test", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gradient checkpointing on both sides (TRL's default; warmstart's "
        "--gradient-checkpointing); --no-checkpointing: off on both",
    )
    parser.add_argument(
        "--only", choices=("all", "dpo"), default="all", help="dpo: the DPO sides alone (no SFT)"
    )
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-dpo"))
    parser.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.passed = [
        a
        for k, v in vars(args).items()
        if k not in ("out", "side", "only")
        for a in (
            (f"--{'' if v else 'no-'}{k}",)
            if isinstance(v, bool)
            else (f"--{k.replace('_', '-')}", str(v))
        )
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.side:
        files = json.loads((out / "files.json").read_text())
        found = SIDES[args.side](args, files, out)
        found["peak_mb"] = peak_mb()
        (out / f"{args.side}.json").write_text(json.dumps(found))
        return
    files = prepare(args, out)
    (out / "files.json").write_text(json.dumps(files))
    wanted = [n for n in SIDES if args.only == "all" or n.endswith("-dpo")]
    sides = {name: run_side(name, args, files, out) for name in wanted}
    base = base_path()
    scores = {
        "base": score(base, files["test"], None),
        "trl-dpo": score(sides["trl-dpo"]["model"], files["test"], base),
        "ours-dpo": score(sides["ours-dpo"]["model"], files["test"], base),
    }
    chats = [json.loads(x)["messages"] for x in Path(files["prompts"]).read_text().splitlines()]
    before, after = (
        completions(base, files["prompts"]),
        completions(sides["ours-dpo"]["model"], files["prompts"]),
    )
    pairs = args.steps * args.batch_size
    results = {
        "args": {k: v for k, v in vars(args).items() if k != "passed"},
        "files": files,
        "sides": sides,
        "scores": scores,
        "completions": [
            {"messages": c, "before": b, "after": a} for c, b, a in zip(chats, before, after)
        ],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    t, o = sides["trl-dpo"], sides["ours-dpo"]
    gc = "on" if args.checkpointing else "off"
    print(
        f"DPO: {files['n_train']} train pairs ({pairs} trained), {files['n_test']} held out;"
        f" gradient checkpointing {gc} for both sides\n"
    )
    print("| | held-out preference accuracy | log-prob accuracy | pairs/s | peak MB |")
    print("|---|---|---|---|---|")
    print(f"| base | - | {scores['base']['logp_accuracy']:.3f} | - | - |")
    for name, s in (("TRL DPOTrainer", "trl-dpo"), ("warmstart --task dpo", "ours-dpo")):
        m = scores[s]
        print(
            f"| {name} | {m['accuracy']:.3f} | {m['logp_accuracy']:.3f} | "
            f"{pairs / sides[s]['seconds']:.3f} | {sides[s]['peak_mb']:.0f} |"
        )
    print(f"\nspeed ratio (ours / TRL): {t['seconds'] / o['seconds']:.2f}x\n")
    if "trl-sft" in sides:
        ts, os_ = sides["trl-sft"], sides["ours-sft"]
        print(
            f"SFT: masks differ on {ts['mask_differing']} of {ts['mask_tokens']} tokens "
            f"({ts['mask_rows_equal']}/{ts['rows']} conversations identical); conversations/s "
            f"TRL {pairs / ts['seconds']:.3f}, ours {pairs / os_['seconds']:.3f} "
            f"({ts['seconds'] / os_['seconds']:.2f}x); peak MB TRL {ts['peak_mb']:.0f}, "
            f"ours {os_['peak_mb']:.0f}"
        )
    for c in results["completions"]:
        print(
            f"\n> {c['messages'][-1]['content'][:80]}\nbefore: {c['before']!r}\nafter: {c['after']!r}"
        )


if __name__ == "__main__":
    main()
