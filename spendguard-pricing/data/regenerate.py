#!/usr/bin/env python3
"""Regenerates prices.json from BerriAI/litellm's model_prices_and_context_window.json.

Usage: regenerate.py NEW.json OLD.json > prices.json
  NEW: the current litellm price list (litellm/model_prices_and_context_window_backup.json in the
       litellm wheel on PyPI, identical in format to the file at the root of BerriAI/litellm).
  OLD: an older release's list, used only for models retired from the current one (Claude 3.x,
       Claude 4.0/4.1, Gemini 2.0, Groq Llama 3.x, Grok 3/4) that clients may still name.
Prices are facts copied as exact decimal strings (dollars per million tokens); nothing is rounded
except derived cache-write prices, which are rounded UP to the micro-dollar.
"""
import json, sys
from decimal import Decimal, ROUND_CEILING

SOURCE = "BerriAI/litellm model_prices_and_context_window.json (litellm 1.109.1 on PyPI; retired models from litellm 1.80.0)"
DATE = "2026-11-23"

def per_mtok(v):
    if v is None:
        return None
    d = (Decimal(repr(float(v))) * 1_000_000).quantize(Decimal("0.000001"), rounding=ROUND_CEILING)
    s = format(d.normalize(), "f")
    if "." not in s:
        s += ".00"
    elif len(s.split(".")[1]) == 1:
        s += "0"
    return s

def scale(v, f):
    return None if v is None else float(Decimal(repr(float(v))) * Decimal(f))

TIERS = [("above_272k_tokens", 272_000), ("above_200k_tokens", 200_000), ("above_128k_tokens", 128_000), ("above_100k_tokens", 100_000)]

def entry(v, anthropic=False, ctx_override=None):
    inp, out = v.get("input_cost_per_token"), v.get("output_cost_per_token")
    if inp is None or out is None:
        return None
    ctx = ctx_override or v.get("max_input_tokens") or v.get("max_tokens")
    mot = v.get("max_output_tokens") or ctx
    if v.get("mode") == "embedding":
        mot = 0
    if not ctx:
        return None
    cw = v.get("cache_creation_input_token_cost")
    cw1h = v.get("cache_creation_input_token_cost_above_1hr")
    if anthropic:
        # Anthropic's published multipliers: 5-minute write 1.25x input, 1-hour write 2x input.
        cw = cw if cw is not None else scale(inp, "1.25")
        # Anthropic bills every 1-hour write at exactly 2x input; litellm 1.80.0 carries a copied
        # $6.00 for Claude 3/3.5 Haiku, so the rule wins over a value that contradicts it.
        cw1h = scale(inp, "2")
    e = {"input": per_mtok(inp)}
    if v.get("cache_read_input_token_cost") is not None:
        e["cached_input"] = per_mtok(v["cache_read_input_token_cost"])
    if cw is not None:
        e["cache_write"] = per_mtok(cw)
    if cw1h is not None:
        e["cache_write_1h"] = per_mtok(cw1h)
    e["output"] = per_mtok(out)
    e["max_output_tokens"] = int(mot)
    e["context_window"] = int(ctx)
    for suffix, threshold in TIERS:
        ti = v.get("input_cost_per_token_" + suffix)
        to = v.get("output_cost_per_token_" + suffix)
        if ti is None or to is None:
            continue
        ratio = Decimal(repr(float(ti))) / Decimal(repr(float(inp))) if inp else Decimal(1)
        lc = {"above_input_tokens": threshold, "input": per_mtok(ti)}
        if v.get("cache_read_input_token_cost_" + suffix) is not None:
            lc["cached_input"] = per_mtok(v["cache_read_input_token_cost_" + suffix])
        tcw = v.get("cache_creation_input_token_cost_" + suffix)
        if tcw is None and cw is not None:
            tcw = scale(cw, ratio)  # same multiplier as the input price
        if tcw is not None:
            lc["cache_write"] = per_mtok(tcw)
        tcw1h = v.get("cache_creation_input_token_cost_above_1hr_" + suffix)
        if tcw1h is None and cw1h is not None:
            tcw1h = scale(cw1h, ratio)
        if tcw1h is not None:
            lc["cache_write_1h"] = per_mtok(tcw1h)
        lc["output"] = per_mtok(to)
        e["long_context"] = lc
        break
    return e

def main():
    new = json.load(open(sys.argv[1]))
    old = json.load(open(sys.argv[2]))
    models, origin = {}, {}
    MODES = ("chat", "responses", "embedding", "completion")

    def add(key, v, src, **kw):
        e = entry(v, **kw)
        if e is None:
            return
        if key in models and models[key] != e:
            print(f"collision {key}: {models[key]} vs {e}", file=sys.stderr)
            return
        models[key] = e
        origin[key] = src

    skip_words = ("audio", "realtime", "search", "computer-use", "container", "deep-research", "tts",
                  "image", "live", "lyria", "robotics", "voxtral", "ocr", "guard", "native", "exp",
                  "moderation", "omni", "transcribe")
    for k, v in new.items():
        p, mode = v.get("litellm_provider"), v.get("mode")
        if mode not in MODES or any(w in k for w in skip_words) or k.startswith("ft:"):
            continue
        if p in ("openai", "text-completion-openai"):
            add(k, v, "new")
        elif p == "anthropic":
            add(k, v, "new", anthropic=True)
        elif p == "gemini":
            add(k.removeprefix("gemini/"), v, "new")
        elif p == "mistral":
            add(k.removeprefix("mistral/"), v, "new")
        elif p == "groq":
            add(k.removeprefix("groq/"), v, "new")
        elif p == "deepseek":
            add(k.removeprefix("deepseek/"), v, "new")
        elif p == "xai":
            add(k.removeprefix("xai/"), v, "new")
        elif p == "together_ai" and k.startswith("together_ai/"):
            key = k.removeprefix("together_ai/")
            e = entry(v)
            # The same name at another provider's price: qualify it ("together/<name>"), which
            # PriceTable::lookup_for tries first for requests to Together.
            if key in models and e is not None and models[key] != e:
                key = "together/" + key
            add(key, v, "new")
    retired = {
        "claude-3-5-haiku-20241022": "claude-3-5-haiku",
        "claude-3-7-sonnet-20250219": "claude-3-7-sonnet",
        "claude-3-haiku-20240307": "claude-3-haiku",
        "claude-sonnet-4-20250514": "claude-sonnet-4",
        "claude-opus-4-20250514": "claude-opus-4",
        "claude-opus-4-1": "claude-opus-4-1",
        "gemini/gemini-2.0-flash": "gemini-2.0-flash",
        "gemini/gemini-2.0-flash-001": "gemini-2.0-flash-001",
        "gemini/gemini-2.0-flash-lite": "gemini-2.0-flash-lite",
        "groq/llama-3.1-8b-instant": "llama-3.1-8b-instant",
        "groq/llama-3.3-70b-versatile": "llama-3.3-70b-versatile",
        "groq/meta-llama/llama-4-scout-17b-16e-instruct": "meta-llama/llama-4-scout-17b-16e-instruct",
        "groq/meta-llama/llama-4-maverick-17b-128e-instruct": "meta-llama/llama-4-maverick-17b-128e-instruct",
        "groq/qwen/qwen3-32b": "qwen/qwen3-32b",
        "groq/moonshotai/kimi-k2-instruct-0905": "moonshotai/kimi-k2-instruct-0905",
        "xai/grok-3": "grok-3",
        "xai/grok-3-mini": "grok-3-mini",
        "xai/grok-4": "grok-4",
        "xai/grok-4-0709": "grok-4-0709",
        "xai/grok-4-fast-reasoning": "grok-4-fast-reasoning",
        "xai/grok-4-fast-non-reasoning": "grok-4-fast-non-reasoning",
        "together_ai/meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8": "meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8",
        "together_ai/deepseek-ai/DeepSeek-R1": "deepseek-ai/DeepSeek-R1",
    }
    for k, key in retired.items():
        if key in models:
            continue
        v = old[k]
        # Claude Sonnet 4 takes 1M tokens of context with the context-1m beta.
        add(key, v, "old", anthropic=k.startswith("claude"))
    # Drop dated snapshots whose price equals the undated entry: the lookup's date rule finds them.
    import re
    for k in list(models):
        m = re.match(r"^(.*)-(\d{4}-\d{2}-\d{2}|\d{8})$", k)
        if m and m.group(1) in models and models[m.group(1)] == models[k]:
            del models[k]
    aliases = {
        "claude-3-7-sonnet-latest": "claude-3-7-sonnet",
        "claude-3-5-haiku-latest": "claude-3-5-haiku",
        "claude-4-sonnet": "claude-sonnet-4",
        "claude-4-opus": "claude-opus-4",
        "grok-4-latest": "grok-4",
        "grok-3-latest": "grok-3",
        "grok-3-mini-latest": "grok-3-mini",
    }
    aliases = {a: t for a, t in aliases.items() if t in models and a not in models}
    out = {
        "source": SOURCE,
        "date": DATE,
        "notes": [
            "Prices are US dollars per million tokens, as exact decimal strings (at most 6 decimals).",
            "cached_input: cache-read price; absent = billed as input. cache_write / cache_write_1h: 5-minute / 1-hour cache-write prices; absent = no surcharge.",
            "long_context: prices for the WHOLE request when its input tokens exceed above_input_tokens (Gemini 200k, Anthropic 200k, OpenAI 272k).",
            "Anthropic cache-write prices absent from the source are derived from Anthropic's published multipliers (1.25x / 2x input).",
            "Standard (non-batch, non-priority, global) processing prices; regional/data-zone uplifts are not included.",
        ],
        "models": dict(sorted(models.items())),
        "aliases": dict(sorted(aliases.items())),
    }
    json.dump(out, sys.stdout, indent=1)
    print()
    print(f"{len(models)} models", file=sys.stderr)

main()
