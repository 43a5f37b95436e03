"""The torch route's engine (serving/torch_engine.py): requests that arrive while others decode join
the batch at the next step, and each one's text equals what plain `model.generate` gives it alone
(greedy, fp32, token for token, on a tiny random Llama and GPT-2 whose wide initial weights keep
their choices off near-ties, so float noise from padding cannot flip one); a cancelled request
leaves and the others finish unchanged; stop strings end a request and its stream adds up to its
text; a seeded sample is the same in a batch as alone."""

from __future__ import annotations

import pytest
import torch

from warmstart.config import GenerateConfig, build
from warmstart.inference.decoding import check_options, complete, generation_config, seed_all
from warmstart.models.causal import CausalLM
from warmstart.serving import gen_engine, torch_engine

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old",
    "Water",
    "My favourite colour is blue and",
    "A",
    "The quick brown fox jumps over the lazy dog because it",
]
BUDGETS = [24, 6, 14, 10, 20, 12]


def _tiny(kind: str) -> CausalLM:
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from conftest import GPT2_TOKENIZER
    from warmstart.models.bundled import smollm2

    torch.manual_seed(0)
    if kind == "llama":
        tok = AutoTokenizer.from_pretrained(smollm2())
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                initializer_range=0.2,
                eos_token_id=tok.eos_token_id,
            )
        )
    else:
        tok = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tok),
                n_positions=256,
                n_embd=32,
                n_layer=2,
                n_head=2,
                initializer_range=0.2,
            )
        )
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    return CausalLM(kind, "", model.eval(), tok, 256)


@pytest.fixture(scope="module")
def llama() -> CausalLM:
    return _tiny("llama")


@pytest.fixture(scope="module")
def gpt2() -> CausalLM:
    return _tiny("gpt2")


@pytest.fixture(params=["llama", "gpt2"])
def lm(request) -> CausalLM:
    return request.getfixturevalue(request.param)


def _cfg(prompt: str, budget: int, **options) -> GenerateConfig:
    return build(
        GenerateConfig,
        {"prompts": [prompt], "model": "tiny", "max_new_tokens": budget, **options},
        source="the test",
    )


def alone(lm: CausalLM, prompt: str, budget: int, **options):
    """What plain model.generate gives this request by itself (the server's unbatched route)."""
    cfg = _cfg(prompt, budget, **options)
    stops = check_options(cfg)
    if cfg.seed is not None:
        seed_all(cfg.seed)
    gc = generation_config(cfg, lm.model.generation_config, stops)
    ids = lm.tokenizer(prompt)["input_ids"]
    return complete(lm, [prompt], [ids], [budget], gc, stops)[0]


def job(lm: CausalLM, prompt: str, budget: int, on_piece=None, **options) -> gen_engine.Job:
    cfg = _cfg(prompt, budget, **options)
    return gen_engine.Job(
        lm.tokenizer(prompt)["input_ids"],
        budget,
        check_options(cfg),
        torch_engine.options_of(lm, cfg),
        rows=cfg.num_return_sequences,
        prompt=prompt,
        on_piece=on_piece,
    )


def test_requests_arriving_mid_decode_equal_each_decoded_alone(lm):
    expected = [alone(lm, p, b) for p, b in zip(PROMPTS, BUDGETS)]
    engine = torch_engine.Engine(lm, max_batch=4)
    pieces: list[str] = []
    late: list[gen_engine.Job] = []

    def arrive(piece: str) -> None:
        # In the engine's thread, between two steps of the first request: the next ones arrive
        # while it decodes (its 2nd, 4th and 6th piece), so they must join a running batch.
        pieces.append(piece)
        if len(pieces) in (2, 4, 6):
            k = 3 + len(late)
            late.append(engine.submit(job(lm, PROMPTS[k], BUDGETS[k])))

    try:
        first = [engine.submit(job(lm, PROMPTS[0], BUDGETS[0], on_piece=arrive))]
        first += [engine.submit(job(lm, p, b)) for p, b in zip(PROMPTS[1:3], BUDGETS[1:3])]
        results = [j.wait() for j in first]
        assert len(late) == 3
        results += [j.wait() for j in late]
    finally:
        engine.close()
    assert results == expected
    assert "".join(pieces) == expected[0].completions[0]
    assert 2 <= engine.widest <= 4  # batched, never more rows than max_batch


def test_a_cancelled_request_leaves_and_the_others_finish_unchanged(llama):
    lm = llama
    expected = [alone(lm, p, b) for p, b in zip(PROMPTS[1:4], BUDGETS[1:4])]
    engine = torch_engine.Engine(lm, max_batch=8)
    seen: list[str] = []

    def leave_early(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            gone.cancel()  # as a client that disconnects: the job leaves at the next step

    try:
        gone = engine.submit(job(lm, PROMPTS[0], 60, on_piece=leave_early))
        others = [engine.submit(job(lm, p, b)) for p, b in zip(PROMPTS[1:4], BUDGETS[1:4])]
        with pytest.raises(gen_engine.Cancelled):
            gone.wait()
        assert len(gone.tokens[0]) < 60
        assert [j.wait() for j in others] == expected
    finally:
        engine.close()


def test_a_stop_string_ends_the_request_and_its_stream_adds_up_to_its_text(llama):
    lm = llama
    whole = alone(lm, PROMPTS[0], 24).completions[0]
    stop = whole[len(whole) // 2 :].strip()[:3]
    expected = alone(lm, PROMPTS[0], 24, stop=[stop])
    assert expected.finish_reasons == ["stop"]
    engine = torch_engine.Engine(lm, max_batch=4)
    pieces: list[str] = []
    try:
        other = engine.submit(job(lm, PROMPTS[1], 20))
        stopped = engine.submit(job(lm, PROMPTS[0], 24, on_piece=pieces.append, stop=[stop]))
        assert stopped.wait() == expected
        assert other.wait() == alone(lm, PROMPTS[1], 20)
    finally:
        engine.close()
    assert expected.completions[0] == whole[: whole.find(stop)]
    assert "".join(pieces) == expected.completions[0]


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch(lm):
    options = dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=11)
    engine = torch_engine.Engine(lm, max_batch=8)
    try:
        by_itself = engine.submit(job(lm, PROMPTS[0], 20, **options)).wait()
        two = engine.submit(job(lm, PROMPTS[0], 20, num_return_sequences=2, **options)).wait()
        greedy = [engine.submit(job(lm, p, b)) for p, b in zip(PROMPTS[1:4], BUDGETS[1:4])]
        in_batch = engine.submit(job(lm, PROMPTS[0], 20, **options))
        two_again = engine.submit(job(lm, PROMPTS[0], 20, num_return_sequences=2, **options))
        assert in_batch.wait() == by_itself
        assert two_again.wait() == two
        assert [j.wait() for j in greedy] == [
            alone(lm, p, b) for p, b in zip(PROMPTS[1:4], BUDGETS[1:4])
        ]
    finally:
        engine.close()
    # One row seeded as generate seeds it: the same text as model.generate after seed_all.
    assert by_itself == alone(lm, PROMPTS[0], 20, **options)
    assert two.completions[0] == by_itself.completions[0]  # row k draws from seed + k
    assert len(set(two.completions)) == 2


def test_more_requests_than_the_batch_wait_and_all_finish(llama):
    lm = llama
    engine = torch_engine.Engine(lm, max_batch=2)
    try:
        jobs = [engine.submit(job(lm, p, b)) for p, b in zip(PROMPTS, BUDGETS)]
        results = [j.wait() for j in jobs]
    finally:
        engine.close()
    assert engine.widest == 2
    assert results == [alone(lm, p, b) for p, b in zip(PROMPTS, BUDGETS)]


def test_more_streaming_clients_than_server_threads_all_get_their_text(tiny_gpt2):
    """The official openai client, many concurrent streams against a real uvicorn process on the
    torch route: each stream's text is what its prompt gets alone, and the streams wait in the event
    loop, not in Starlette's thread pool (40 threads), which would otherwise hold one each."""
    import asyncio
    import os
    import socket
    import subprocess
    import sys
    import time

    httpx = pytest.importorskip("httpx")
    openai = pytest.importorskip("openai")
    streams, prompts = 48, ["Once upon a time", "The weather", "My name is", "Water"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    flags = ["--backend", "torch", "--cpu", "--max-batch-size", "8", "--max-queue", "200"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmstart", "serve", str(tiny_gpt2), "--port", str(port)]
        + [*flags, "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # One intra-op thread: the server's thread count is then its own threads'.
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 300  # a bound for a loaded machine, not a timing
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=120)
        expected = {
            p: client.completions.create(
                model=str(tiny_gpt2), prompt=p, temperature=0, max_tokens=10
            )
            .choices[0]
            .text
            for p in prompts
        }

        async def main() -> tuple[list[str], int]:
            aclient = openai.AsyncOpenAI(
                base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=120
            )
            started, all_started = [0], asyncio.Event()
            threads: list[int] = []

            async def one(k: int) -> str:
                stream = await aclient.completions.create(
                    model=str(tiny_gpt2),
                    prompt=prompts[k % len(prompts)],
                    temperature=0,
                    max_tokens=10,
                    stream=True,
                )
                pieces = []
                async for chunk in stream:
                    if not pieces:  # every stream open at once before any is read further
                        started[0] += 1
                        if started[0] == streams:
                            threads.append(len(os.listdir(f"/proc/{proc.pid}/task")))
                            all_started.set()
                        await all_started.wait()
                    pieces.append(chunk.choices[0].text)
                return "".join(pieces)

            texts = await asyncio.gather(*(one(k) for k in range(streams)))
            await aclient.close()
            return texts, threads[0]

        texts, threads = asyncio.run(main())
    finally:
        proc.kill()
        proc.wait()
    assert texts == [expected[prompts[k % len(prompts)]] for k in range(streams)]
    assert threads < 40, f"{threads} server threads for {streams} streams"
