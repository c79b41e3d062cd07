"""LoKr adapters' training step and peak memory: PEFT, LyCORIS, accelerated, vs LoRA.

    python benchmarks/adapters.py --threads 1 --out benchmarks/results   # CPU, float32
    python benchmarks/adapters.py --device cuda --dtype bfloat16 --out benchmarks/results
    python benchmarks/adapters.py --quick                                # smoke, seconds

One frozen ``nn.Linear`` (or a whole Llama-config model) with one adapter; a step is the
forward and the backward of a fixed output gradient into the adapter parameters and the
input (the model: ``loss.backward()`` into the adapter parameters). Contenders, all in the
same run on the same input: PEFT LoRA at rank r and at the rank nearest LoKr's trainable
parameters; PEFT LoKr (default and ``decompose_both``); the same after
``torchkron.integrations.peft.accelerate`` (default and with ``recompute=False``, which
keeps the factored chain's intermediate for the backward); LyCORIS LoKr (its default
rebuild forward), after ``torchkron.integrations.lycoris.accelerate``, and with
LyCORIS's own ``bypass_mode``. Times: ``torch.utils.benchmark`` ``blocked_autorange`` medians over
``--rounds`` interleaved rounds. Peak memory: the step's own allocations (activations,
gradients, temporaries; parameters and input excluded), from the CPU profiler's memory
events or CUDA's allocator statistics. Before timing, each accelerated contender's
output is checked against its unaccelerated twin (same values).

Writes ``adapters-<device>.json`` and ``.md`` (``--tag`` adds a suffix) into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.utils.benchmark as tb
from torch import Tensor, nn

from torchkron.experiments.bench.timing import step_peak_bytes
from torchkron.experiments.common.environment import device_name, environment
from torchkron.experiments.common.files import atomic_write_json, atomic_write_text

R = 8  # the adapters' rank (PEFT's LoKrConfig default)
SHAPES = [(768, 3072, 1024), (1024, 1024, 1024), (4096, 4096, 1024)]
MEMORY_ONLY = [(4096, 4096, 8192)]
QUICK = [(64, 256, 64), (256, 256, 64)]
# The goals of issue 19 (ratios within one run).
SPEEDUP_4096 = 2.0
LORA_STEP_RATIO = 1.25
LORA_MEMORY_RATIO = 1.10


@dataclass
class Contender:
    name: str
    module: nn.Module
    params: list[Tensor]
    twin: str | None = None  # the contender it must equal


def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    for name in list(logging.root.manager.loggerDict):
        if "lycoris" in name.lower():
            logging.getLogger(name).setLevel(logging.ERROR)


def _trainable(m: nn.Module) -> list[Tensor]:
    return [p for p in m.parameters() if p.requires_grad]


def lokr_params(n_in: int, n_out: int, decompose_both: bool = False) -> int:
    from peft import LoKrConfig, get_peft_model

    pm = get_peft_model(
        nn.Sequential(nn.Linear(n_in, n_out, device="meta")),
        LoKrConfig(r=R, target_modules=["0"], decompose_both=decompose_both),
    )
    return sum(p.numel() for p in _trainable(pm))


KEPT = "PEFT LoKr accelerated, recompute=False"


def kept_contender(pm: nn.Module) -> Contender:
    """``pm`` accelerated with ``recompute=False``: the trade-off of the default."""
    from torchkron.integrations import peft as tkpeft

    kept = copy.deepcopy(pm)
    tkpeft.accelerate(kept, recompute=False)
    return Contender(KEPT, kept, _trainable(kept), "PEFT LoKr")


def layer_contenders(base: nn.Module, n_in: int, n_out: int) -> list[Contender]:
    """Every contender around a copy of ``base`` (an nn.Sequential holding the Linear)."""
    from lycoris import create_lycoris
    from peft import LoKrConfig, LoraConfig, get_peft_model

    from torchkron.integrations import lycoris as tkly
    from torchkron.integrations import peft as tkpeft

    out: list[Contender] = []
    r_eq = max(1, round(lokr_params(n_in, n_out) / (n_in + n_out)))
    for r in dict.fromkeys((r_eq, R)):
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, target_modules=["0"]))
        out.append(Contender(f"LoRA r={r}", pm, _trainable(pm)))
    for both in (False, True):
        tag = " decompose_both" if both else ""
        pm = get_peft_model(
            copy.deepcopy(base),
            LoKrConfig(r=R, target_modules=["0"], decompose_both=both, init_weights=False),
        )
        fast = copy.deepcopy(pm)
        tkpeft.accelerate(fast)
        out.append(Contender(f"PEFT LoKr{tag}", pm, _trainable(pm)))
        out.append(
            Contender(f"PEFT LoKr{tag} accelerated", fast, _trainable(fast), f"PEFT LoKr{tag}")
        )
        if not both:
            out.append(kept_contender(pm))
    for mode in ("rebuild", "accelerated", "bypass"):
        model = copy.deepcopy(base).requires_grad_(False)
        torch.manual_seed(1)
        net = create_lycoris(
            model, 1.0, linear_dim=R, linear_alpha=R, algo="lokr", bypass_mode=mode == "bypass"
        )
        net.apply_to()
        net.to(next(base.parameters()))
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.02)
        if mode == "accelerated":
            tkly.accelerate(net)
        twin = None if mode == "rebuild" else "LyCORIS LoKr"
        name = "LyCORIS LoKr" + ("" if mode == "rebuild" else f" {mode}")
        out.append(Contender(name, model, list(net.parameters()), twin))
    # LyCORIS's twins share values through the seed; copy them to be sure.
    lyc = [c for c in out if c.name.startswith("LyCORIS")]
    for c in lyc[1:]:
        with torch.no_grad():
            for p, q in zip(c.params, lyc[0].params, strict=True):
                p.copy_(q)
    return out


def train_step(c: Contender, x: Tensor, g: Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        for p in c.params:
            p.grad = None
        c.module(x).backward(g)

    return step


def check_twins(cs: list[Contender], x: Tensor) -> None:
    by_name = {c.name: c for c in cs}
    with torch.no_grad():
        outs = {c.name: c.module(x) for c in cs}
    for c in cs:
        if c.twin is not None:
            ref = outs[c.twin]
            err = ((outs[c.name] - ref).norm() / ref.norm()).item()
            tol = 1e-5 if x.dtype == torch.float32 else 2e-2
            if not err <= tol:
                raise SystemExit(f"{c.name} differs from {by_name[c.twin].name}: {err:.2e}")


def time_rounds(
    steps: dict[str, Callable[[], None]], rounds: int, min_run_time: float, threads: int
) -> dict[str, float]:
    times: dict[str, list[float]] = {n: [] for n in steps}
    for fn in steps.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in steps.items():
            t = tb.Timer("fn()", globals={"fn": fn}, num_threads=threads)
            times[name].append(t.blocked_autorange(min_run_time=min_run_time).median)
    return {n: statistics.median(t) for n, t in times.items()}


def run_shape(
    n_in: int, n_out: int, rows: int, args: argparse.Namespace, timed: bool
) -> dict[str, Any]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(n_in, n_out)).to(device, dtype).requires_grad_(False)
    cs = layer_contenders(base, n_in, n_out)
    for c in cs:
        c.module.to(device, dtype)
    x = torch.randn(rows, n_in, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(rows, n_out, device=device, dtype=dtype)
    check_twins(cs, x)
    steps = {c.name: train_step(c, x, g) for c in cs}
    row: dict[str, Any] = {
        "shape": f"{n_in}->{n_out}",
        "rows": rows,
        "params": {c.name: sum(p.numel() for p in c.params) for c in cs},
    }
    if timed:
        row["step_s"] = time_rounds(steps, args.rounds, args.min_run_time, args.threads)
    row["peak_bytes"] = {n: step_peak_bytes(fn, device) for n, fn in steps.items()}
    print(_progress(row), flush=True)
    return row


def _progress(row: dict[str, Any]) -> str:
    parts = [f"{row['shape']} x{row['rows']}:"]
    for n in row["params"]:
        t = row.get("step_s", {}).get(n)
        parts.append(
            f"  {n}: {'' if t is None else f'{t * 1e3:.1f} ms, '}{_mib(row['peak_bytes'][n])}"
        )
    return "\n".join(parts)


def model_contenders(args: argparse.Namespace) -> tuple[list[Contender], Tensor]:
    import transformers
    from lycoris import LycorisNetwork
    from peft import LoKrConfig, LoraConfig, get_peft_model

    from torchkron.integrations import lycoris as tkly
    from torchkron.integrations import peft as tkpeft

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
        num_key_value_heads=12, vocab_size=args.vocab, max_position_embeddings=args.seq,
    )  # fmt: skip
    base = transformers.LlamaForCausalLM(cfg).to(device, dtype).requires_grad_(False)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cs: list[Contender] = []
    for r in (1, R):
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, target_modules=targets))
        cs.append(Contender(f"LoRA r={r}", pm, _trainable(pm)))
    pm = get_peft_model(
        copy.deepcopy(base), LoKrConfig(r=R, target_modules=targets, init_weights=False)
    )
    fast = copy.deepcopy(pm)
    tkpeft.accelerate(fast)
    cs += [
        Contender("PEFT LoKr", pm, _trainable(pm)),
        Contender("PEFT LoKr accelerated", fast, _trainable(fast), "PEFT LoKr"),
        kept_contender(pm),
    ]
    nets = []
    for mode in ("rebuild", "accelerated", "bypass"):
        model = copy.deepcopy(base)
        # The attention and MLP linears, as for PEFT (LyCORIS's "full" preset would add the
        # LM head); presets are class state in LyCORIS, so build the network directly.
        LycorisNetwork.apply_preset({"target_module": ["LlamaAttention", "LlamaMLP"]})
        net = LycorisNetwork(
            model, multiplier=1.0, lora_dim=R, alpha=R, network_module="lokr",
            bypass_mode=mode == "bypass",
        )  # fmt: skip
        net.apply_to()
        net.to(device, dtype)
        if nets:
            net.load_state_dict(nets[0].state_dict())
        else:
            with torch.no_grad():
                for p in net.parameters():
                    p.normal_(0, 0.02)
        nets.append(net)
        if mode == "accelerated":
            tkly.accelerate(net)
        name = "LyCORIS LoKr" + ("" if mode == "rebuild" else f" {mode}")
        cs.append(
            Contender(
                name, model, list(net.parameters()), None if mode == "rebuild" else "LyCORIS LoKr"
            )
        )
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    return cs, ids


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    cs, ids = model_contenders(args)

    def step_of(c: Contender) -> Callable[[], None]:
        def step() -> None:
            for p in c.params:
                p.grad = None
            c.module(input_ids=ids, labels=ids).loss.backward()

        return step

    with torch.no_grad():
        losses = {c.name: c.module(input_ids=ids, labels=ids).loss.item() for c in cs}
    for c in cs:
        if c.twin is not None and abs(losses[c.name] - losses[c.twin]) > 1e-4 * abs(
            losses[c.twin]
        ) * (1 if args.dtype == "float32" else 100):
            raise SystemExit(f"{c.name}: loss {losses[c.name]} vs {c.twin} {losses[c.twin]}")
    steps = {c.name: step_of(c) for c in cs}
    row: dict[str, Any] = {
        "shape": f"Llama h768 2 layers, batch {args.batch} x seq {args.seq}, vocab {args.vocab}",
        "rows": args.batch * args.seq,
        "params": {c.name: sum(p.numel() for p in c.params) for c in cs},
        "step_s": time_rounds(steps, args.rounds, args.min_run_time, args.threads),
        "peak_bytes": {
            n: step_peak_bytes(fn, torch.device(args.device)) for n, fn in steps.items()
        },
    }
    print(_progress(row), flush=True)
    return row


def _lora_eq(row: dict[str, Any]) -> str:
    """The LoRA contender with trainable parameters nearest PEFT LoKr's."""
    target = row["params"]["PEFT LoKr"]
    loras = [n for n in row["params"] if n.startswith("LoRA")]
    return min(loras, key=lambda n: (abs(row["params"][n] - target), row["params"][n]))


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def goals(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's goals, each met or not, with the numbers."""
    lines = []
    for row in rows:
        where = f"{row['shape']} x{row['rows']}"
        t, m, params = row.get("step_s"), row["peak_bytes"], row["params"]
        eq = _lora_eq(row)
        for tag in ("", " decompose_both"):
            slow, fast = f"PEFT LoKr{tag}", f"PEFT LoKr{tag} accelerated"
            if fast not in m:
                continue
            if t:
                s = t[slow] / t[fast]
                need = SPEEDUP_4096 if row["shape"] == "4096->4096" else 1.0
                lines.append(
                    f"- {where}: {fast} is {s:.2f}x faster than {slow} "
                    f"(goal >= {need:g}x): {_verdict(s >= need)}"
                )
            lines.append(
                f"- {where}: {fast} peak {_mib(m[fast])} vs {slow} {_mib(m[slow])} "
                f"(goal: no higher): {_verdict(m[fast] <= m[slow])}"
            )
        fast = "PEFT LoKr accelerated"
        if t:
            q = t[fast] / t[eq]
            lines.append(
                f"- {where}: {fast} step {q:.2f}x {eq}'s (trainable parameters "
                f"{params['PEFT LoKr']} vs {params[eq]}; goal <= {LORA_STEP_RATIO}x): "
                f"{_verdict(q <= LORA_STEP_RATIO)}"
            )
        q = m[fast] / m[eq]
        lines.append(
            f"- {where}: {fast} peak memory {q:.2f}x {eq}'s "
            f"(goal <= {LORA_MEMORY_RATIO}x): {_verdict(q <= LORA_MEMORY_RATIO)}"
        )
        if KEPT in m:
            cost = f"step {t[fast] / t[KEPT]:.2f}x, " if t else ""
            lines.append(
                f"- {where}: recompute=True (the default) against recompute=False: "
                f"{cost}peak {_mib(m[fast])} vs {_mib(m[KEPT])} (the trade-off, not a goal)"
            )
    return lines


def markdown(result: dict[str, Any]) -> str:
    env, cfg = result["environment"], result["config"]
    lines = [
        f"# LoKr adapters: training step and peak memory ({cfg['device']}, {cfg['dtype']})",
        "",
        f"Machine: {env['device_name']}; torch {env['torch']}, peft {result['versions']['peft']}, "
        f"lycoris-lora {result['versions']['lycoris']}; {cfg['threads']} thread(s); rank r = {R}. "
        f"Command: `{cfg['command']}`.",
        "",
        "Step: forward and backward into the adapter parameters and the input (the model: "
        "`loss.backward()` into the adapter parameters), medians of "
        f"{cfg['rounds']} interleaved rounds of "
        f"`blocked_autorange(min_run_time={cfg['min_run_time']})`; "
        "x: that step's time over PEFT LoKr's. Peak: the step's own allocations (activations, "
        "gradients, temporaries), parameters and input excluded.",
        "",
    ]
    for row in result["rows"]:
        t = row.get("step_s")
        lines += [f"## {row['shape']}, {row['rows']} rows", ""]
        if t:
            lines += [
                "| contender | trainable params | step | x PEFT LoKr | peak memory |",
                "|---|---:|---:|---:|---:|",
            ]
        else:
            lines += ["| contender | trainable params | peak memory |", "|---|---:|---:|"]
        for n, p in row["params"].items():
            mem = f"{row['peak_bytes'][n] / 2**20:.1f} MiB"
            if t:
                lines.append(
                    f"| {n} | {p:,} | {t[n] * 1e3:.1f} ms | {t[n] / t['PEFT LoKr']:.3f} | {mem} |"
                )
            else:
                lines.append(f"| {n} | {p:,} | {mem} |")
        lines.append("")
    lines += ["## Goals", "", *goals(result["rows"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-run-time", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--no-model", action="store_true", help="skip the whole-model step")
    ap.add_argument("--no-memory-only", action="store_true", help="skip 4096->4096 x8192")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one round: a smoke test")
    ap.add_argument("--out", type=Path, help="folder for adapters-<device>.{json,md}")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    _quiet()
    import peft

    start = time.perf_counter()
    device = torch.device(args.device)
    rows: list[dict[str, Any]] = []

    def emit() -> None:
        """Write the results so far (every row is kept if a later one fails)."""
        result = {
            "config": {
                "device": args.device, "dtype": args.dtype, "threads": args.threads,
                "rounds": args.rounds, "min_run_time": args.min_run_time, "rank": R,
                "command": " ".join(["python benchmarks/adapters.py", *(argv or sys.argv[1:])]),
            },
            "versions": {
                "peft": peft.__version__, "lycoris": importlib.metadata.version("lycoris-lora"),
            },
            "environment": environment(args.out, device=device, threads=args.threads),
            "seconds": time.perf_counter() - start,
            "rows": rows,
        }  # fmt: skip
        text = markdown(result)
        print(text)
        if args.out:
            kind = "cpu" if device.type == "cpu" else f"cuda-{device_name(device).lower()}"
            stem = f"adapters-{kind.replace(' ', '-')}{'-' + args.tag if args.tag else ''}"
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(args.out / f"{stem}.json", result)
            atomic_write_text(args.out / f"{stem}.md", text)

    if args.quick:
        args.rounds, args.min_run_time = 1, 0.05
    plan: list[Callable[[], dict[str, Any]]] = [
        (lambda i=i, o=o, n=n: run_shape(i, o, n, args, True))  # type: ignore[misc]
        for i, o, n in (QUICK if args.quick else SHAPES)
    ]
    if not args.quick and not args.no_memory_only:
        plan += [(lambda i=i, o=o, n=n: run_shape(i, o, n, args, False)) for i, o, n in MEMORY_ONLY]  # type: ignore[misc]
    if not args.quick and not args.no_model:
        plan.append(lambda: run_model(args))
    for run in plan:
        rows.append(run())
        emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
