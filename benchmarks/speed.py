"""Speed: is a skipped model as fast as its FLOPs allow, and cheaper to train than PEFT LoRA?

Everything is measured side by side in one process: the models of a table take turns in every round
(shuffled), medians are reported with their spread ((p90 - p10) / median), never absolute timings.

1. Inference: the pruned DAS-k model against the frozen base model, k = 1 .. N/3 (the last k blocks),
   next to PEFT LoRA (r = 8, unmerged and merged) on the same model and inputs. Goal: latency ratio
   within 3% of the FLOPs ratio. PEFT has no bottleneck adapter (huggingface/peft#244), so none is shown.
1b. The exported model: DAS-k (k = N/3) written by SkipModel.save_pretrained and loaded back with plain
   transformers (AutoModel*.from_pretrained(dir, trust_remote_code=True)), against the frozen base model,
   both eager and both under torch.compile, in the same rounds. Same goal. A third row per mode, the exported
   model with its adapters unhooked, splits the gap between the blocks and the adapters.
2. Training: one optimiser step with a fixed plan (frozen backbone; adapters + head, or LoRA + head).
   Goal: step time of DAS-k / LoRA <= (N - k)/N + 0.05. Memory: bytes saved for the backward pass
   (activations) and trainable + optimiser state; CUDA max allocated on a GPU.
3. Search: the DAS search against plain adapter training for the same steps. Goal: <= 1.35x.

    python benchmarks/speed.py                       # CPU, full (writes benchmarks/results/speed.md)
    python benchmarks/speed.py --quick               # CI smoke run
    python benchmarks/speed.py --sections export --out speed-export   # table 1b only
    python benchmarks/speed.py --device cuda --dtype bfloat16 --out speed-gpu   # see benchmarks/gpu.sh
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
import torch._dynamo.exc
import torch._inductor.exc
from common import Report, minilm_runs

from archskip import AdapterConfig, ModelConfig, SearchConfig, SkipModel, SkipPlan, TaskConfig, TrainConfig
from archskip.models.load import load_pretrained
from archskip.profile import count_flops, measure_latency
from archskip.report import markdown_table
from archskip.tasks import build_task

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TOLERANCE = 0.03


# ---- model zoo ---------------------------------------------------------------------------------------
def zoo(quick: bool, device: str) -> list[dict]:
    """(name, model config, task config, adapter, batch) for every model of the inference table."""
    from archskip.models.packaged import smollm2

    big = not quick
    items = [
        dict(name="all-MiniLM-L6-v2 (real)", model=ModelConfig(name_or_path=MINILM), task=TaskConfig(max_length=64, pooling="mean"),
             adapter=AdapterConfig(hidden=64, skip_hidden=128), batch=(32, 64) if big else (4, 16)),
        dict(name="SmolLM2-135M (real), prefill", model=ModelConfig(name_or_path=str(smollm2())), task=TaskConfig(name="boolq"),
             adapter=AdapterConfig.lavin(), batch=(8, 128) if big else (2, 16), decode=True),
        dict(name="ViLT-B/32 (384x384, 40 tokens)", model=ModelConfig(name_or_path="random:vilt-b32", tokenizer=MINILM),
             task=TaskConfig(name="vqa", max_length=40, image_size=384, max_image_side=384),
             adapter=AdapterConfig(hidden=96, skip_hidden=192), batch=(8, 40) if big else (1, 8)),
        dict(name="METER (384 px, 50 tokens)", model=ModelConfig(name_or_path="random:meter", tokenizer=MINILM),
             task=TaskConfig(name="vqa", max_length=50, image_size=384, image_resize="square", image_norm="clip"),
             adapter=AdapterConfig(hidden=96, skip_hidden=288), batch=(8 if device == "cuda" else 2, 50) if big else (1, 8)),
    ]
    return items if big else items[:1]


def build(spec: dict, dtype: torch.dtype):
    base, tok, extras = load_pretrained(spec["model"])
    task = build_task(spec["task"], tok, [{"label": 0}, {"label": 1}] if spec["task"].name == "classification" else None)
    return base.to(dtype), tok, task


def das(base, task, spec, k: int, device, dtype) -> SkipModel:
    from archskip.tasks import assemble

    m = assemble(copy.deepcopy(base), task, spec["adapter"], spec["model"])
    m.apply_plan(SkipPlan.last(k, m.num_candidates))
    if k:  # (k = 0 stays unpruned: its adapters can then be switched off to time the frozen base model)
        m.prune()
    return m.to(device).eval()


class PeftTaskModel(torch.nn.Module):
    """A PEFT model seen the way a Task sees a SkipModel: `.base`, `.config`, `.head`, forward = base forward."""

    def __init__(self, base: torch.nn.Module, config):
        super().__init__()
        self.base, self._config, self.head = base, config, None

    @property
    def config(self):
        return self._config

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base.generate(*args, **kwargs)


def lora(base, task, device, merged: bool) -> PeftTaskModel:
    """PEFT LoRA (r = 8 on the attention projections) on a copy of the same base, with the same head."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = sorted(names & {"query", "value", "q_proj", "v_proj"})
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    for n, p in model.named_parameters():  # LoRA's B starts at 0: give it values, as after training
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.01)
    if merged:
        model = model.merge_and_unload()
    wrapped = PeftTaskModel(model, base.config)
    task.attach_head(wrapped)
    return wrapped.to(device).eval()


# ---- 1. inference -------------------------------------------------------------------------------------
def inference(spec: dict, device: str, dtype: torch.dtype, repeats: int, quick: bool = False) -> list[dict]:
    base, tok, task = build(spec, dtype)
    batch_size, seq = spec["batch"]
    batch = {k: (v.to(device).to(dtype) if v.is_floating_point() else v.to(device)) for k, v in task.example_batch(batch_size, seq).items()}
    ref = das(base, task, spec, 0, device, dtype)  # for the frozen base: the same model with adapters off
    n = ref.num_candidates
    models = {"base (frozen)": ("base", ref)}
    for k in (range(1, max(1, n // 3) + 1) if not quick else (1,)):
        models[f"DAS k={k}"] = ("das", das(base, task, spec, k, device, dtype))
    models["LoRA r=8, unmerged"] = ("lora", lora(base, task, device, merged=False))
    models["LoRA r=8, merged"] = ("lora", lora(base, task, device, merged=True))

    def runner(kind, m):
        if kind == "base":
            def run():
                with m.adapters_disabled():
                    return task.loss(m, batch)
            return run
        return lambda: task.loss(m, batch)

    with torch.no_grad():
        fns = {name: runner(kind, m) for name, (kind, m) in models.items()}
        flops = {name: count_flops(fn) for name, fn in fns.items()}
        lat = measure_latency(fns, warmup=2, repeats=repeats, device=device)
    rows = []
    for name in models:
        fr, lr = flops[name] / flops["base (frozen)"], lat[name].median_s / lat["base (frozen)"].median_s
        gap = lr / fr - 1
        rows.append({"model": spec["name"], "variant": name, "FLOPs ratio": round(fr, 4), "latency ratio": round(lr, 4),
                     "latency / FLOPs - 1": f"{gap:+.1%}", "spread": f"{lat[name].spread:.1%}",
                     "goal (within 3%)": ("met" if abs(gap) <= TOLERANCE else "NOT met") if name.startswith("DAS") else ""})
    if spec.get("decode"):
        rows += decode(spec, base, tok, task, device, dtype, repeats, quick)
    return rows


def decode(spec, base, tok, task, device, dtype, repeats, quick: bool = False) -> list[dict]:
    """Per-token decode: one forward of 1 new token per sequence against a KV cache of the prompt (the model's
    own step, without generate()'s bookkeeping); the cache is cropped back after every call."""
    batch_size, seq = spec["batch"]
    ids = torch.randint(100, 20000, (batch_size, seq), device=device)
    nxt = torch.randint(100, 20000, (batch_size, 1), device=device)
    models = {"base (frozen)": das(base, task, spec, 0, device, dtype)}
    n = models["base (frozen)"].num_candidates
    for k in ((n // 3,) if quick else range(1, n // 3 + 1, max(1, n // 3 // 4))):
        models[f"DAS k={k}"] = das(base, task, spec, k, device, dtype)

    def stepper(name, m):
        off = name.startswith("base")
        with torch.no_grad(), (m.adapters_disabled() if off else contextlib.nullcontext()):
            cache = m(input_ids=ids, use_cache=True).cache

        def step():
            with (m.adapters_disabled() if off else contextlib.nullcontext()):
                m(input_ids=nxt, cache=cache, use_cache=True)
            cache.crop(-1)  # drop the token just added: every call sees the same cache
        return step

    with torch.no_grad():
        fns = {name: stepper(name, m) for name, m in models.items()}
        flops = {name: count_flops(fn) for name, fn in fns.items()}
        lat = measure_latency(fns, warmup=3, repeats=repeats * 5, device=device)
    rows = []
    for name in models:
        if name.startswith("base"):
            continue
        fr, lr = flops[name] / flops["base (frozen)"], lat[name].median_s / lat["base (frozen)"].median_s
        rows.append({"model": spec["name"].replace("prefill", "decode, per token"), "variant": name,
                     "FLOPs ratio": round(fr, 4), "latency ratio": round(lr, 4), "latency / FLOPs - 1": f"{lr / fr - 1:+.1%}",
                     "spread": f"{lat[name].spread:.1%}",
                     "goal (within 3%)": "met" if abs(lr / fr - 1) <= TOLERANCE else "NOT met"})
    return rows


# ---- 1b. the exported model ---------------------------------------------------------------------------
# torch.compile's own failures (no working C++ compiler for inductor on a CPU, an op dynamo cannot trace): the
# compiled rows then say why; any other error is a bug of the model or the benchmark and fails the model's rows
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError,
                  torch._inductor.exc.CppCompileError, torch._inductor.exc.InvalidCxxCompiler)
DIAGNOSTIC = "its adapters unhooked (the blocks alone; no goal)"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask")


def export_and_load(m: SkipModel, task, directory: str, dtype: torch.dtype, device: str):
    """Write `m` with SkipModel.save_pretrained and load it back with plain transformers, as a user would: the auto
    class config.json's auto_map names first, trust_remote_code=True. Returns (model, why the task head is not in it
    or None): a head the export refuses (ViLT's VQA MLP) is left out, the backbone and its adapters are exported."""
    import transformers

    from archskip.export import ExportError

    why = None
    try:
        written = m.save_pretrained(directory, task=task if m.head is not None else None)
    except ExportError as e:
        if m.head is None:
            raise
        why = str(e)
        m.head = None  # (m is this benchmark's own copy) the same model without its head
        written = m.save_pretrained(directory)
    auto = next(a for a in written["classes"] if a != "AutoConfig")
    model = getattr(transformers, auto).from_pretrained(directory, trust_remote_code=True, dtype=dtype)
    return model.to(device).eval(), why


def exported(spec: dict, device: str, dtype: torch.dtype, repeats: int, compile_: bool) -> list[dict]:
    """The DAS-k model (k = N/3) exported and loaded with plain transformers, against the frozen base model (the
    plain transformers model it came from), eager and under torch.compile: all four take turns in the same rounds."""
    import tempfile

    from archskip.export import ExportError

    base, tok, task = build(spec, dtype)
    base = base.to(device).eval()
    batch_size, seq = spec["batch"]
    x = {k: (v.to(device).to(dtype) if v.is_floating_point() else v.to(device))
         for k, v in task.example_batch(batch_size, seq).items() if k in MODEL_INPUTS}
    if base.can_generate():
        x["use_cache"] = False  # prefill: the logits of every position, no cache to build (the decode rows time that)
    k = max(1, das(base, task, spec, 0, device, dtype).num_candidates // 3)
    name = f"DAS k={k}, exported"
    # (a directory name of its own: transformers keeps the remote code of a local directory under its base name)
    with tempfile.TemporaryDirectory(prefix="archskip-speed-export-") as tmp:
        try:
            loaded, why = export_and_load(das(base, task, spec, k, device, dtype), task, tmp, dtype, device)
        except ExportError as e:
            return [{"model": spec["name"], "variant": f"{name}: not exportable ({e})"[:300]}]
    models = {"base (frozen)": base, name: loaded, f"{name}, {DIAGNOSTIC}": without_hooks(loaded)}
    rows = [] if why is None else [{"model": spec["name"], "variant": f"task head left out of both: {why}"}]
    rows += timed_pairs(spec["name"], models, lambda m, eager: lambda: m(**x), compile_, repeats, warmup=2)
    if spec.get("decode"):
        ids = torch.randint(100, 20000, (batch_size, seq), device=device)
        nxt = torch.randint(100, 20000, (batch_size, 1), device=device)

        def stepper(m, eager):
            with torch.no_grad():  # the prompt's cache, built eagerly: only the per-token step is compiled and timed
                cache = eager(input_ids=ids, use_cache=True).cache

            def step():
                m(input_ids=nxt, cache=cache, use_cache=True)
                cache.crop(-1)  # drop the token just added: every call sees the same cache
            return step

        rows += timed_pairs(spec["name"].replace("prefill", "decode, per token"), models, stepper, compile_, repeats * 5,
                            warmup=3)
    return rows


def without_hooks(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an exported model with every forward hook removed: its kept blocks alone, no adapter runs (the
    exported modelling code runs every adapter from hooks). Its gap to its FLOPs is what the blocks and the parts
    that do not shrink with k (embeddings, pooler) cost; the rest of the exported model's gap is the adapters'."""
    bare = copy.deepcopy(model)
    for m in bare.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._forward_hooks_with_kwargs, m._forward_pre_hooks_with_kwargs):
            hooks.clear()
    return bare


def same_as_eager(compiled, eager_fn, name: str) -> None:
    """A compiled model's output (prefill: the model's output; decode steps return None) must be the eager one's:
    dynamo does not guard on module hooks by default, so two instances of one class that differ only in their hooks
    (the exported model and its unhooked copy) would share whichever graph compiled first (see `timed_pairs`).
    A model whose eager output varies between calls (ViLT samples image patches at random) is not compared."""
    eager, again = eager_fn(), eager_fn()
    if compiled is None or eager is None or not torch.equal(eager[0], again[0]):
        return
    a, b = compiled[0].float(), eager[0].float()  # (B, T, D) or (B, T, V)
    if not torch.allclose(a, b, rtol=1e-2, atol=1e-3 * b.abs().max().item()):
        raise RuntimeError(f"{name}: the compiled model's output differs from the eager model's by "
                           f"{(a - b).abs().max().item():.3g}: torch.compile ran another graph")


def timed_pairs(label: str, models: dict[str, torch.nn.Module], make, compile_: bool, repeats: int,
                warmup: int) -> list[dict]:
    """Rows of every model eager and, with `compile_`, under torch.compile (`make(model to run, eager model)` gives
    the timed call), as ratios to the first model (the frozen base) in the same mode. FLOPs are counted on the eager
    models (compiling changes none)."""
    fns = {(n, "eager"): make(m, m) for n, m in models.items()}
    # the exported modelling code runs its adapters from forward hooks, and dynamo skips guarding on hooks by default;
    # every model of a table compiles the same forward (and a decode step twice, for the cache's strides): past the
    # default 8 graphs per function dynamo would run the last models eagerly, slower than eager
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    why = "not run (--quick: eager only)"
    if compile_:
        why, comp = None, {}
        for n, m in models.items():
            comp[n, "torch.compile"] = make(torch.compile(m), m)
            try:
                with torch.no_grad():
                    same_as_eager(comp[n, "torch.compile"](), fns[n, "eager"], n)  # compiles (not timed)
            except COMPILE_ERRORS as e:
                why = f"torch.compile failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:200]
                break
        if why is None:
            fns.update(comp)
    with torch.no_grad():
        flops = {n: count_flops(fns[n, "eager"]) for n in models}
    lat = measure_latency(fns, warmup=warmup, repeats=repeats)
    ref = next(iter(models))
    rows = []
    for mode in ("eager", "torch.compile"):
        if (ref, mode) not in lat:
            rows.append({"model": label, "variant": "all", "run": mode, "latency ratio": why})
            continue
        for n in models:
            fr, lr = flops[n] / flops[ref], lat[n, mode].median_s / lat[ref, mode].median_s
            gap = lr / fr - 1
            rows.append({"model": label, "variant": n, "run": mode, "FLOPs ratio": round(fr, 4), "latency ratio": round(lr, 4),
                         "latency / FLOPs - 1": f"{gap:+.1%}", "spread": f"{lat[n, mode].spread:.1%}",
                         "compiled / eager": "" if mode == "eager" else round(lat[n, mode].median_s / lat[n, "eager"].median_s, 3),
                         "goal (within 3%)": "" if n == ref or n.endswith(DIAGNOSTIC) else ("met" if abs(gap) <= TOLERANCE else "NOT met")})
    return rows


# ---- 2. training --------------------------------------------------------------------------------------
def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward pass while `fn` runs (activation memory)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def training(spec: dict, device: str, dtype: torch.dtype, repeats: int) -> list[dict]:
    base, tok, task = build(spec, dtype)
    batch_size, seq = spec["batch"]
    batch = {k: (v.to(device).to(dtype) if v.is_floating_point() else v.to(device)) for k, v in task.example_batch(batch_size, seq).items()}
    n = das(base, task, spec, 0, device, dtype).num_candidates
    variants = {"LoRA r=8": lora(base, task, device, merged=False)}
    for k in sorted({0, 1, max(1, n // 3)}):
        variants[f"DAS k={k}"] = das(base, task, spec, k, device, dtype)
    for m in variants.values():  # training: the dtype of the frozen weights stays, adapters/LoRA train in fp32
        m.train()
    steps, mem = {}, {}
    for name, m in variants.items():
        m.train()
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step(m=m, opt=opt):
            opt.zero_grad(set_to_none=True)
            task.loss(m, batch).backward()
            opt.step()

        step()  # optimiser state exists from here on
        saved, _ = saved_bytes(lambda m=m: task.loss(m, batch))
        state = sum(p.numel() * p.element_size() * 3 for p in params)  # weights + Adam's two moments
        mem[name] = (saved, state)
        steps[name] = step
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    lat = measure_latency(steps, warmup=1, repeats=repeats, device=device, grad=True)
    rows = []
    for name in variants:
        ratio = lat[name].median_s / lat["LoRA r=8"].median_s
        k = int(name.split("=")[1]) if name.startswith("DAS") else None
        bound = (n - k) / n + 0.05 if k is not None else None
        rows.append({"model": spec["name"], "variant": name, "step time ratio to LoRA": round(ratio, 4),
                     "goal": "" if k is None else f"<= {bound:.3f}: {'met' if ratio <= bound else 'NOT met'}",
                     "saved for backward MB": round(mem[name][0] / 2**20, 1), "trainable + Adam MB": round(mem[name][1] / 2**20, 2),
                     "spread": f"{lat[name].spread:.1%}"})
    return rows


# ---- 3. search ---------------------------------------------------------------------------------------
def search_overhead(device: str, quick: bool, rounds: int) -> list[dict]:
    from archskip.data.movie_reviews import load_rotten_tomatoes
    from archskip.search import run_search

    base, tok, _ = load_pretrained(ModelConfig(name_or_path=MINILM))
    data = load_rotten_tomatoes()[::3][: (80 if quick else 1200)]
    steps = 4 if quick else 60
    cfg = TrainConfig(epochs=1, max_steps=steps, batch_size=8 if quick else 16, lr=2e-3, log_every=1000,
                      device="cuda" if device == "cuda" else "cpu")

    fresh, plain = minilm_runs(base, tok, data, cfg)

    t = 2 if quick else 10

    def searcher(mode: str):
        def search():
            model, task = fresh()
            run_search(model, task, data, SearchConfig(k=2, mode=mode, update_every=t, warmup_epochs=0.0,
                                                       reward_batch_size=cfg.batch_size), cfg, progress=False)
        return search

    # the goal is about the search loop (training under sampled plans + policy updates); the default (verified)
    # search then measures every plan once more, a cost fixed by search.verify_examples, not by the steps
    loop = f"DAS search loop (M = 3, T = {t}; mode exact)"
    runs = {"adapter training": plain, loop: searcher("exact"),
            "default search (loop + measuring the 15 plans)": searcher("verified")}
    times = {name: [] for name in runs}
    plain()
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    ratio = med[loop] / med["adapter training"]
    return [{"run": k, "median s": round(v, 2), "ratio": round(v / med["adapter training"], 3),
             "goal (<= 1.35x)": ("met" if ratio <= 1.35 else "NOT met") if k == loop else ""} for k, v in med.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--sections", nargs="+", default=["inference", "export", "training", "search"],
                    choices=["inference", "export", "training", "search"])
    ap.add_argument("--out", default="speed")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (2 if args.quick else 9)
    report = Report(args.out, f"Speed ({args.device}, {args.dtype})", [0], args.quick)
    specs = zoo(args.quick, args.device)

    def each(fn, specs, heading: str, columns: list[str], note: str = "") -> None:
        """One table of the rows of every model; a model that fails gets a row saying why (the others still run).
        The results file is rewritten after every model, so a run stopped early keeps the rows it measured."""
        rows = []
        for done, spec in enumerate(specs, 1):
            try:
                rows += fn(spec)
            except Exception as e:  # noqa: BLE001 (reported in the table, never hidden)
                rows.append({"model": spec["name"], "variant": f"failed: {type(e).__name__}: {e}"[:200]})
            if done < len(specs):
                partial = (heading, f"{markdown_table(rows, columns)}\n\n(partial: {done} of {len(specs)} models so far)")
                report.sections = [x for x in report.sections if x[0] != heading] + [partial]
                report.write()
        report.sections = [x for x in report.sections if x[0] != heading]
        report.table(heading, rows, columns, note=note)
        report.write()

    if "inference" in args.sections:
        each(lambda spec: inference(spec, args.device, dtype, repeats, args.quick), specs,
             "1. Inference: pruned DAS-k and PEFT LoRA against the frozen base model",
             ["model", "variant", "FLOPs ratio", "latency ratio", "latency / FLOPs - 1", "spread", "goal (within 3%)"],
             note="Batches: MiniLM 32 x 64 tokens; SmolLM2 8 x 128 tokens (decode: per new token with a KV cache, "
                  "8 sequences); ViLT 8 x (40 tokens + 384 x 384 image); METER 384 px + 50 tokens. The DAS rows "
                  "include their adapters (FLOPs and time). Decode: one new token per sequence against the prompt's KV cache (the LM head included in the FLOPs).")
    if "export" in args.sections:
        # METER is archskip's own model code, which the export refuses. SmolLM2 (prefill and decode, four models
        # compiled) takes longest: last, so that a run stopped early has the other rows. Quick: MiniLM eager only
        # (compiling it takes minutes on a CPU, longer than the rest of the smoke run).
        each(lambda spec: exported(spec, args.device, dtype, repeats, compile_=not args.quick), [specs[0], *specs[2:3], *specs[1:2]],
             "1b. The exported model (save_pretrained, loaded with plain transformers), eager and torch.compile",
             ["model", "variant", "run", "FLOPs ratio", "latency ratio", "latency / FLOPs - 1", "spread", "compiled / eager",
              "goal (within 3%)"],
             note="DAS k = N/3 written with SkipModel.save_pretrained and loaded back with "
                  "AutoModel*.from_pretrained(dir, trust_remote_code=True), against the frozen base model (the plain "
                  "transformers model it was made from, its forward only), both eager and both under torch.compile, all "
                  "four in the same shuffled rounds (medians); ratios are to the base model in the same run mode. Same "
                  "batches as table 1; prefill without a KV cache, decode as in table 1. FLOPs count matmuls only: the "
                  "adapters' norms, activations and adds are not in the FLOPs ratio but are in the time.")
    if "training" in args.sections:
        each(lambda spec: training(spec, args.device, dtype, repeats), specs[:3],
             "2. Training: one optimiser step, DAS-k against PEFT LoRA",
             ["model", "variant", "step time ratio to LoRA", "goal", "saved for backward MB", "trainable + Adam MB", "spread"],
             note="Same batch as the inference table; frozen backbone; the head trains in both.")
    if "search" in args.sections:
        report.table("3. Search overhead over adapter training (same steps)", search_overhead(args.device, args.quick, 1 if args.quick else 3),
                     ["run", "median s", "ratio", "goal (<= 1.35x)"],
                     note="all-MiniLM-L6-v2, batch 16, 60 steps, k = 2, reward batch = training batch, no warm-up (every "
                          "run updates the policy); median of alternating rounds.")
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
