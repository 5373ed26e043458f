#!/usr/bin/env python3
"""Adds Cohere, Fireworks and Cerebras models to prices.json (issue 16, item 4).

Usage: add_providers.py LITELLM.json < prices.json > prices.new.json
  LITELLM: litellm/model_prices_and_context_window_backup.json from the litellm wheel on PyPI
           (1.109.1 on 2026-12-06, the release the rest of the table comes from).
Entries are built by regenerate.py's `entry` (same rounding). Keys, as clients name the models:
  * Cohere (litellm `cohere_chat`): the model id (`command-a-03-2025`), priced per cohere.com/pricing.
  * Fireworks (`fireworks_ai/accounts/fireworks/...`): the id without `fireworks_ai/`
    (`accounts/fireworks/models/llama-v3p1-8b-instruct`), per fireworks.ai/pricing.
  * Cerebras (`cerebras/...`): kept provider-qualified (`cerebras/gpt-oss-120b`), which
    PriceTable::lookup_for tries first for requests to api.cerebras.ai, so names shared with
    other providers keep Cerebras's price.
Models priced $0 in and out are left out (a zero price would let them run unmetered; unknown
models are refused instead), as are Perplexity (per-request fees: add_perplexity.py adds them) and
Hugging Face router names (the router bills the serving provider's rate; no list to copy).
"""
import json, sys, importlib.util, os

spec = importlib.util.spec_from_file_location("regen", os.path.join(os.path.dirname(__file__), "regenerate.py"))
src = open(spec.origin).read().replace("\nmain()\n", "\n")
regen = {}
exec(compile(src, spec.origin, "exec"), regen)
entry = regen["entry"]

lite = json.load(open(sys.argv[1]))
table = json.load(sys.stdin)
added = 0
for k, v in lite.items():
    p, mode = v.get("litellm_provider"), v.get("mode")
    if mode not in ("chat", "completion"):
        continue
    if not v.get("input_cost_per_token") and not v.get("output_cost_per_token"):
        continue
    if p == "cohere_chat":
        key = k
    elif p == "fireworks_ai" and k.startswith("fireworks_ai/accounts/fireworks/"):
        key = k.removeprefix("fireworks_ai/")
    elif p == "cerebras":
        key = k
    else:
        continue
    e = entry(v)
    if e is None:
        continue
    if key in table["models"] and table["models"][key] != e:
        print(f"collision {key}", file=sys.stderr)
        continue
    table["models"][key] = e
    added += 1
table["models"] = dict(sorted(table["models"].items()))
table["notes"].append(
    "Cohere (model ids), Fireworks (accounts/fireworks/...) and Cerebras (cerebras/<model>) chat models from the same litellm 1.109.1 list, added 2026-12-06 by add_providers.py; $0 entries left out."
)
json.dump(table, sys.stdout, indent=1)
print()
print(f"{added} models added", file=sys.stderr)
